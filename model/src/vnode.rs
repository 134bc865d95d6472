//! The fixed hash from a user ID to one of [`VNODES`] vnodes.
//!
//! `vnode(userId) = xxh3_64(utf8(userId), seed 0) >> 52`. It must never change
//! and never depend on the process (so never Rust's `Hash`): every ws-node,
//! coordinator and SDK must agree on it, and the golden vectors in
//! `shared/vectors/vnode.json` pin it down.

use xxhash_rust::xxh3::xxh3_64;

/// Number of vnodes: 2^12, so a vnode is the top 12 bits of the hash.
pub const VNODES: usize = 4096;

/// A vnode number, `0..VNODES`.
pub type Vnode = u16;

/// The vnode that owns `user_id` (the raw UTF-8 bytes are hashed).
#[inline]
pub fn vnode(user_id: &str) -> Vnode {
    (xxh3_64(user_id.as_bytes()) >> 52) as Vnode
}

/// The raw 64-bit hash, exposed for the golden-vector test and for tools.
#[inline]
pub fn hash(user_id: &str) -> u64 {
    xxh3_64(user_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_vectors(path: &str) {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("golden vectors missing at {path}: {e}"));
        let doc: serde_json::Value = serde_json::from_str(&text).expect("vectors parse");
        assert_eq!(doc["vnodes"].as_u64(), Some(VNODES as u64));
        assert_eq!(doc["hash"].as_str(), Some("xxh3_64"));
        assert_eq!(doc["seed"].as_u64(), Some(0));
        let cases = doc["cases"].as_array().expect("cases array");
        assert!(!cases.is_empty());
        for case in cases {
            let id = case["userId"].as_str().expect("userId");
            let want_hash = u64::from_str_radix(case["xxh3"].as_str().expect("xxh3"), 16).expect("hex hash");
            let want_vnode = case["vnode"].as_u64().expect("vnode");
            assert_eq!(hash(id), want_hash, "hash of {id:?}");
            assert_eq!(u64::from(vnode(id)), want_vnode, "vnode of {id:?}");
        }
    }

    /// The copy of `shared/vectors/vnode.json` kept in the repository.
    #[test]
    fn golden_vectors() {
        check_vectors(concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/vnode.json"));
    }

    /// The shared original, when the checkout sits beside it (as in CI): catches drift of the copy.
    #[test]
    fn shared_golden_vectors_when_present() {
        let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors/vnode.json");
        if std::path::Path::new(shared).exists() {
            check_vectors(shared);
        }
    }

    proptest::proptest! {
        #[test]
        fn always_in_range(id in ".{0,200}") {
            proptest::prop_assert!((vnode(&id) as usize) < VNODES);
        }
    }
}
