use super::{Labels, Meta};
use crate::id::{ConfigId, SecretId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Sensitive bytes. `Debug` never shows them; serde writes base64.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretBytes(pub Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64_encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        base64_decode(&s).map(SecretBytes).map_err(serde::de::Error::custom)
    }
}

/// A secret: bytes delivered as a file to the tasks that reference it.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Secret {
    /// Secret id.
    pub id: SecretId,
    /// Store bookkeeping.
    pub meta: Meta,
    /// Name, labels and data.
    pub spec: SecretSpec,
}

/// A secret's spec.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretSpec {
    /// Name (letters, digits, `-`, `_`, `.`; at most 64).
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// The secret (at most 500 KiB, as Swarm).
    pub data: SecretBytes,
}

/// A config: non-secret bytes delivered as a file.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Config id.
    pub id: ConfigId,
    /// Store bookkeeping.
    pub meta: Meta,
    /// Name, labels and data.
    pub spec: ConfigSpec,
}

/// A config's spec.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigSpec {
    /// Name (letters, digits, `-`, `_`, `.`; at most 64).
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// The content (at most 500 KiB).
    pub data: Vec<u8>,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for (i, c) in s.bytes().enumerate() {
        let v = B64.iter().position(|&x| x == c).ok_or_else(|| format!("invalid base64 character at {i}"))? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_debug_redacts() {
        for data in [&b""[..], b"a", b"ab", b"abc", b"hello world!\x00\xff"] {
            assert_eq!(base64_decode(&base64_encode(data)).unwrap(), data);
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        let s = SecretBytes(b"hunter2".to_vec());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
