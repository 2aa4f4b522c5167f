//! Errors as they travel between vessel's processes.
//!
//! Every non-2xx answer of the apiserver and of its helpers has an
//! [`ErrorBody`]: a machine-readable [`ErrorKind`], a message written for
//! people, and (for the not-found kinds) the name the request gave to what
//! was not found. The kind is set where the error happens (a helper, the
//! apiserver), relayed unchanged by the apiserver, and read by the CLI,
//! which acts on the kind, never on the wording or the status alone. The
//! HTTP status is derived from the kind, here and only here
//! ([`ErrorKind::status`]).

use serde::{Deserialize, Serialize};

/// What went wrong, for programs. Serialized as a snake_case string.
///
/// Clients must accept kinds they do not know: a newer server may send one,
/// and it decodes as [`ErrorKind::Unknown`] (the HTTP status still tells
/// the class of the error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A parameter, flag value or request body is invalid (400).
    InvalidArgument,
    /// A registry refused the credentials, or asked for some (401).
    Unauthorized,
    /// A registry refused access with valid credentials (403).
    Denied,
    /// No such endpoint, or a thing that has no kind of its own (404).
    NotFound,
    /// The endpoint exists, but not with this method (405).
    MethodNotAllowed,
    /// The image is not in the store or, for a pull, in the registry (404).
    ImageNotFound,
    /// No container has this ID, name or ID prefix (404).
    ContainerNotFound,
    /// No network has this name or ID prefix (404).
    NetworkNotFound,
    /// No volume has this name (404).
    VolumeNotFound,
    /// The request contradicts the current state: a name already taken, a
    /// container already started or not running, a port already allocated (409).
    Conflict,
    /// What the request would remove is used by something else: an image by
    /// a container, a network by its endpoints (409).
    InUse,
    /// A registry asked us to slow down (429).
    TooManyRequests,
    /// Something failed inside vessel; the message says what (500).
    #[default]
    Internal,
    /// A registry could not be reached or answered wrongly (502).
    RegistryError,
    /// A service the request needs is not running, e.g. vessel-network (503).
    Unavailable,
    /// A kind this build does not know, from a newer server.
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// Every kind this build knows, in the order of the API description.
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::InvalidArgument,
        ErrorKind::Unauthorized,
        ErrorKind::Denied,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::ImageNotFound,
        ErrorKind::ContainerNotFound,
        ErrorKind::NetworkNotFound,
        ErrorKind::VolumeNotFound,
        ErrorKind::Conflict,
        ErrorKind::InUse,
        ErrorKind::TooManyRequests,
        ErrorKind::Internal,
        ErrorKind::RegistryError,
        ErrorKind::Unavailable,
        ErrorKind::Unknown,
    ];

    /// The HTTP status an answer of this kind has.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Denied => 403,
            ErrorKind::NotFound
            | ErrorKind::ImageNotFound
            | ErrorKind::ContainerNotFound
            | ErrorKind::NetworkNotFound
            | ErrorKind::VolumeNotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::Conflict | ErrorKind::InUse => 409,
            ErrorKind::TooManyRequests => 429,
            ErrorKind::Internal | ErrorKind::Unknown => 500,
            ErrorKind::RegistryError => 502,
            ErrorKind::Unavailable => 503,
        }
    }

    /// The kind of an error answer that carries none (an older peer, a
    /// body that is not JSON): the general kind of its status.
    pub fn from_status(status: u16) -> Self {
        match status {
            400 => ErrorKind::InvalidArgument,
            401 => ErrorKind::Unauthorized,
            403 => ErrorKind::Denied,
            404 => ErrorKind::NotFound,
            405 => ErrorKind::MethodNotAllowed,
            409 => ErrorKind::Conflict,
            429 => ErrorKind::TooManyRequests,
            502 => ErrorKind::RegistryError,
            503 => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }

    /// Is this one of the not-found kinds?
    pub fn is_not_found(self) -> bool {
        self.status() == 404
    }

    /// The kind as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Denied => "denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::ImageNotFound => "image_not_found",
            ErrorKind::ContainerNotFound => "container_not_found",
            ErrorKind::NetworkNotFound => "network_not_found",
            ErrorKind::VolumeNotFound => "volume_not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::InUse => "in_use",
            ErrorKind::TooManyRequests => "too_many_requests",
            ErrorKind::Internal => "internal",
            ErrorKind::RegistryError => "registry_error",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorBody {
    pub kind: ErrorKind,
    /// For people: what went wrong and what to do about it, with its causes.
    pub message: String,
    /// What the error is about, as the request named it: the image,
    /// container, network or volume that was not found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ErrorBody {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            name: None,
        }
    }

    /// The same error, about `name`.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The HTTP status of this error's answer.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// Decode the body of an error answer with status `status`. Never
    /// fails: a body without a kind gets the kind of its status, a body
    /// that is not an error document becomes the message.
    pub fn decode(status: u16, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Wire {
            message: String,
            #[serde(default)]
            kind: Option<ErrorKind>,
            #[serde(default)]
            name: Option<String>,
        }
        match serde_json::from_slice::<Wire>(body) {
            Ok(w) => Self {
                kind: w.kind.unwrap_or_else(|| ErrorKind::from_status(status)),
                message: w.message,
                name: w.name,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body).trim().to_string();
                let message = if text.is_empty() {
                    format!("the server answered with status {status} and no message")
                } else {
                    text
                };
                Self::new(ErrorKind::from_status(status), message)
            }
        }
    }
}

/// The message of `e` followed by the messages of its sources, joined by
/// `": "`: the whole chain on one line, for logs and error answers.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let m = src.to_string();
        // A wrapper that repeats its source's text adds nothing.
        if !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = src.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_snake_case_strings_both_ways() {
        for k in ErrorKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), k);
            assert_eq!(k.to_string(), k.as_str());
        }
        assert_eq!(
            serde_json::to_string(&ErrorKind::ImageNotFound).unwrap(),
            "\"image_not_found\""
        );
        assert_eq!(
            serde_json::from_str::<ErrorKind>("\"network_not_found\"").unwrap(),
            ErrorKind::NetworkNotFound
        );
    }

    #[test]
    fn an_unknown_kind_from_a_newer_server_still_decodes() {
        assert_eq!(
            serde_json::from_str::<ErrorKind>("\"exec_not_found\"").unwrap(),
            ErrorKind::Unknown
        );
        let b = ErrorBody::decode(
            404,
            br#"{"kind":"snapshot_not_found","message":"no such snapshot: s1","extra":1}"#,
        );
        assert_eq!(b.kind, ErrorKind::Unknown);
        assert_eq!(b.message, "no such snapshot: s1");
        // Not a string at all is still an answer, not a panic.
        let b = ErrorBody::decode(409, br#"{"kind":7,"message":"m"}"#);
        assert_eq!(b.kind, ErrorKind::Conflict);
    }

    #[test]
    fn status_mapping() {
        use ErrorKind::*;
        let want = [
            (InvalidArgument, 400),
            (Unauthorized, 401),
            (Denied, 403),
            (NotFound, 404),
            (MethodNotAllowed, 405),
            (ImageNotFound, 404),
            (ContainerNotFound, 404),
            (NetworkNotFound, 404),
            (VolumeNotFound, 404),
            (Conflict, 409),
            (InUse, 409),
            (TooManyRequests, 429),
            (Internal, 500),
            (RegistryError, 502),
            (Unavailable, 503),
            (Unknown, 500),
        ];
        assert_eq!(want.len(), ErrorKind::ALL.len());
        for (k, s) in want {
            assert_eq!(k.status(), s, "{k}");
            assert_eq!(k.is_not_found(), s == 404, "{k}");
        }
        // A status without a kind maps to the general kind of that status,
        // which maps back to the same status.
        for s in [400, 401, 403, 404, 405, 409, 429, 500, 502, 503] {
            assert_eq!(ErrorKind::from_status(s).status(), s);
        }
        assert_eq!(ErrorKind::from_status(404), NotFound);
        assert_eq!(ErrorKind::from_status(418), Internal);
    }

    #[test]
    fn bodies_round_trip_and_old_bodies_decode() {
        let b = ErrorBody::new(ErrorKind::NetworkNotFound, "network x not found").with_name("x");
        let json = serde_json::to_vec(&b).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&json),
            r#"{"kind":"network_not_found","message":"network x not found","name":"x"}"#
        );
        assert_eq!(ErrorBody::decode(404, &json), b);
        // No name: the field is left out.
        let json = serde_json::to_string(&ErrorBody::new(ErrorKind::Internal, "m")).unwrap();
        assert_eq!(json, r#"{"kind":"internal","message":"m"}"#);
        // A body of an older peer: {"message"} only.
        let b = ErrorBody::decode(404, br#"{"message":"gone"}"#);
        assert_eq!(b, ErrorBody::new(ErrorKind::NotFound, "gone"));
        // Not JSON: the text is the message.
        let b = ErrorBody::decode(502, b" Bad Gateway\n");
        assert_eq!(b, ErrorBody::new(ErrorKind::RegistryError, "Bad Gateway"));
        let b = ErrorBody::decode(500, b"");
        assert!(b.message.contains("500"), "{}", b.message);
    }

    /// The API description lists the same kinds, each with its status.
    #[test]
    fn openapi_describes_every_kind() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api/openapi.yaml");
        let doc = std::fs::read_to_string(path).unwrap();
        let schema = &doc[doc.find("\n    ErrorKind:\n").expect("ErrorKind schema")..];
        let list = schema
            .lines()
            .find_map(|l| l.trim().strip_prefix("enum: ["))
            .and_then(|l| l.strip_suffix(']'))
            .expect("ErrorKind enum");
        let documented: Vec<&str> = list.split(',').map(str::trim).collect();
        let known: Vec<&str> = ErrorKind::ALL
            .iter()
            .filter(|k| **k != ErrorKind::Unknown)
            .map(|k| k.as_str())
            .collect();
        assert_eq!(documented, known);
        for k in ErrorKind::ALL.iter().filter(|k| **k != ErrorKind::Unknown) {
            let line = format!("`{}` {}:", k.as_str(), k.status());
            assert!(schema.contains(&line), "openapi.yaml lacks {line}");
        }
    }

    #[test]
    fn chain_joins_sources_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("Cannot load the image")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(error_chain(&e), "Cannot load the image: disk on fire");
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped: disk on fire")]
        struct Repeating(#[source] std::io::Error);
        let e = Repeating(std::io::Error::other("disk on fire"));
        assert_eq!(error_chain(&e), "wrapped: disk on fire");
    }
}
