//! The routing table: which ws-node owns each vnode, at which epoch.
//!
//! Nodes are listed once and vnodes point at them by index, so a lookup is a
//! hash plus two array reads, and the table serialises to a few kilobytes.

use serde::{Deserialize, Serialize};

use crate::{vnode, Vnode, VNODES};

/// Marks a vnode with no owner in [`RoutingTable::owners`].
pub const NO_OWNER: u16 = u16::MAX;

/// A node as the routing table knows it: enough to send a client there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableNode {
    /// Node ID.
    pub id: String,
    /// WebSocket URL of the node's `/socket` endpoint.
    pub url: String,
}

/// The vnode → node map with its epoch. The epoch grows by one at every change,
/// so readers can tell a newer table from an older one and writers can
/// compare-and-set on it.
///
/// On the wire (the store, `/ring`, the dashboard) `owners` is one entry per
/// vnode: the index of its owner in `nodes`, or `null` where no node owns it.
/// That is the only encoding anything outside this type sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingTable {
    /// Version of the table; grows by one at every change.
    pub epoch: u64,
    /// Which lineage of tables this is. A table written from scratch (no
    /// table in the store and none cached by the leader, e.g. after Redis
    /// came back empty and every coordinator restarted) starts a new
    /// generation at epoch 1; readers compare `(generation, epoch)`, so a
    /// new lineage replaces a cached table even when its epoch is lower or
    /// equal. Empty for tables written before generations existed.
    #[serde(default)]
    pub generation: String,
    /// The nodes that own at least one vnode (or may, after the next change).
    pub nodes: Vec<TableNode>,
    /// For each vnode, the index in `nodes` of its owner, or [`NO_OWNER`]
    /// (serialised as `null`).
    #[serde(with = "owner_indices")]
    pub owners: Vec<u16>,
}

/// `owners` as JSON: `null` for [`NO_OWNER`]. Tables written before this
/// encoding used the number 65535, which still reads as "no owner".
mod owner_indices {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::NO_OWNER;

    pub fn serialize<S: Serializer>(owners: &[u16], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(owners.iter().map(|&o| super::wire_owner(o)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
        let raw = Vec::<Option<u16>>::deserialize(d)?;
        Ok(raw.into_iter().map(|o| o.unwrap_or(NO_OWNER)).collect())
    }
}

/// What identifies a table's content: a reader holding the same version
/// holds the same table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableVersion {
    /// The table's epoch.
    pub epoch: u64,
    /// The table's generation (see [`RoutingTable::generation`]).
    pub generation: String,
}

/// An owner index as the wire shows it: `None` (null) for [`NO_OWNER`].
fn wire_owner(index: u16) -> Option<u16> {
    (index != NO_OWNER).then_some(index)
}

/// A routing table that does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// `owners` does not have one entry per vnode.
    #[error("routing table has {0} owner entries, expected 4096")]
    WrongLength(usize),
    /// An owner index points past `nodes`.
    #[error("vnode {vnode} points at node index {index}, but the table lists {nodes} nodes")]
    BadIndex {
        /// The vnode.
        vnode: usize,
        /// Its owner index.
        index: u16,
        /// How many nodes the table lists.
        nodes: usize,
    },
}

impl RoutingTable {
    /// An empty table (no owners) at `epoch`.
    pub fn empty(epoch: u64) -> Self {
        Self { epoch, generation: String::new(), nodes: Vec::new(), owners: vec![NO_OWNER; VNODES] }
    }

    /// The same table in generation `generation`.
    pub fn in_generation(mut self, generation: impl Into<String>) -> Self {
        self.generation = generation.into();
        self
    }

    /// Owner index per vnode as the wire shows it (`None` where unowned):
    /// what `owners` serialises to, for views that render it themselves.
    pub fn wire_owners(&self) -> impl Iterator<Item = Option<u16>> + '_ {
        self.owners.iter().map(|&o| wire_owner(o))
    }

    /// This table's version.
    pub fn version(&self) -> TableVersion {
        TableVersion { epoch: self.epoch, generation: self.generation.clone() }
    }

    /// Builds a table from one owner ID per vnode (`None` for unowned), with node URLs.
    pub fn from_owners<'a>(epoch: u64, owners: &[Option<&'a str>], url_of: impl Fn(&'a str) -> String) -> Self {
        let mut nodes: Vec<TableNode> = Vec::new();
        let mut index = |id: &'a str| -> u16 {
            match nodes.iter().position(|n| n.id == id) {
                Some(i) => i as u16,
                None => {
                    nodes.push(TableNode { id: id.to_string(), url: url_of(id) });
                    (nodes.len() - 1) as u16
                }
            }
        };
        let owners = owners.iter().map(|o| o.map_or(NO_OWNER, &mut index)).collect();
        Self { epoch, generation: String::new(), nodes, owners }
    }

    /// Checks the shape of a table read from outside.
    pub fn validate(&self) -> Result<(), TableError> {
        if self.owners.len() != VNODES {
            return Err(TableError::WrongLength(self.owners.len()));
        }
        for (v, &index) in self.owners.iter().enumerate() {
            if index != NO_OWNER && index as usize >= self.nodes.len() {
                return Err(TableError::BadIndex { vnode: v, index, nodes: self.nodes.len() });
            }
        }
        Ok(())
    }

    /// The owner of a vnode.
    #[inline]
    pub fn owner_of_vnode(&self, v: Vnode) -> Option<&TableNode> {
        let index = *self.owners.get(v as usize)?;
        self.nodes.get(index as usize)
    }

    /// The owner of a user ID's vnode.
    #[inline]
    pub fn owner(&self, user_id: &str) -> Option<&TableNode> {
        self.owner_of_vnode(vnode(user_id))
    }

    /// Owner ID per vnode, `None` where unowned.
    pub fn owner_ids(&self) -> Vec<Option<&str>> {
        (0..VNODES as Vnode).map(|v| self.owner_of_vnode(v).map(|n| n.id.as_str())).collect()
    }

    /// How many vnodes each listed node owns, in `nodes` order.
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.nodes.len()];
        for &i in &self.owners {
            if let Some(c) = counts.get_mut(i as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// How many vnodes node `id` owns.
    pub fn owned_by(&self, id: &str) -> usize {
        match self.nodes.iter().position(|n| n.id == id) {
            Some(i) => self.owners.iter().filter(|&&o| o as usize == i).count(),
            None => 0,
        }
    }

    /// The node listing for `id`, if the table has it.
    pub fn node(&self, id: &str) -> Option<&TableNode> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// Why an `ASSIGNED_VNODES` value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VnodeSetError {
    /// A part is neither a number nor a `lo-hi` range.
    #[error("{0:?} is not a vnode or a lo-hi range")]
    Malformed(String),
    /// A vnode is 4096 or more.
    #[error("vnode {0} is out of range 0-4095")]
    OutOfRange(u64),
    /// A range runs backwards.
    #[error("range {0}-{1} runs backwards")]
    Backwards(u64, u64),
}

/// Parses `0-1023,2048` style vnode sets (sorted, deduplicated).
pub fn parse_vnode_set(s: &str) -> Result<Vec<Vnode>, VnodeSetError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |t: &str| -> Result<u64, VnodeSetError> {
            let n: u64 = t.trim().parse().map_err(|_| VnodeSetError::Malformed(part.to_string()))?;
            if n as usize >= VNODES {
                return Err(VnodeSetError::OutOfRange(n));
            }
            Ok(n)
        };
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (num(lo)?, num(hi)?);
                if lo > hi {
                    return Err(VnodeSetError::Backwards(lo, hi));
                }
                out.extend((lo..=hi).map(|v| v as Vnode));
            }
            None => out.push(num(part)? as Vnode),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_counts() {
        let owners: Vec<Option<&str>> = (0..VNODES).map(|v| Some(if v < 1000 { "a" } else { "b" })).collect();
        let t = RoutingTable::from_owners(3, &owners, |id| format!("ws://{id}/socket"));
        t.validate().expect("valid");
        assert_eq!(t.counts(), vec![1000, 3096]);
        assert_eq!((t.owned_by("a"), t.owned_by("b"), t.owned_by("nobody")), (1000, 3096, 0));
        assert_eq!(t.owner_of_vnode(5).map(|n| n.id.as_str()), Some("a"));
        assert_eq!(t.owner_of_vnode(4095).map(|n| n.url.as_str()), Some("ws://b/socket"));
        assert_eq!(RoutingTable::empty(0).owner("alice"), None);
    }

    #[test]
    fn unowned_vnodes_are_null_on_the_wire() {
        let owners: Vec<Option<&str>> = (0..VNODES).map(|v| (v == 1).then_some("a")).collect();
        let t = RoutingTable::from_owners(2, &owners, |id| format!("ws://{id}/socket"));
        let v = serde_json::to_value(&t).expect("json");
        assert_eq!(v["owners"][0], serde_json::Value::Null);
        assert_eq!(v["owners"][1], 0);
        assert_eq!(serde_json::from_value::<RoutingTable>(v).expect("back"), t);
        // The encoding written before `null`: 65535 means no owner.
        let mut legacy = serde_json::to_value(&t).expect("json");
        legacy["owners"][0] = serde_json::json!(65535);
        assert_eq!(serde_json::from_value::<RoutingTable>(legacy).expect("legacy"), t);
    }

    #[test]
    fn validate_catches_bad_tables() {
        let mut t = RoutingTable::empty(1);
        t.owners[7] = 2;
        assert!(matches!(t.validate(), Err(TableError::BadIndex { vnode: 7, .. })));
        t.owners.pop();
        assert_eq!(t.validate(), Err(TableError::WrongLength(4095)));
    }

    #[test]
    fn vnode_sets() {
        assert_eq!(parse_vnode_set("0-3, 2,10").expect("parses"), vec![0, 1, 2, 3, 10]);
        assert_eq!(parse_vnode_set("").expect("parses"), Vec::<Vnode>::new());
        assert_eq!(parse_vnode_set("4096"), Err(VnodeSetError::OutOfRange(4096)));
        assert_eq!(parse_vnode_set("5-1"), Err(VnodeSetError::Backwards(5, 1)));
        assert!(matches!(parse_vnode_set("x"), Err(VnodeSetError::Malformed(_))));
    }
}
