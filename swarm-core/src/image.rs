//! Image references: `[registry[:port]/]path[:tag][@algorithm:hex]`.
//!
//! The grammar is the one Docker's distribution/reference documents: path
//! components of lowercase letters and digits joined by `.`, `_`, `__` or
//! runs of `-`; a tag of up to 128 of `[A-Za-z0-9_.-]` not starting with `.`
//! or `-`; a digest `algorithm:hex` with at least 32 hex digits. The first
//! component is a registry when it has a `.` or `:` or is `localhost`.
//!
//! ```
//! use swarm_core::image::ImageRef;
//! let r = ImageRef::parse("registry:5000/team/app:1.2").unwrap();
//! assert_eq!(r.registry.as_deref(), Some("registry:5000"));
//! assert_eq!(r.repository, "team/app");
//! assert_eq!(r.tag.as_deref(), Some("1.2"));
//! assert!(ImageRef::parse("Bad/Upper").is_err());
//! ```

use std::fmt;

/// A parsed image reference.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ImageRef {
    /// Registry host\[:port\], when given.
    pub registry: Option<String>,
    /// Repository path, e.g. `library/nginx` or `team/app`.
    pub repository: String,
    /// Tag, when given.
    pub tag: Option<String>,
    /// Digest, when given.
    pub digest: Option<String>,
}

/// Why an image reference did not parse.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("image reference {reference:?} is invalid: {reason}")]
pub struct ImageRefError {
    /// The input.
    pub reference: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ImageRef {
    /// Parses a reference.
    pub fn parse(s: &str) -> Result<ImageRef, ImageRefError> {
        let err = |reason: &str| ImageRefError { reference: s.to_string(), reason: reason.to_string() };
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                check_digest(d).map_err(|e| err(&e))?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                check_tag(t).map_err(|e| err(&e))?;
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(err("the name is empty"));
        }
        if name.len() > 255 {
            return Err(err("the name is longer than 255 characters"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, p)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                check_registry(first).map_err(|e| err(&e))?;
                (Some(first.to_string()), p)
            }
            _ => (None, name),
        };
        for comp in path.split('/') {
            check_path_component(comp).map_err(|e| err(&e))?;
        }
        Ok(ImageRef { registry, repository: path.to_string(), tag, digest })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn check_digest(d: &str) -> Result<(), String> {
    let (alg, hex) = d.split_once(':').ok_or("the digest has no algorithm (want algorithm:hex)")?;
    let mut alg_parts = alg.split(['+', '.', '_', '-']);
    let ok_alg = !alg.is_empty()
        && alg_parts.all(|p| {
            let mut c = p.chars();
            matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic()) && c.all(|ch| ch.is_ascii_alphanumeric())
        });
    if !ok_alg {
        return Err(format!("digest algorithm {alg:?} is invalid"));
    }
    if hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("the digest needs at least 32 hex digits".into());
    }
    Ok(())
}

fn check_tag(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("the tag after ':' is empty".into());
    }
    if t.len() > 128 {
        return Err("the tag is longer than 128 characters".into());
    }
    let mut c = t.chars();
    let first = c.next().unwrap_or('.');
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err(format!("tag {t:?} must start with a letter, digit or '_'"));
    }
    if !c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.' || ch == '-') {
        return Err(format!("tag {t:?} may only hold letters, digits, '_', '.' and '-'"));
    }
    Ok(())
}

fn check_registry(r: &str) -> Result<(), String> {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || r.starts_with('[') => (h, Some(p)),
        _ => (r, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err(format!("registry port {p:?} is not a number below 65536"));
        }
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("the registry host is empty".into());
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("registry host {host:?} is not a valid host name"));
        }
    }
    Ok(())
}

fn check_path_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("the repository has an empty path component".into());
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(format!("path component {c:?} must start and end with a lowercase letter or digit"));
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__', or a run of '-'.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            x => {
                return Err(format!(
                    "path component {c:?} has {:?}: only lowercase letters, digits, '.', '_' and '-' are allowed",
                    x as char
                ));
            }
        }
        if i >= b.len() || !alnum(b[i]) {
            return Err(format!("path component {c:?} has a misplaced separator {:?}", &c[start..i]));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_references_parse() {
        for (s, reg, repo, tag) in [
            ("nginx", None, "nginx", None),
            ("nginx:1.27-alpine", None, "nginx", Some("1.27-alpine")),
            ("library/nginx:latest", None, "library/nginx", Some("latest")),
            ("localhost/app", Some("localhost"), "app", None),
            ("localhost:5000/a/b_c__d-e.f:v1", Some("localhost:5000"), "a/b_c__d-e.f", Some("v1")),
            ("registry.example.com/team/app", Some("registry.example.com"), "team/app", None),
            ("10.0.0.1:5000/app:2", Some("10.0.0.1:5000"), "app", Some("2")),
        ] {
            let r = ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(r.registry.as_deref(), reg, "{s}");
            assert_eq!(r.repository, repo, "{s}");
            assert_eq!(r.tag.as_deref(), tag, "{s}");
            assert_eq!(r.to_string(), s);
        }
        let d = format!("app@sha256:{}", "a".repeat(64));
        assert!(ImageRef::parse(&d).unwrap().digest.is_some());
    }

    #[test]
    fn bad_references_are_rejected() {
        for s in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "app@md5",
            "app@sha256:xyz",
            "reg:99999/app",
            "app:tag with space",
            "a___b",
        ] {
            assert!(ImageRef::parse(s).is_err(), "{s:?} should not parse");
        }
    }
}
