//! The Lua scripts, compiled in from `redis/lua/` (those that change a
//! user's presence are prefixed with the shared `lua/presence.lua`). `redis::Script` sends
//! `EVALSHA` and loads the script once when the server answers `NOSCRIPT`
//! (after a restart or on a new cluster node).

use redis::Script;

/// Every script the store runs.
pub struct Scripts {
    /// Sets a node's count for a user; see `lua/set_count.lua`.
    pub set_count: Script,
    /// Sets the status a user set; see `lua/set_status.lua`.
    pub set_status: Script,
    /// Raises a day's peak; see `lua/record_peak.lua`.
    pub record_peak: Script,
    /// Compare-and-set of the routing table; see `lua/swap_table.lua`.
    pub swap_table: Script,
    /// Node registration; see `lua/heartbeat.lua`.
    pub heartbeat: Script,
    /// Drops a counted-out node; see `lua/forget_node.lua`.
    pub forget_node: Script,
    /// May a count-out go on; see `lua/purge_check.lua`.
    pub purge_check: Script,
    /// Leader lease; see `lua/lease_acquire.lua`.
    pub lease_acquire: Script,
    /// Leader lease release; see `lua/lease_release.lua`.
    pub lease_release: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            set_count: Script::new(concat!(include_str!("../lua/presence.lua"), include_str!("../lua/set_count.lua"))),
            set_status: Script::new(concat!(
                include_str!("../lua/presence.lua"),
                include_str!("../lua/set_status.lua")
            )),
            record_peak: Script::new(include_str!("../lua/record_peak.lua")),
            swap_table: Script::new(include_str!("../lua/swap_table.lua")),
            heartbeat: Script::new(include_str!("../lua/heartbeat.lua")),
            forget_node: Script::new(include_str!("../lua/forget_node.lua")),
            purge_check: Script::new(include_str!("../lua/purge_check.lua")),
            lease_acquire: Script::new(include_str!("../lua/lease_acquire.lua")),
            lease_release: Script::new(include_str!("../lua/lease_release.lua")),
        }
    }
}
