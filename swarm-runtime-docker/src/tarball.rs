//! A minimal ustar writer: regular files and directories, enough to build
//! the rootfs of the test image that the Engine imports (`docker import`).
//!
//! Written here rather than pulling in a tar crate: the fixture needs a
//! handful of entries with fixed owners and modes, nothing more.

/// Builds an in-memory tar archive.
#[derive(Default, Debug)]
pub struct TarBuilder {
    buf: Vec<u8>,
}

/// Why an entry could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarError {
    /// The path does not fit the 100-byte ustar name field.
    #[error("tar entry path {0:?} is longer than 99 bytes")]
    PathTooLong(String),
    /// The path is empty or absolute.
    #[error("tar entry path {0:?} must be relative and not empty")]
    BadPath(String),
}

impl TarBuilder {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (`path` without a trailing slash).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), TarError> {
        self.entry(&format!("{path}/"), mode, b'5', &[])
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), TarError> {
        self.entry(path, mode, b'0', data)
    }

    fn entry(&mut self, path: &str, mode: u32, kind: u8, data: &[u8]) -> Result<(), TarError> {
        if path.is_empty() || path.starts_with('/') || path == "/" {
            return Err(TarError::BadPath(path.into()));
        }
        if path.len() > 99 {
            return Err(TarError::PathTooLong(path.into()));
        }
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        octal(&mut h[100..108], u64::from(mode & 0o7777));
        octal(&mut h[108..116], 0); // uid
        octal(&mut h[116..124], 0); // gid
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 0); // mtime
        h[148..156].copy_from_slice(b"        "); // checksum placeholder
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        octal(&mut h[148..155], u64::from(sum));
        h[155] = b' ';
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        Ok(())
    }

    /// Ends the archive (two zero blocks) and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }
}

/// Writes `v` as zero-padded octal followed by NUL into `field`.
fn octal(field: &mut [u8], v: u64) {
    let width = field.len() - 1;
    let s = format!("{v:0width$o}");
    let s = &s.as_bytes()[s.len().saturating_sub(width)..];
    field[..width].copy_from_slice(s);
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_layout_and_checksum() {
        let mut t = TarBuilder::new();
        t.dir("etc", 0o755).unwrap();
        t.file("etc/x", 0o644, b"hello").unwrap();
        let b = t.finish();
        // dir header + file header + one data block + two end blocks
        assert_eq!(b.len(), 512 * 5);
        assert_eq!(&b[..4], b"etc/");
        assert_eq!(b[156], b'5');
        assert_eq!(&b[512..517], b"etc/x");
        assert_eq!(&b[512 + 124..512 + 135], b"00000000005");
        assert_eq!(&b[1024..1029], b"hello");
        // checksum: sum of the header with the checksum field as spaces
        let mut h = b[512..1024].to_vec();
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        h[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, h.iter().map(|x| u32::from(*x)).sum::<u32>());
    }

    #[test]
    fn rejects_bad_paths() {
        let mut t = TarBuilder::new();
        assert_eq!(t.file("/abs", 0o644, b""), Err(TarError::BadPath("/abs".into())));
        assert!(matches!(t.file(&"a".repeat(120), 0o644, b""), Err(TarError::PathTooLong(_))));
    }
}
