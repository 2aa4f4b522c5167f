//! Image references, normalized the way Docker and podman do it.
//!
//! ```text
//! busybox                  -> docker.io/library/busybox:latest
//! localhost/busybox        -> localhost/busybox:latest
//! host:5000/a/b:tag        -> host:5000/a/b:tag
//! repo@sha256:<64 hex>     -> docker.io/library/repo@sha256:<64 hex>
//! ```
//!
//! The first path component is a registry domain when it contains `.` or
//! `:` or is `localhost`; otherwise the domain is `docker.io`, and a
//! single-component name gets the `library/` namespace.

use std::fmt;

/// Registry assumed when a reference names none.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Tag assumed when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// Errors parsing a reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("Empty image reference")]
    Empty,
    #[error("Invalid image reference {0:?}: repository names must be lowercase")]
    Uppercase(String),
    #[error("Invalid image reference {reference:?}: {why}")]
    Invalid {
        reference: String,
        why: &'static str,
    },
}

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry domain, with an optional port (`docker.io`, `host:5000`).
    pub domain: String,
    /// Repository path inside the registry (`library/busybox`).
    pub path: String,
    pub tag: Option<String>,
    /// `sha256:<hex>` when the reference pins a manifest digest.
    pub digest: Option<String>,
}

impl Reference {
    /// Parse and normalize `s`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let invalid = |why| ReferenceError::Invalid {
            reference: s.to_string(),
            why,
        };
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.len() > 4096 {
            return Err(invalid("too long"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                if !is_sha256_digest(d) {
                    return Err(invalid("the digest must be sha256:<64 lowercase hex>"));
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        let last_slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if !matches!(last_slash, Some(sl) if sl > i) => {
                (&name_tag[..i], Some(name_tag[i + 1..].to_string()))
            }
            _ => (name_tag, None),
        };
        if let Some(t) = &tag {
            if !is_valid_tag(t) {
                return Err(invalid(
                    "the tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
                ));
            }
        }
        if name.is_empty() {
            return Err(invalid("the repository name is empty"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            Some(_) => (DEFAULT_DOMAIN.to_string(), name.to_string()),
            None => (DEFAULT_DOMAIN.to_string(), format!("library/{name}")),
        };
        // Docker Hub's official images live under `library/`, however the
        // domain was spelled: `docker.io/busybox` is `docker.io/library/busybox`.
        let (domain, path) = match domain.as_str() {
            "index.docker.io" | "registry-1.docker.io" | DEFAULT_DOMAIN => {
                let path = if path.contains('/') {
                    path
                } else {
                    format!("library/{path}")
                };
                (DEFAULT_DOMAIN.to_string(), path)
            }
            _ => (domain, path),
        };
        if !is_valid_domain(&domain) {
            return Err(invalid("the registry domain is malformed"));
        }
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(s.to_string()));
        }
        if path.len() > 255 || !path.split('/').all(is_valid_component) {
            return Err(invalid(
                "repository path components must match [a-z0-9]+([._-][a-z0-9]+)*",
            ));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            _ => tag,
        };
        Ok(Self {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path` without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The short form people type: without `docker.io/` and `library/`.
    pub fn short(&self) -> String {
        short_display(&self.to_string())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Normalize a reference to its full form (`docker.io/library/busybox:latest`).
pub fn normalize(s: &str) -> Result<String, ReferenceError> {
    Reference::parse(s).map(|r| r.to_string())
}

/// The short display form of a full reference: `docker.io/library/x:t` ->
/// `x:t`, `docker.io/user/x:t` -> `user/x:t`; others are unchanged.
pub fn short_display(full: &str) -> String {
    if let Some(rest) = full.strip_prefix("docker.io/library/") {
        if !rest.contains('/') {
            return rest.to_string();
        }
    }
    if let Some(rest) = full.strip_prefix("docker.io/") {
        return rest.to_string();
    }
    full.to_string()
}

/// Is `s` `sha256:` followed by 64 lowercase hex digits?
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(is_hex64)
}

/// Is `s` exactly 64 lowercase hex digits?
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+([._-][a-z0-9]+)*`, also allowing `__` as a separator like Docker.
fn is_valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or one or more `-`.
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
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn docker_hub_official_images_get_library() {
        for s in [
            "busybox",
            "docker.io/busybox",
            "index.docker.io/busybox",
            "docker.io/library/busybox",
        ] {
            let r = Reference::parse(s).expect(s);
            assert_eq!(r.repository(), "docker.io/library/busybox", "{s}");
        }
        let r = Reference::parse("docker.io/me/app:1").expect("parse");
        assert_eq!(r.repository(), "docker.io/me/app");
        let r = Reference::parse("localhost/busybox").expect("parse");
        assert_eq!(r.repository(), "localhost/busybox");
    }

    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("user/app", "docker.io/user/app:latest"),
            ("localhost/busybox", "localhost/busybox:latest"),
            ("localhost:5000/a/b:tag", "localhost:5000/a/b:tag"),
            ("host:5000/a/b:tag", "host:5000/a/b:tag"),
            ("quay.io/x/y", "quay.io/x/y:latest"),
            (
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:latest",
            ),
            ("a.b-c__d", "docker.io/library/a.b-c__d:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
        assert_eq!(
            normalize(&format!("repo@{D}")).unwrap(),
            format!("docker.io/library/repo@{D}")
        );
        assert_eq!(
            normalize(&format!("h.io/repo:t@{D}")).unwrap(),
            format!("h.io/repo:t@{D}")
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "a//b",
            "/a",
            "a/",
            "a..b",
            "a-",
            "_a",
            "repo@sha256:abc",
            "repo@md5:0123",
            "host:port/a",
            "a b",
            "../x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(
            Reference::parse("Busybox"),
            Err(ReferenceError::Uppercase(_))
        ));
        let long_tag = format!("a:{}", "x".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
    }

    #[test]
    fn short_forms() {
        assert_eq!(
            short_display("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(short_display("docker.io/user/app:1"), "user/app:1");
        assert_eq!(
            short_display("localhost/busybox:latest"),
            "localhost/busybox:latest"
        );
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.short(), "busybox:latest");
        assert_eq!(r.repository(), "docker.io/library/busybox");
    }
}
