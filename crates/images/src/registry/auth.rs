//! Registry authentication: `WWW-Authenticate` challenges (RFC 7235),
//! bearer token answers (Docker's token protocol) and basic credentials.

use base64::Engine as _;
use std::collections::BTreeMap;
use vessel_api::types::RegistryAuth;

/// How a registry wants to be authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic {
        realm: String,
    },
    Bearer {
        realm: String,
        service: Option<String>,
        /// The scope the registry asked for, if it said.
        scope: Option<String>,
    },
}

/// Parse the challenges of `WWW-Authenticate` header values: a list of
/// `scheme param=value, param="quoted", ...`, several challenges possibly
/// in one value. Returns (lowercase scheme, params with lowercase names).
pub fn parse_challenges(value: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut out: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let b = value.as_bytes();
    let mut i = 0;
    let is_token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&c);
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        if i == start {
            i += 1; // not a token character: skip it
            continue;
        }
        let token = &value[start..i];
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' && !out.is_empty() {
            // A parameter of the current challenge.
            i = j + 1;
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            let val = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    v.push(b[i]);
                    i += 1;
                }
                i += 1; // closing quote (or end)
                String::from_utf8_lossy(&v).into_owned()
            } else {
                let s = i;
                while i < b.len() && b[i] != b',' && b[i] != b' ' {
                    i += 1;
                }
                value[s..i].to_string()
            };
            if let Some(last) = out.last_mut() {
                last.1.insert(token.to_ascii_lowercase(), val);
            }
        } else {
            out.push((token.to_ascii_lowercase(), BTreeMap::new()));
        }
    }
    out
}

/// The challenge vessel answers among those offered: bearer over basic.
pub fn select_challenge(values: &[&str]) -> Option<Challenge> {
    let all: Vec<_> = values.iter().flat_map(|v| parse_challenges(v)).collect();
    if let Some((_, p)) = all
        .iter()
        .find(|(s, p)| s == "bearer" && p.contains_key("realm"))
    {
        return Some(Challenge::Bearer {
            realm: p.get("realm").cloned().unwrap_or_default(),
            service: p.get("service").cloned(),
            scope: p.get("scope").cloned(),
        });
    }
    all.iter()
        .find(|(s, _)| s == "basic")
        .map(|(_, p)| Challenge::Basic {
            realm: p.get("realm").cloned().unwrap_or_default(),
        })
}

/// The `Authorization` value for basic credentials.
pub fn basic_header(auth: &RegistryAuth) -> String {
    let raw = format!("{}:{}", auth.username, auth.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Are there credentials to send?
pub fn has_credentials(auth: &Option<RegistryAuth>) -> bool {
    auth.as_ref().is_some_and(|a| {
        !a.username.is_empty() || a.identity_token.as_deref().is_some_and(|t| !t.is_empty())
    })
}

/// The token of a token endpoint's JSON answer (`token` or `access_token`).
pub fn parse_token(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TokenAnswer {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
    }
    let t: TokenAnswer = serde_json::from_slice(body).ok()?;
    t.token
        .filter(|s| !s.is_empty())
        .or(t.access_token.filter(|s| !s.is_empty()))
        // A token goes into a header: refuse anything that could break it.
        .filter(|s| s.len() <= 64 * 1024 && s.bytes().all(|b| (0x21..0x7f).contains(&b)))
}

/// `repository:NAME:ACTIONS`.
pub fn repo_scope(path: &str, actions: &str) -> String {
    format!("repository:{path}:{actions}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let v = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        assert_eq!(
            select_challenge(&[v]),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
    }

    #[test]
    fn parses_basic_and_mixed_challenges() {
        assert_eq!(
            select_challenge(&[r#"Basic realm="Registry Realm""#]),
            Some(Challenge::Basic {
                realm: "Registry Realm".into()
            })
        );
        // Several challenges, odd spacing, unquoted and escaped values.
        let v = r#"Basic realm=x ,  bearer   realm = "https://a/t?x=1", service=svc, scope="repository:a/b:pull,push", error="insufficient_scope""#;
        let all = parse_challenges(v);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, "basic");
        assert_eq!(all[0].1["realm"], "x");
        assert_eq!(all[1].1["realm"], "https://a/t?x=1");
        assert_eq!(all[1].1["scope"], "repository:a/b:pull,push");
        assert_eq!(all[1].1["error"], "insufficient_scope");
        assert!(matches!(
            select_challenge(&[v]),
            Some(Challenge::Bearer { .. })
        ));
        let q = parse_challenges(r#"Bearer realm="a\"b""#);
        assert_eq!(q[0].1["realm"], "a\"b");
    }

    #[test]
    fn tolerates_garbage() {
        for v in [
            "",
            "=",
            "\"",
            "Bearer",
            "Bearer realm",
            "Bearer realm=\"",
            ",,,",
            "é=é",
        ] {
            let _ = parse_challenges(v);
        }
        assert_eq!(select_challenge(&["Bearer service=x"]), None);
        assert_eq!(select_challenge(&["Negotiate"]), None);
    }

    #[test]
    fn tokens() {
        assert_eq!(parse_token(br#"{"token":"abc"}"#).as_deref(), Some("abc"));
        assert_eq!(
            parse_token(br#"{"access_token":"xyz","expires_in":60}"#).as_deref(),
            Some("xyz")
        );
        assert_eq!(
            parse_token(br#"{"token":"","access_token":"x"}"#).as_deref(),
            Some("x")
        );
        assert_eq!(parse_token(br#"{"token":"a\r\nb"}"#), None);
        assert_eq!(parse_token(b"nope"), None);
        let a = RegistryAuth {
            username: "user".into(),
            password: "pass".into(),
            identity_token: None,
        };
        assert_eq!(basic_header(&a), "Basic dXNlcjpwYXNz");
        assert!(has_credentials(&Some(a)));
        assert!(!has_credentials(&None));
    }
}
