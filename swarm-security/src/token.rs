//! Join tokens: `SWMTKN-1-<CA digest>-<secret>`, one for workers and one
//! for managers.
//!
//! Encoding (the same shape as Docker Swarm's tokens):
//! - `SWMTKN` is the prefix and `1` the format version;
//! - the CA digest is the SHA-256 of the root CA certificate's DER,
//!   written in base 36 (`0-9a-z`), left-padded with `0` to 50 characters;
//!   a joining node uses it to pin the CA it is shown ([`verify_ca`]);
//! - the secret is 128 bits from the OS random source, base 36, padded to
//!   25 characters. Secrets are compared in constant time.
//!
//! Rotating a token ([`JoinTokens::rotate`]) draws a new secret: the old
//! token stops matching, nodes already joined are not affected.
//!
//! ```
//! use std::time::Duration;
//! use swarm_security::ca::ClusterCa;
//! use swarm_security::role::Role;
//! use swarm_security::token::{verify_ca, JoinTokens};
//!
//! let ca = ClusterCa::generate("c1", Duration::from_secs(86_400))?;
//! let mut tokens = JoinTokens::generate(ca.cert_der())?;
//! let presented = tokens.worker().to_string();
//! verify_ca(&presented, ca.cert_der())?; // what the joining node checks
//! assert_eq!(tokens.role_for(&presented)?, Role::Worker); // what the manager checks
//! tokens.rotate(Role::Worker)?;
//! assert!(tokens.role_for(&presented).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::role::Role;

/// The token prefix.
pub const PREFIX: &str = "SWMTKN";
/// The only format version.
pub const VERSION: &str = "1";
/// Characters of the base-36 CA digest.
pub const DIGEST_LEN: usize = 50;
/// Characters of the base-36 secret.
pub const SECRET_LEN: usize = 25;
const SECRET_BYTES: usize = 16;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not four `-`-separated parts.
    #[error("malformed join token: expected SWMTKN-1-<digest>-<secret>, found {parts} part(s)")]
    Format {
        /// How many parts there were.
        parts: usize,
    },
    /// The first part is not `SWMTKN`.
    #[error("join token prefix is {found:?}, expected \"SWMTKN\"")]
    Prefix {
        /// What was there.
        found: String,
    },
    /// The version is not `1`.
    #[error("join token version {found:?} is not supported, expected \"1\"")]
    Version {
        /// What was there.
        found: String,
    },
    /// The digest has the wrong length or characters.
    #[error("join token CA digest is invalid: {0}")]
    Digest(String),
    /// The secret has the wrong length or characters.
    #[error("join token secret is invalid: {0}")]
    Secret(String),
    /// The token pins another CA certificate.
    #[error("join token's CA digest does not match the CA certificate presented")]
    CaMismatch,
    /// The secret matches neither the worker nor the manager token.
    #[error("join token is not valid for this cluster (wrong or rotated secret)")]
    NoMatch,
    /// The OS random source failed.
    #[error("cannot read the OS random source: {0}")]
    Random(String),
    /// Only workers and managers join with a token; operators get their
    /// certificate another way (the manager's local socket).
    #[error("there is no join token for the {0} role")]
    NoTokenForRole(Role),
}

/// A parsed join token. `Display` prints the full token; `Debug` hides
/// the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    ca_digest: String,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken").field("ca_digest", &self.ca_digest).field("secret", &"<redacted>").finish()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{VERSION}-{}-{}", self.ca_digest, self.secret)
    }
}

/// Big-endian bytes to base 36 (`0-9a-z`), left-padded with `0` to `width`.
fn base36(bytes: &[u8], width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = bytes.to_vec();
    let mut out = Vec::new();
    while n.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        out.push(DIGITS[rem as usize]);
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// The CA digest a token carries for this CA certificate.
pub fn ca_digest(ca_cert_der: &[u8]) -> String {
    base36(&Sha256::digest(ca_cert_der), DIGEST_LEN)
}

/// 128 bits from the OS random source, in base 36.
fn fresh_secret() -> Result<String, TokenError> {
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::getrandom(&mut secret).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(base36(&secret, SECRET_LEN))
}

fn check_part(part: &str, len: usize) -> Result<(), String> {
    if part.len() != len {
        return Err(format!("{} characters, expected {len}", part.len()));
    }
    if !part.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()) {
        return Err("characters outside [0-9a-z]".into());
    }
    Ok(())
}

impl JoinToken {
    /// A new token for the CA certificate `ca_cert_der`, with a fresh
    /// secret from the OS random source.
    pub fn generate(ca_cert_der: &[u8]) -> Result<Self, TokenError> {
        Ok(JoinToken { ca_digest: ca_digest(ca_cert_der), secret: fresh_secret()? })
    }

    /// Parses a token, saying which part is wrong.
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let parts: Vec<&str> = token.trim().split('-').collect();
        if parts.len() != 4 {
            return Err(TokenError::Format { parts: parts.len() });
        }
        if parts[0] != PREFIX {
            return Err(TokenError::Prefix { found: parts[0].to_owned() });
        }
        if parts[1] != VERSION {
            return Err(TokenError::Version { found: parts[1].to_owned() });
        }
        check_part(parts[2], DIGEST_LEN).map_err(TokenError::Digest)?;
        check_part(parts[3], SECRET_LEN).map_err(TokenError::Secret)?;
        Ok(JoinToken { ca_digest: parts[2].to_owned(), secret: parts[3].to_owned() })
    }

    /// The base-36 SHA-256 of the CA certificate this token pins.
    pub fn ca_digest(&self) -> &str {
        &self.ca_digest
    }

    /// Whether this token pins `ca_cert_der`.
    pub fn verify_ca(&self, ca_cert_der: &[u8]) -> Result<(), TokenError> {
        if ca_digest(ca_cert_der) == self.ca_digest { Ok(()) } else { Err(TokenError::CaMismatch) }
    }

    /// Whether both tokens carry the same secret, compared in constant time.
    pub fn secret_matches(&self, other: &JoinToken) -> bool {
        self.secret.as_bytes().ct_eq(other.secret.as_bytes()).into()
    }
}

/// Parses `token` and checks that it pins `ca_cert_der`: what a joining
/// node does with the CA certificate a manager shows it before trusting it.
pub fn verify_ca(token: &str, ca_cert_der: &[u8]) -> Result<JoinToken, TokenError> {
    let parsed = JoinToken::parse(token)?;
    parsed.verify_ca(ca_cert_der)?;
    Ok(parsed)
}

/// The cluster's two join tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokens {
    worker: JoinToken,
    manager: JoinToken,
}

impl JoinTokens {
    /// New worker and manager tokens for the CA certificate.
    pub fn generate(ca_cert_der: &[u8]) -> Result<Self, TokenError> {
        Ok(JoinTokens { worker: JoinToken::generate(ca_cert_der)?, manager: JoinToken::generate(ca_cert_der)? })
    }

    /// The tokens as kept in the store, parsed back; both must pin the
    /// same CA.
    pub fn parse(worker: &str, manager: &str) -> Result<Self, TokenError> {
        let worker = JoinToken::parse(worker)?;
        let manager = JoinToken::parse(manager)?;
        if worker.ca_digest != manager.ca_digest {
            return Err(TokenError::CaMismatch);
        }
        Ok(JoinTokens { worker, manager })
    }

    /// The worker token.
    pub fn worker(&self) -> &JoinToken {
        &self.worker
    }

    /// The manager token.
    pub fn manager(&self) -> &JoinToken {
        &self.manager
    }

    /// The role a presented token admits: it must parse, pin the same CA
    /// and carry one of the two secrets. Both secrets are compared, in
    /// constant time, whatever the outcome.
    pub fn role_for(&self, presented: &str) -> Result<Role, TokenError> {
        let token = JoinToken::parse(presented)?;
        if token.ca_digest != self.worker.ca_digest {
            return Err(TokenError::CaMismatch);
        }
        let is_worker = token.secret.as_bytes().ct_eq(self.worker.secret.as_bytes());
        let is_manager = token.secret.as_bytes().ct_eq(self.manager.secret.as_bytes());
        if bool::from(is_manager) {
            Ok(Role::Manager)
        } else if bool::from(is_worker) {
            Ok(Role::Worker)
        } else {
            tracing::debug!("refused a join token: secret matches neither role");
            Err(TokenError::NoMatch)
        }
    }

    /// The same tokens pinned to another CA certificate (same secrets): at
    /// the end of a CA rotation, when the new root replaces the old one.
    pub fn repinned(&self, ca_cert_der: &[u8]) -> JoinTokens {
        let digest = ca_digest(ca_cert_der);
        JoinTokens {
            worker: JoinToken { ca_digest: digest.clone(), secret: self.worker.secret.clone() },
            manager: JoinToken { ca_digest: digest, secret: self.manager.secret.clone() },
        }
    }

    /// Draws a new secret for `role`'s token; the old one stops matching.
    pub fn rotate(&mut self, role: Role) -> Result<(), TokenError> {
        let slot = match role {
            Role::Worker => &mut self.worker,
            Role::Manager => &mut self.manager,
            Role::Operator => return Err(TokenError::NoTokenForRole(role)),
        };
        slot.secret = fresh_secret()?;
        tracing::info!(%role, "rotated the join token");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &[u8] = b"pretend this is a CA certificate";

    #[test]
    fn base36_known_values() {
        assert_eq!(base36(&[0], 3), "000");
        assert_eq!(base36(&[35], 1), "z");
        assert_eq!(base36(&[36], 1), "10");
        assert_eq!(base36(&[0x01, 0x00], 0), "74"); // 256 = 7*36 + 4
        assert_eq!(base36(&[0xff; 32], 0).len(), DIGEST_LEN);
        assert_eq!(base36(&[0xff; 16], 0).len(), SECRET_LEN);
    }

    #[test]
    fn generated_tokens_round_trip_and_pin_the_ca() {
        let t = JoinToken::generate(CA).unwrap();
        let s = t.to_string();
        assert!(s.starts_with("SWMTKN-1-"));
        assert_eq!(s.len(), "SWMTKN-1-".len() + DIGEST_LEN + 1 + SECRET_LEN);
        assert_eq!(JoinToken::parse(&s).unwrap(), t);
        assert_eq!(verify_ca(&s, CA).unwrap(), t);
        assert_eq!(verify_ca(&s, b"another CA"), Err(TokenError::CaMismatch));
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn secrets_differ_between_draws() {
        let a = JoinToken::generate(CA).unwrap();
        let b = JoinToken::generate(CA).unwrap();
        assert_eq!(a.ca_digest(), b.ca_digest());
        assert!(!a.secret_matches(&b));
        assert!(a.secret_matches(&a.clone()));
    }

    #[test]
    fn parse_names_the_wrong_part() {
        let good = JoinToken::generate(CA).unwrap().to_string();
        let parts: Vec<&str> = good.split('-').collect();
        let with = |i: usize, v: &str| {
            let mut p = parts.clone();
            p[i] = v;
            p.join("-")
        };
        assert_eq!(JoinToken::parse("SWMTKN-1-abc"), Err(TokenError::Format { parts: 3 }));
        assert!(matches!(JoinToken::parse(&with(0, "SWMTKX")), Err(TokenError::Prefix { .. })));
        assert!(matches!(JoinToken::parse(&with(1, "2")), Err(TokenError::Version { .. })));
        assert_eq!(JoinToken::parse(&with(2, "abc")), Err(TokenError::Digest("3 characters, expected 50".into())));
        assert!(matches!(JoinToken::parse(&with(2, &"A".repeat(DIGEST_LEN))), Err(TokenError::Digest(_))));
        assert_eq!(
            JoinToken::parse(&with(3, &"a".repeat(24))),
            Err(TokenError::Secret("24 characters, expected 25".into()))
        );
    }

    #[test]
    fn roles_are_told_apart_and_rotation_invalidates() {
        let mut tokens = JoinTokens::generate(CA).unwrap();
        assert_ne!(tokens.worker(), tokens.manager());
        let w = tokens.worker().to_string();
        let m = tokens.manager().to_string();
        assert_eq!(tokens.role_for(&w), Ok(Role::Worker));
        assert_eq!(tokens.role_for(&m), Ok(Role::Manager));

        let other = JoinTokens::generate(b"other CA").unwrap();
        assert_eq!(tokens.role_for(&other.worker().to_string()), Err(TokenError::CaMismatch));

        assert_eq!(tokens.rotate(Role::Operator), Err(TokenError::NoTokenForRole(Role::Operator)));
        tokens.rotate(Role::Worker).unwrap();
        assert_eq!(tokens.role_for(&w), Err(TokenError::NoMatch));
        assert_eq!(tokens.role_for(&m), Ok(Role::Manager));
        assert_eq!(tokens.worker().ca_digest(), ca_digest(CA));
        let w2 = tokens.worker().to_string();
        assert_eq!(tokens.role_for(&w2), Ok(Role::Worker));
    }

    #[test]
    fn tokens_parse_back_from_their_text() {
        let tokens = JoinTokens::generate(CA).unwrap();
        let (w, m) = (tokens.worker().to_string(), tokens.manager().to_string());
        assert_eq!(JoinTokens::parse(&w, &m).unwrap(), tokens);
        let other = JoinTokens::generate(b"other CA").unwrap().manager().to_string();
        assert_eq!(JoinTokens::parse(&w, &other), Err(TokenError::CaMismatch));
        assert!(matches!(JoinTokens::parse("SWMTKN-1", &m), Err(TokenError::Format { parts: 2 })));
    }
}
