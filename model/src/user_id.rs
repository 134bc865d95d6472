//! Validated user IDs: 1 to 128 bytes of UTF-8 with no control characters.
//!
//! Every boundary (HTTP query, JSON body, WebSocket frame, JWT `sub`) parses
//! into a [`UserId`] so that nothing past the edge sees an invalid one.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest user ID accepted, in bytes of UTF-8.
pub const MAX_USER_ID_BYTES: usize = 128;

/// Why a string is not a valid user ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    /// The ID is the empty string.
    #[error("user ID is empty")]
    Empty,
    /// The ID is longer than [`MAX_USER_ID_BYTES`].
    #[error("user ID is {0} bytes long; at most 128 bytes are allowed")]
    TooLong(usize),
    /// The ID holds a control character (U+0000-U+001F, U+007F-U+009F).
    #[error("user ID contains a control character at byte {0}")]
    ControlCharacter(usize),
}

/// A user ID known to be valid. Cheap to clone (shared string), because the
/// same ID is held by the connection, the per-user state and every event.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Checks `s` and wraps it.
    pub fn parse(s: &str) -> Result<Self, UserIdError> {
        validate(s)?;
        Ok(Self(Arc::from(s)))
    }

    /// The ID as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The vnode this user belongs to.
    pub fn vnode(&self) -> crate::Vnode {
        crate::vnode(&self.0)
    }
}

/// Checks a user ID without allocating.
pub fn validate(s: &str) -> Result<(), UserIdError> {
    if s.is_empty() {
        return Err(UserIdError::Empty);
    }
    if s.len() > MAX_USER_ID_BYTES {
        return Err(UserIdError::TooLong(s.len()));
    }
    if let Some((at, _)) = s.char_indices().find(|(_, c)| c.is_control()) {
        return Err(UserIdError::ControlCharacter(at));
    }
    Ok(())
}

/// Which entry of a list of user IDs is invalid, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user ID {index} of the list: {error}")]
pub struct ListError {
    /// Position in the list (0-based).
    pub index: usize,
    /// What is wrong with it.
    pub error: UserIdError,
}

/// Checks every ID of a list (a batch body, a `subscribe`); the first invalid one is the error.
pub fn parse_list<S: AsRef<str>>(ids: &[S]) -> Result<Vec<UserId>, ListError> {
    ids.iter()
        .enumerate()
        .map(|(index, s)| UserId::parse(s.as_ref()).map_err(|error| ListError { index, error }))
        .collect()
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        UserId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq<str> for UserId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for UserId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for UserId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("用户").is_ok());
        assert!(UserId::parse("with space").is_ok());
        assert!(UserId::parse(&"a".repeat(128)).is_ok());
        assert_eq!(UserId::parse(""), Err(UserIdError::Empty));
        assert_eq!(UserId::parse(&"a".repeat(129)), Err(UserIdError::TooLong(129)));
        assert_eq!(UserId::parse("a\nb"), Err(UserIdError::ControlCharacter(1)));
        assert_eq!(UserId::parse("\u{7f}"), Err(UserIdError::ControlCharacter(0)));
        // 43 three-byte characters = 129 bytes.
        assert!(matches!(UserId::parse(&"用".repeat(43)), Err(UserIdError::TooLong(129))));
    }

    #[test]
    fn deserialize_validates() {
        let ok: Result<UserId, _> = serde_json::from_str("\"bob\"");
        assert!(ok.is_ok());
        let bad: Result<UserId, _> = serde_json::from_str("\"\"");
        assert!(bad.is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}|.{0,10}") {
            let _ = UserId::parse(&s);
        }
    }
}
