//! Who may use the coordinator's admin side (`docs/security.md`, "Who can
//! see whose presence").
//!
//! The coordinator listens twice. The public listener, which every client
//! must reach, answers `/route`, `/healthz` and `/readyz` only: routing a
//! user reveals nothing about anyone's presence. The admin listener answers
//! everything (the dashboard and its stream, `/nodes`, `/ring`, `/metrics`,
//! `/presence`) and is bound to loopback unless an API key guards it.
//!
//! With a key configured ([`AdminKey`]), every admin request but the health
//! checks must carry it, as `Authorization: Bearer <key>` (app backends,
//! Prometheus) or as the password of HTTP Basic authentication (browsers ask
//! for it once and send it with the dashboard's event stream too), and the
//! public listener serves `/presence` as well, with the same key, so an app
//! backend can read presence across the network.

use base64::Engine;
use http::{header, HeaderMap};

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The one clients reach: routing and health only (plus `/presence` with a key).
    Public,
    /// The operator's: everything.
    Admin,
}

impl Listener {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Admin => "admin",
        }
    }
}

/// Shortest API key accepted: 16 bytes is beyond guessing over a
/// connection-capped listener, and anything shorter is likely a placeholder.
pub const MIN_KEY_LEN: usize = 16;

/// The admin API key. Compared in constant time.
#[derive(Clone)]
pub struct AdminKey(String);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(..)")
    }
}

/// Why a key was not accepted at start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Shorter than [`MIN_KEY_LEN`].
    #[error("must be at least {MIN_KEY_LEN} bytes (generate one: openssl rand -hex 32)")]
    TooShort,
    /// Characters an HTTP header cannot carry as-is.
    #[error("must be printable ASCII without spaces (it travels in an HTTP header)")]
    NotPrintable,
}

impl AdminKey {
    /// A key, checked.
    pub fn new(key: &str) -> Result<Self, KeyError> {
        if key.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort);
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KeyError::NotPrintable);
        }
        Ok(Self(key.to_string()))
    }

    /// Whether `headers` carry this key, as a bearer token or as the Basic password.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return same(rest.as_bytes(), self.0.as_bytes());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else { return false };
            // `user:password`; the user name is not checked.
            let password = decoded.iter().position(|&b| b == b':').map_or(&decoded[..0], |i| &decoded[i + 1..]);
            return same(password, self.0.as_bytes());
        }
        false
    }
}

/// Constant-time equality (the time taken depends on the lengths only), so
/// that response timing does not reveal how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).expect("header"));
        h
    }

    #[test]
    fn bearer_and_basic_carry_the_key() {
        let key = AdminKey::new("0123456789abcdef-key").expect("key");
        assert!(key.admits(&with("Bearer 0123456789abcdef-key")));
        assert!(key.admits(&with("bearer  0123456789abcdef-key")));
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:0123456789abcdef-key");
        assert!(key.admits(&with(&format!("Basic {basic}"))));
        for wrong in [
            "Bearer 0123456789abcdef-kez",
            "Bearer",
            "0123456789abcdef-key",
            "Basic !!!",
            "Basic MDEyMzQ1Njc4OWFiY2RlZi1rZXk=", // the key as user name, no password
            "Token 0123456789abcdef-key",
        ] {
            assert!(!key.admits(&with(wrong)), "{wrong}");
        }
        assert!(!key.admits(&HeaderMap::new()));
    }

    #[test]
    fn weak_keys_are_refused() {
        assert_eq!(AdminKey::new("short").err(), Some(KeyError::TooShort));
        assert_eq!(AdminKey::new("sixteen bytes with space").err(), Some(KeyError::NotPrintable));
        assert!(format!("{:?}", AdminKey::new("0123456789abcdef").expect("key")).contains(".."));
    }
}
