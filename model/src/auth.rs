//! JWT verification for ws-nodes (`docs/protocol.md`, "Authentication"), and minting of
//! development tokens for the demo and the CLI.
//!
//! HS256 with a shared secret is the default; RS256, ES256 and EdDSA verify
//! with a PEM public key or a JWKS document. The token's `alg` must be the one
//! configured (`none` is always refused, as jsonwebtoken has no such
//! algorithm), `exp` is required, `sub` is the user ID, and `nbf`, `iss` and
//! `aud` are checked when configured.

use std::collections::HashSet;
use std::fmt;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{UserId, UserIdError};

/// Default leeway for `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// A verified token: whose it is and until when it may keep a connection open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user (`sub`).
    pub user: UserId,
    /// `exp` plus the leeway, in ms since the Unix epoch: a connection
    /// authenticated with this token is closed then unless it re-authenticates.
    pub expires_at_ms: u64,
    /// The device class the token names (`device` claim).
    pub device: Option<crate::Device>,
    /// Whom the token lets the user watch (`watch` claim: at most
    /// [`MAX_WATCH_CLAIM`] IDs, sorted), for the `claims` subscribe policy.
    pub watch: Option<std::sync::Arc<[UserId]>>,
}

/// The claims as a token carries them. `exp` and `nbf` are NumericDates
/// (RFC 7519), which may be fractional; `aud` may be one string or a list.
#[derive(Debug, Deserialize)]
struct TokenClaims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    watch: Option<Vec<String>>,
}

/// Most user IDs a token's `watch` claim may list.
pub const MAX_WATCH_CLAIM: usize = 1000;

/// The claims the platform reads. Others are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    /// The user ID.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// The connection's device class (`web`, `mobile`, ...): wins over what the client says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Whom the user may watch, under the `claims` subscribe policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<Vec<String>>,
}

/// Why a token was refused. The distinction the client needs is
/// [`AuthError::Expired`] (refresh the token) versus everything else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `exp` is in the past (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    /// The signature does not verify with the configured key.
    #[error("token signature is invalid")]
    BadSignature,
    /// The header names an algorithm other than the configured one (or `none`).
    #[error("token algorithm is not accepted; expected {0}")]
    WrongAlgorithm(String),
    /// `sub` is missing or not a valid user ID.
    #[error("token subject is not a valid user ID: {0}")]
    BadSubject(String),
    /// A required claim (`exp`, `sub`) is missing.
    #[error("token lacks required claim {0:?}")]
    MissingClaim(String),
    /// `iss` or `aud` does not match the configuration.
    #[error("token issuer or audience does not match")]
    WrongIssuerOrAudience,
    /// No key in the JWKS matches the token's `kid`.
    #[error("no key matches the token's kid")]
    UnknownKey,
    /// The token is not a well-formed JWT.
    #[error("token is malformed: {0}")]
    Malformed(String),
}

impl AuthError {
    /// The wire error code: `token_expired` for an expired token, else `unauthorized`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Expired => crate::wire::code::TOKEN_EXPIRED,
            _ => crate::wire::code::UNAUTHORIZED,
        }
    }

    /// A short label for metrics (bounded set).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::WrongAlgorithm(_) => "wrong_algorithm",
            Self::BadSubject(_) => "bad_subject",
            Self::MissingClaim(_) => "missing_claim",
            Self::WrongIssuerOrAudience => "wrong_issuer_or_audience",
            Self::UnknownKey => "unknown_key",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// Why the verifier configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The HS256 secret is empty.
    #[error("JWT secret is empty")]
    EmptySecret,
    /// The PEM key could not be read for the algorithm.
    #[error("public key is not a valid {alg} PEM key: {detail}")]
    BadPem {
        /// Algorithm configured.
        alg: String,
        /// Parser message.
        detail: String,
    },
    /// The JWKS document is not valid.
    #[error("JWKS is invalid: {0}")]
    BadJwks(String),
    /// The algorithm is not one the platform supports.
    #[error("algorithm {0} is not supported; use HS256, RS256, ES256 or EdDSA")]
    Unsupported(String),
}

/// Where the verifying keys come from.
enum Keys {
    /// One key for every token.
    Single(DecodingKey),
    /// Keys by `kid`; a token without `kid` may use the set's only key.
    Set(Vec<(Option<String>, DecodingKey)>),
}

/// Verifies tokens. Built once at start from configuration; shared by all connections.
pub struct Verifier {
    /// The verifying key(s).
    keys: Keys,
    /// The algorithm a token must name, and the claims checks.
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("Verifier").field("algorithms", &self.validation.algorithms).finish()
    }
}

/// Optional claim checks and leeway.
#[derive(Debug, Clone, Default)]
pub struct ClaimChecks {
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Required `aud`, if any.
    pub audience: Option<String>,
    /// Leeway for `exp`/`nbf` in seconds (`None`: [`DEFAULT_LEEWAY_SECS`]).
    pub leeway_secs: Option<u64>,
}

/// Parses `HS256`, `RS256`, `ES256` or `EdDSA`.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(KeyError::Unsupported(other.to_string())),
    }
}

fn validation(alg: Algorithm, checks: &ClaimChecks) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = checks.leeway_secs.unwrap_or(DEFAULT_LEEWAY_SECS);
    // `exp`, `nbf` and `sub` are checked by [`Verifier::verify_identity`]:
    // NumericDates may be fractional, and the expiry is needed after connect.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.required_spec_claims = HashSet::new();
    match &checks.issuer {
        Some(iss) => v.set_issuer(&[iss]),
        None => v.iss = None,
    }
    match &checks.audience {
        Some(aud) => v.set_audience(&[aud]),
        None => v.validate_aud = false,
    }
    v
}

impl Verifier {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8], checks: &ClaimChecks) -> Result<Self, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        Ok(Self {
            keys: Keys::Single(DecodingKey::from_secret(secret)),
            validation: validation(Algorithm::HS256, checks),
        })
    }

    /// RS256, ES256 or EdDSA with a PEM public key.
    pub fn public_pem(alg: Algorithm, pem: &[u8], checks: &ClaimChecks) -> Result<Self, KeyError> {
        let bad = |e: jsonwebtoken::errors::Error| KeyError::BadPem { alg: format!("{alg:?}"), detail: e.to_string() };
        let key = match alg {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(pem).map_err(bad)?,
            Algorithm::ES256 => DecodingKey::from_ec_pem(pem).map_err(bad)?,
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem).map_err(bad)?,
            other => return Err(KeyError::Unsupported(format!("{other:?} with a public key"))),
        };
        Ok(Self { keys: Keys::Single(key), validation: validation(alg, checks) })
    }

    /// A JWKS document (JSON text); tokens pick a key by `kid`.
    pub fn jwks(alg: Algorithm, json: &str, checks: &ClaimChecks) -> Result<Self, KeyError> {
        let set: JwkSet = serde_json::from_str(json).map_err(|e| KeyError::BadJwks(e.to_string()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::BadJwks(e.to_string()))?;
            keys.push((jwk.common.key_id.clone(), key));
        }
        if keys.is_empty() {
            return Err(KeyError::BadJwks("the set holds no keys".into()));
        }
        Ok(Self { keys: Keys::Set(keys), validation: validation(alg, checks) })
    }

    /// Verifies a token and returns its user ID.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.verify_identity(token).map(|i| i.user)
    }

    /// Verifies a token: signature and algorithm, `crit` (none is understood,
    /// so any is refused), `iss` and `aud` when configured, `exp` (required)
    /// and `nbf` with the leeway, and `sub` as a user ID.
    pub fn verify_identity(&self, token: &str) -> Result<Identity, AuthError> {
        if critical_extensions(token) {
            return Err(AuthError::Malformed("the token names critical header extensions; none is supported".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| map_error(&e, &self.validation))?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(expected_alg(&self.validation));
        }
        let key = match &self.keys {
            Keys::Single(k) => k,
            Keys::Set(keys) => match (&header.kid, keys.as_slice()) {
                (Some(kid), _) => keys
                    .iter()
                    .find(|(id, _)| id.as_deref() == Some(kid))
                    .map(|(_, k)| k)
                    .ok_or(AuthError::UnknownKey)?,
                (None, [(_, only)]) => only,
                (None, _) => return Err(AuthError::UnknownKey),
            },
        };
        let claims = jsonwebtoken::decode::<TokenClaims>(token, key, &self.validation)
            .map_err(|e| map_error(&e, &self.validation))?
            .claims;
        let leeway = self.validation.leeway as f64;
        let now = crate::time::now_ms() as f64 / 1000.0;
        let exp = claims.exp.filter(|e| e.is_finite()).ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
        if exp + leeway <= now {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf - leeway > now) {
            return Err(AuthError::NotYetValid);
        }
        let sub = claims.sub.ok_or_else(|| AuthError::MissingClaim("sub".into()))?;
        let user = UserId::parse(&sub).map_err(|e: UserIdError| AuthError::BadSubject(e.to_string()))?;
        let device = claims
            .device
            .map(|d| crate::Device::parse(&d).map_err(|e| AuthError::Malformed(format!("device claim: {e}"))))
            .transpose()?;
        let watch = match claims.watch {
            Some(list) if list.len() > MAX_WATCH_CLAIM => {
                return Err(AuthError::Malformed(format!("the watch claim lists more than {MAX_WATCH_CLAIM} users")))
            }
            Some(list) => {
                let mut ids =
                    crate::user_id::parse_list(&list).map_err(|e| AuthError::Malformed(format!("watch claim: {e}")))?;
                ids.sort();
                ids.dedup();
                Some(ids.into())
            }
            None => None,
        };
        Ok(Identity { user, expires_at_ms: ((exp + leeway) * 1000.0).min(u64::MAX as f64) as u64, device, watch })
    }
}

/// Whether the token's header names `crit` extensions (RFC 7515 4.1.11).
/// A header that cannot be read is left to the JWT library to refuse.
fn critical_extensions(token: &str) -> bool {
    let Some(header) = token.split('.').next().and_then(base64url) else { return false };
    serde_json::from_slice::<serde_json::Value>(&header).is_ok_and(|h| h.get("crit").is_some())
}

/// Decodes unpadded base64url (JWT segments); `None` on anything else.
pub fn base64url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()
}

fn expected_alg(v: &Validation) -> AuthError {
    AuthError::WrongAlgorithm(v.algorithms.first().map(|a| format!("{a:?}")).unwrap_or_default())
}

fn map_error(e: &jsonwebtoken::errors::Error, v: &Validation) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => expected_alg(v),
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => AuthError::WrongIssuerOrAudience,
        ErrorKind::InvalidSubject => AuthError::BadSubject("invalid".into()),
        // An unknown `alg` (such as "none") fails while parsing the header.
        ErrorKind::Json(err) if err.to_string().contains("variant") => expected_alg(v),
        ErrorKind::Json(err) if err.to_string().contains("missing field `sub`") => {
            AuthError::MissingClaim("sub".into())
        }
        ErrorKind::Json(err) if err.to_string().contains("missing field `exp`") => {
            AuthError::MissingClaim("exp".into())
        }
        _ => AuthError::Malformed(e.to_string()),
    }
}

/// Mints an HS256 token for `user_id` valid for `ttl_secs` (development and tests).
pub fn mint_hs256(secret: &[u8], user_id: &str, ttl_secs: u64) -> String {
    let now = crate::time::now_ms() / 1000;
    mint_hs256_claims(
        secret,
        &Claims {
            sub: user_id.to_string(),
            exp: now + ttl_secs,
            nbf: None,
            iat: Some(now),
            iss: None,
            aud: None,
            ..Default::default()
        },
    )
}

/// Mints an HS256 token with the given claims.
pub fn mint_hs256_claims(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn verifier() -> Verifier {
        Verifier::hs256(SECRET, &ClaimChecks::default()).expect("verifier")
    }

    fn b64(s: &str) -> String {
        use std::fmt::Write;
        // Minimal base64url without padding, for hand-built tokens.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = (chunk[0] as u32) << 16
                | (*chunk.get(1).unwrap_or(&0) as u32) << 8
                | *chunk.get(2).unwrap_or(&0) as u32;
            for i in 0..=chunk.len() {
                let _ = write!(out, "{}", T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn good_token() {
        let t = mint_hs256(SECRET, "alice", 60);
        assert_eq!(verifier().verify(&t).expect("valid").as_str(), "alice");
    }

    #[test]
    fn expired_token() {
        let now = crate::time::now_ms() / 1000;
        let t = mint_hs256_claims(
            SECRET,
            &Claims {
                sub: "a".into(),
                exp: now - 120,
                nbf: None,
                iat: None,
                iss: None,
                aud: None,
                ..Default::default()
            },
        );
        let e = verifier().verify(&t).expect_err("expired");
        assert_eq!(e, AuthError::Expired);
        assert_eq!(e.code(), "token_expired");
        // Within the leeway it still passes.
        let t = mint_hs256_claims(
            SECRET,
            &Claims { sub: "a".into(), exp: now - 5, nbf: None, iat: None, iss: None, aud: None, ..Default::default() },
        );
        assert!(verifier().verify(&t).is_ok());
    }

    #[test]
    fn wrong_signature() {
        let t = mint_hs256(b"other", "alice", 60);
        assert_eq!(verifier().verify(&t), Err(AuthError::BadSignature));
    }

    #[test]
    fn alg_none_is_refused() {
        let now = crate::time::now_ms() / 1000;
        let t = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(r#"{{"sub":"alice","exp":{}}}"#, now + 60))
        );
        assert!(matches!(verifier().verify(&t), Err(AuthError::WrongAlgorithm(_))));
    }

    #[test]
    fn missing_sub_and_exp() {
        let no_sub = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"exp": crate::time::now_ms() / 1000 + 60}),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode");
        assert_eq!(verifier().verify(&no_sub), Err(AuthError::MissingClaim("sub".into())));
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice"}),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode");
        assert_eq!(verifier().verify(&no_exp), Err(AuthError::MissingClaim("exp".into())));
    }

    #[test]
    fn bad_subject_and_garbage() {
        let t = mint_hs256(SECRET, "", 60);
        assert!(matches!(verifier().verify(&t), Err(AuthError::BadSubject(_)) | Err(AuthError::MissingClaim(_))));
        assert!(matches!(verifier().verify("not.a.jwt"), Err(AuthError::Malformed(_))));
        assert!(verifier().verify("").is_err());
    }

    #[test]
    fn issuer_and_audience() {
        let checks = ClaimChecks { issuer: Some("me".into()), audience: Some("presence".into()), leeway_secs: None };
        let v = Verifier::hs256(SECRET, &checks).expect("verifier");
        let now = crate::time::now_ms() / 1000;
        let claims = |iss: &str, aud: &str| Claims {
            sub: "a".into(),
            exp: now + 60,
            nbf: None,
            iat: None,
            iss: Some(iss.into()),
            aud: Some(aud.into()),
            ..Default::default()
        };
        assert!(v.verify(&mint_hs256_claims(SECRET, &claims("me", "presence"))).is_ok());
        assert_eq!(
            v.verify(&mint_hs256_claims(SECRET, &claims("you", "presence"))),
            Err(AuthError::WrongIssuerOrAudience)
        );
        assert_eq!(v.verify(&mint_hs256_claims(SECRET, &claims("me", "other"))), Err(AuthError::WrongIssuerOrAudience));
    }

    #[test]
    fn nbf_in_future() {
        let now = crate::time::now_ms() / 1000;
        let t = mint_hs256_claims(
            SECRET,
            &Claims {
                sub: "a".into(),
                exp: now + 600,
                nbf: Some(now + 300),
                iat: None,
                iss: None,
                aud: None,
                ..Default::default()
            },
        );
        assert_eq!(verifier().verify(&t), Err(AuthError::NotYetValid));
    }

    #[test]
    fn hs256_token_refused_by_rs256_verifier_config() {
        assert!(matches!(parse_algorithm("none"), Err(KeyError::Unsupported(_))));
        assert!(Verifier::hs256(b"", &ClaimChecks::default()).is_err());
    }

    /// A token signed with [`SECRET`] from raw header and claims JSON.
    fn raw_token(header: serde_json::Value, claims: serde_json::Value) -> String {
        use base64_like::encode;
        let message = format!("{}.{}", encode(header.to_string().as_bytes()), encode(claims.to_string().as_bytes()));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(SECRET), Algorithm::HS256)
            .expect("sign");
        format!("{message}.{sig}")
    }

    mod base64_like {
        /// Unpadded base64url.
        pub fn encode(bytes: &[u8]) -> String {
            const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
                for i in 0..=chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }

    #[test]
    fn details_of_the_jwt_rules() {
        let now = crate::time::now_ms() as f64 / 1000.0;
        let hs = serde_json::json!({"alg": "HS256", "typ": "JWT"});
        // `aud` may be a list; with no audience configured it is not checked.
        let listed = raw_token(hs.clone(), serde_json::json!({"sub": "a", "exp": now + 60.0, "aud": ["x", "y"]}));
        assert_eq!(verifier().verify(&listed).map(|u| u.to_string()), Ok("a".to_string()));
        let checks = ClaimChecks { audience: Some("y".into()), ..ClaimChecks::default() };
        let wants_y = Verifier::hs256(SECRET, &checks).expect("verifier");
        assert!(wants_y.verify(&listed).is_ok(), "a list holding the audience passes");
        // NumericDates may be fractional.
        let fractional = raw_token(hs.clone(), serde_json::json!({"sub": "a", "exp": now + 60.5}));
        let id = verifier().verify_identity(&fractional).expect("fractional exp");
        let want = ((now + 60.5 + DEFAULT_LEEWAY_SECS as f64) * 1000.0) as u64;
        assert!(id.expires_at_ms.abs_diff(want) < 5, "expiry {} vs {want}", id.expires_at_ms);
        // No critical extension is understood, so a token naming one is refused.
        let crit = raw_token(
            serde_json::json!({"alg": "HS256", "crit": ["exp-ext"], "exp-ext": 1}),
            serde_json::json!({"sub": "a", "exp": now + 60.0}),
        );
        assert!(matches!(verifier().verify(&crit), Err(AuthError::Malformed(_))));
    }

    proptest::proptest! {
        /// Arbitrary text as a token: refused with an error, never a panic.
        #[test]
        fn any_string_as_a_token_is_refused_cleanly(t in "\\PC{0,400}") {
            proptest::prop_assert!(verifier().verify(&t).is_err());
        }

        /// Three segments of arbitrary bytes (what reaches the JSON and
        /// base64 decoders): refused with an error, never a panic.
        #[test]
        fn arbitrary_segments_are_refused_cleanly(
            h in proptest::collection::vec(proptest::num::u8::ANY, 0..120),
            p in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            sig in "[A-Za-z0-9_-]{0,60}",
        ) {
            let t = format!("{}.{}.{sig}", base64_like::encode(&h), base64_like::encode(&p));
            proptest::prop_assert!(verifier().verify(&t).is_err());
        }
    }
}
