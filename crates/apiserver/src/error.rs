//! The apiserver's errors: each has an [`ErrorKind`] that becomes the
//! answer's kind and HTTP status, and a message with its whole chain.
//! Errors the helpers answer with pass through with their kind and name.

use vessel_api::error::{error_chain, ErrorBody, ErrorKind};
use vessel_api::http::{HttpError, Response};

/// An error of an API request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Refused or failed for a reason of a known kind, decided here or
    /// answered by a helper.
    #[error("{}", .0.message)]
    Answer(ErrorBody),
    /// Anything else: `internal`, with its chain of causes.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError::Answer(ErrorBody::new(kind, message))
    }

    /// A bad parameter, flag value or body (`invalid_argument`).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// A request body that cannot be read or decoded (`invalid_argument`).
    pub fn invalid_body(e: HttpError) -> Self {
        Self::invalid(format!("invalid request body: {}", error_chain(&e)))
    }

    /// The request contradicts the current state (`conflict`).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// A service the request needs is not running (`unavailable`).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// No container is named `key` (ID, name or ID prefix).
    pub fn container_not_found(key: &str) -> Self {
        ApiError::Answer(
            ErrorBody::new(
                ErrorKind::ContainerNotFound,
                format!("no such container: {key}; list containers with `vessel ls -a`"),
            )
            .with_name(key),
        )
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::Answer(b) => b.kind,
            ApiError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The answer to send: for an internal error, the whole chain.
    pub fn body(&self) -> ErrorBody {
        match self {
            ApiError::Answer(b) => b.clone(),
            ApiError::Internal(e) => ErrorBody::new(ErrorKind::Internal, format!("{e:#}")),
        }
    }

    /// The same error about `name` when it is of `kind` (a helper's
    /// not-found named in the words of the client's request).
    pub fn naming(self, kind: ErrorKind, name: &str) -> Self {
        match self {
            ApiError::Answer(b) if b.kind == kind => ApiError::Answer(b.with_name(name)),
            e => e,
        }
    }
}

impl From<ErrorBody> for ApiError {
    fn from(b: ErrorBody) -> Self {
        ApiError::Answer(b)
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

/// A failed exchange with a helper (`who`: `vessel-images`,
/// `vessel-network`), keeping its cause.
pub fn helper_failed(who: &str) -> impl FnOnce(HttpError) -> ApiError + '_ {
    move |e| ApiError::Internal(anyhow::Error::new(e).context(format!("talking to {who}")))
}

/// Decode a helper's JSON answer; its error answers keep their kind,
/// message and name.
pub fn helper_answer<T: serde::de::DeserializeOwned>(who: &str, resp: Response) -> ApiResult<T> {
    Ok(resp.json::<T>().map_err(helper_failed(who))??)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_bodies() {
        let e = ApiError::container_not_found("web");
        assert_eq!(e.kind(), ErrorKind::ContainerNotFound);
        let b = e.body();
        assert_eq!(b.status(), 404);
        assert_eq!(b.name.as_deref(), Some("web"));
        assert!(
            b.message.contains("no such container: web"),
            "{}",
            b.message
        );
        assert!(b.message.contains("vessel ls -a"), "{}", b.message);

        let e = ApiError::from(anyhow::anyhow!("disk on fire").context("writing state.json"));
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert_eq!(e.body().message, "writing state.json: disk on fire");

        let io = std::io::Error::other("broken pipe");
        let e = helper_failed("vessel-network")(HttpError::Io(io));
        assert_eq!(
            e.body().message,
            "talking to vessel-network: I/O error: broken pipe"
        );
    }

    #[test]
    fn naming_only_touches_its_kind() {
        let helper = ErrorBody::new(ErrorKind::ImageNotFound, "image x not found")
            .with_name("docker.io/library/x:latest");
        let e = ApiError::from(helper).naming(ErrorKind::ImageNotFound, "x");
        assert_eq!(e.body().name.as_deref(), Some("x"));
        let e = ApiError::invalid("bad").naming(ErrorKind::ImageNotFound, "x");
        assert_eq!(e.body().name, None);
    }
}
