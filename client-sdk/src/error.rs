//! The SDK's error type.

/// What can go wrong talking to the platform.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A user ID is not valid (1-128 bytes of UTF-8, no control characters).
    #[error("invalid user ID: {0}")]
    InvalidUserId(#[from] presence_model::UserIdError),
    /// The URL given is not usable.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The request could not be sent or the answer not read.
    #[error("transport error: {0}")]
    Transport(String),
    /// The server answered with an error.
    #[error("server answered {status} ({code}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The `code` of the JSON error body.
        code: String,
        /// The `error` of the JSON error body.
        message: String,
    },
    /// The server's answer was not the JSON expected.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The WebSocket failed.
    #[error("websocket error: {0}")]
    WebSocket(String),
    /// Nothing arrived in time.
    #[error("timed out")]
    Timeout,
    /// The session has ended.
    #[error("the session is closed")]
    Closed,
}

impl Error {
    /// The error `code` when the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Builds an [`Error::Api`] from a status and a `{"error","code"}` body.
    pub(crate) fn from_body(status: u16, body: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Body {
            error: String,
            code: String,
        }
        match serde_json::from_slice::<Body>(body) {
            Ok(b) => Self::Api { status, code: b.code, message: b.error },
            Err(_) => Self::Api {
                status,
                code: presence_model::wire::code::UNKNOWN.into(),
                message: String::from_utf8_lossy(body).into_owned(),
            },
        }
    }
}
