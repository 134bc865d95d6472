//! The key schema. Keys that one script touches together share a hash tag
//! (the part in braces), so they live in one Redis Cluster slot:
//!
//! | key | type | what |
//! |---|---|---|
//! | `{P}:epoch` | string | routing epoch |
//! | `{P}:table` | string | routing table JSON (with its epoch) |
//! | `{P}:generation` | string | the table's generation (compared with the epoch by readers) |
//! | `{P}:node:<id>` | string, TTL | a node's latest heartbeat record |
//! | `{P}:nodes` | set | node IDs that may hold presence (live or not yet counted out) |
//! | `{P}:purged:<id>` | string, TTL | left when a node was counted out; its next heartbeat reports fresh |
//! | `{P}:leader` | string, TTL | the coordinator holding the lease |
//! | `{P:v<vnode>}:user:<userId>` | hash | `n:<nodeId>` → count, `d:<nodeId>` → that node's share (devices, activity), `seq`, `ls` (lastSeen), `or` (offline reason), `st`/`se`/`iv` (the status the user set, its expiry, invisible since) |
//! | `{P:v<vnode>}:nodeusers:<nodeId>` | set | users of that vnode the node has connections of |
//!
//! | `{P:uniq}:h:<hour>`, `{P:uniq}:d:<day>` | HyperLogLog, TTL | users seen online in that UTC hour / day (numbers since the Unix epoch) |
//! | `{P:uniq}:peak:<day>` | string, TTL | most concurrent connections that UTC day |
//!
//! `P` is the prefix (default `presence`). Channel `<P>:table` carries epoch notices.

use presence_model::Vnode;

/// Key builder for one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (which must not contain braces).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.replace(['{', '}'], "") }
    }

    /// The routing epoch.
    pub fn epoch(&self) -> String {
        format!("{{{}}}:epoch", self.prefix)
    }

    /// The routing table's generation.
    pub fn generation(&self) -> String {
        format!("{{{}}}:generation", self.prefix)
    }

    /// The routing table.
    pub fn table(&self) -> String {
        format!("{{{}}}:table", self.prefix)
    }

    /// A node's registration.
    pub fn node(&self, id: &str) -> String {
        format!("{{{}}}:node:{id}", self.prefix)
    }

    /// The set of nodes that may hold presence.
    pub fn nodes(&self) -> String {
        format!("{{{}}}:nodes", self.prefix)
    }

    /// Marker left when a node was counted out (see `lua/forget_node.lua`).
    pub fn purged(&self, id: &str) -> String {
        format!("{{{}}}:purged:{id}", self.prefix)
    }

    /// The leader lease.
    pub fn leader(&self) -> String {
        format!("{{{}}}:leader", self.prefix)
    }

    /// A user's presence hash.
    pub fn user(&self, vnode: Vnode, user: &str) -> String {
        format!("{{{}:v{vnode}}}:user:{user}", self.prefix)
    }

    /// The pub/sub channel of a user's changes (the fast path). Same hash tag
    /// as the user's hash, so the write script may `SPUBLISH` to it on a
    /// Redis Cluster, and subscribers of one vnode meet on one shard.
    pub fn channel(&self, vnode: Vnode, user: &str) -> String {
        format!("{{{}:v{vnode}}}:ch:{user}", self.prefix)
    }

    /// Users seen online in UTC hour `hour` (a HyperLogLog).
    pub fn unique_hour(&self, hour: u64) -> String {
        format!("{{{}:uniq}}:h:{hour}", self.prefix)
    }

    /// Users seen online on UTC day `day` (a HyperLogLog).
    pub fn unique_day(&self, day: u64) -> String {
        format!("{{{}:uniq}}:d:{day}", self.prefix)
    }

    /// Most concurrent connections on UTC day `day`.
    pub fn peak_day(&self, day: u64) -> String {
        format!("{{{}:uniq}}:peak:{day}", self.prefix)
    }

    /// The users of `vnode` that `node` has connections of.
    pub fn node_users(&self, vnode: Vnode, node: &str) -> String {
        format!("{{{}:v{vnode}}}:nodeusers:{node}", self.prefix)
    }

    /// The pub/sub channel of epoch notices.
    pub fn table_channel(&self) -> String {
        format!("{}:table", self.prefix)
    }
}

/// The hash tag of a key: the text between the first `{` and the next `}`, as Redis Cluster reads it.
pub fn hash_tag(key: &str) -> &str {
    match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_a_script_touches_together_share_a_slot() {
        let k = Keys::new("presence");
        assert_eq!(hash_tag(&k.epoch()), hash_tag(&k.table()));
        assert_eq!(hash_tag(&k.epoch()), hash_tag(&k.generation()));
        assert_eq!(hash_tag(&k.epoch()), hash_tag(&k.leader()));
        assert_eq!(hash_tag(&k.node("n1")), hash_tag(&k.leader()));
        assert_eq!(hash_tag(&k.node("n1")), hash_tag(&k.nodes()));
        assert_eq!(hash_tag(&k.node("n1")), hash_tag(&k.purged("n1")));
        // User IDs may hold braces; the tag ends at the first closing brace, before the ID.
        let u = k.user(1242, "we{ir}d");
        assert_eq!(hash_tag(&u), "presence:v1242");
        assert_eq!(hash_tag(&u), hash_tag(&k.node_users(1242, "n{1}")));
        assert_ne!(hash_tag(&k.user(1, "a")), hash_tag(&k.user(2, "a")));
        assert_eq!(Keys::new("we{ird}").epoch(), "{weird}:epoch");
    }
}
