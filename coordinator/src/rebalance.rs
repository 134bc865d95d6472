//! The vnode assignment policy (`docs/architecture.md`, "Vnode assignment"): a pure function from the
//! current table, the live nodes and the measured load to the next table.
//!
//! One round, in order:
//!
//! 1. **Orphans.** Vnodes whose owner is gone (dead, draining, or never
//!    assigned) go to their pinned node if it is live, else to the least
//!    loaded node (fewest vnodes per unit of capacity). Never capped: an
//!    orphan is an outage.
//! 2. **Pins.** A vnode pinned (`ASSIGNED_VNODES`) to a live node moves there.
//!    A node with pins owns only its pinned vnodes; the rest are shared among
//!    the unpinned nodes (or among all nodes when every node has pins).
//! 3. **Counts.** Each shared node's vnode count is brought to its quota
//!    (capacity share of the shared vnodes, rounded by largest remainder,
//!    ties to whoever holds more now). Only nodes above quota give, only
//!    nodes below take, so a join takes from the most loaded and nothing else
//!    moves; the least-loaded vnodes (fewest clients) move first.
//! 4. **Load.** With measured load (connections per vnode), while a node
//!    carries more than `(1 + epsilon)` times its capacity share (and at least
//!    `min_load_gap` connections above it), swap one of
//!    its vnodes with one of the coolest node's, choosing the pair that halves
//!    the gap best. Swaps keep the counts of step 3 intact.
//!
//! Steps 3 and 4 stop after `max_moves` moves per round; the coordinator runs
//! rounds until nothing moves, so big changes happen in waves.

use presence_model::{Vnode, VNODES};

/// A live node as the rebalancer sees it.
#[derive(Debug, Clone)]
pub struct NodeInput {
    /// Node ID.
    pub id: String,
    /// Relative capacity (0 is read as 1).
    pub capacity: u32,
    /// Vnodes pinned to this node.
    pub pinned: Vec<Vnode>,
    /// The node is leaving: move everything off it if anyone else can take it.
    pub draining: bool,
}

/// Policy knobs.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Hysteresis for load balancing: act only above `(1 + epsilon)` × share.
    pub epsilon: f64,
    /// Cap on count- and load-balancing moves per round.
    pub max_moves: usize,
    /// Load balancing also waits until a node carries at least this many
    /// connections above its share: moving clients to even out a handful of
    /// connections costs more handoffs than it saves.
    pub min_load_gap: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self { epsilon: 0.1, max_moves: 512, min_load_gap: 100 }
    }
}

/// One vnode changing hands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The vnode.
    pub vnode: Vnode,
    /// Previous owner (`None`: it had no live owner).
    pub from: Option<String>,
    /// New owner.
    pub to: String,
}

/// The outcome of a round.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Owner ID per vnode (`None` only when no node is live).
    pub owners: Vec<Option<String>>,
    /// What changed hands.
    pub moves: Vec<Move>,
    /// Whether `max_moves` cut the round short (run another).
    pub capped: bool,
}

/// Computes the next assignment. `current[v]` is v's owner ID, `load[v]` its
/// measured connections (an empty slice when unknown).
pub fn plan(current: &[Option<&str>], nodes: &[NodeInput], load: &[u32], policy: &Policy) -> Plan {
    let mut r = Round::new(current, nodes, load);
    let capped = if r.eligible.is_empty() {
        false
    } else {
        r.assign_orphans_and_pins();
        let mut budget = policy.max_moves;
        let capped_counts = r.balance_counts(&mut budget);
        let capped_load = !capped_counts && r.balance_load(policy.epsilon, policy.min_load_gap, &mut budget);
        capped_counts || capped_load
    };
    let owners: Vec<Option<String>> = r.owner.iter().map(|o| o.map(|i| nodes[i].id.clone())).collect();
    let moves = (0..VNODES)
        .filter(|&v| owners[v].as_deref() != current.get(v).copied().flatten())
        .filter_map(|v| {
            owners[v].clone().map(|to| Move {
                vnode: v as Vnode,
                from: current.get(v).copied().flatten().map(str::to_string),
                to,
            })
        })
        .collect();
    Plan { owners, moves, capped }
}

struct Round<'a> {
    nodes: &'a [NodeInput],
    load: Vec<u64>,
    /// Indices of nodes that may own vnodes.
    eligible: Vec<usize>,
    /// Indices of nodes that share the unpinned vnodes.
    pool: Vec<usize>,
    /// Per vnode: index of the live pinned node, if any.
    pin: Vec<Option<usize>>,
    /// Per vnode: index of the owner.
    owner: Vec<Option<usize>>,
}

impl<'a> Round<'a> {
    fn new(current: &[Option<&str>], nodes: &'a [NodeInput], load: &[u32]) -> Self {
        let mut eligible: Vec<usize> = (0..nodes.len()).filter(|&i| !nodes[i].draining).collect();
        if eligible.is_empty() {
            // Everyone drains: the draining nodes keep serving rather than nobody.
            eligible = (0..nodes.len()).collect();
        }
        let is_eligible = |i: usize| eligible.contains(&i);
        let mut pin = vec![None; VNODES];
        for &i in &eligible {
            for &v in &nodes[i].pinned {
                let slot = &mut pin[v as usize];
                // Two nodes pinning one vnode: the lower ID wins, deterministically.
                if slot.is_none_or(|j: usize| nodes[i].id < nodes[j].id) {
                    *slot = Some(i);
                }
            }
        }
        let mut pool: Vec<usize> = eligible.iter().copied().filter(|&i| nodes[i].pinned.is_empty()).collect();
        if pool.is_empty() {
            pool = eligible.clone();
        }
        let owner = (0..VNODES)
            .map(|v| {
                let id = current.get(v).copied().flatten()?;
                nodes.iter().position(|n| n.id == id).filter(|&i| is_eligible(i))
            })
            .collect();
        let load = (0..VNODES).map(|v| u64::from(load.get(v).copied().unwrap_or(0))).collect();
        Self { nodes, load, eligible, pool, pin, owner }
    }

    fn capacity(&self, i: usize) -> f64 {
        f64::from(self.nodes[i].capacity.max(1))
    }

    /// Vnodes shared by the pool (not pinned to a live node).
    fn is_shared(&self, v: usize) -> bool {
        self.pin[v].is_none()
    }

    fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.nodes.len()];
        for v in 0..VNODES {
            if self.is_shared(v) {
                if let Some(o) = self.owner[v] {
                    c[o] += 1;
                }
            }
        }
        c
    }

    fn assign_orphans_and_pins(&mut self) {
        let in_pool: Vec<bool> = (0..self.nodes.len()).map(|i| self.pool.contains(&i)).collect();
        for v in 0..VNODES {
            match self.pin[v] {
                Some(p) => self.owner[v] = Some(p),
                None => {
                    if self.owner[v].is_some_and(|o| !in_pool[o]) {
                        self.owner[v] = None;
                    }
                }
            }
        }
        let mut counts = self.counts();
        for v in 0..VNODES {
            if self.owner[v].is_none() {
                let to = self.least_loaded(&counts);
                self.owner[v] = Some(to);
                counts[to] += 1;
            }
        }
    }

    fn least_loaded(&self, counts: &[usize]) -> usize {
        let mut best = self.pool[0];
        for &i in &self.pool {
            if (counts[i] as f64) / self.capacity(i) < (counts[best] as f64) / self.capacity(best) {
                best = i;
            }
        }
        best
    }

    /// Integer quotas by capacity, largest remainder; ties go to the node holding more.
    fn quotas(&self, counts: &[usize]) -> Vec<usize> {
        let shared = (0..VNODES).filter(|&v| self.is_shared(v)).count();
        let total_cap: f64 = self.pool.iter().map(|&i| self.capacity(i)).sum();
        let mut q = vec![0usize; self.nodes.len()];
        let mut rema: Vec<(f64, usize, usize)> = Vec::new();
        let mut given = 0;
        for &i in &self.pool {
            let exact = shared as f64 * self.capacity(i) / total_cap;
            q[i] = exact.floor() as usize;
            given += q[i];
            rema.push((exact - exact.floor(), counts[i], i));
        }
        rema.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        for &(_, _, i) in rema.iter().take(shared.saturating_sub(given)) {
            q[i] += 1;
        }
        q
    }

    /// Step 3. Returns whether the budget ran out with work left.
    fn balance_counts(&mut self, budget: &mut usize) -> bool {
        let mut counts = self.counts();
        let quotas = self.quotas(&counts);
        // Givers' vnodes, least loaded first.
        let mut surplus: Vec<Vnode> = Vec::new();
        for &i in &self.pool {
            if counts[i] > quotas[i] {
                let mut mine: Vec<usize> =
                    (0..VNODES).filter(|&v| self.is_shared(v) && self.owner[v] == Some(i)).collect();
                mine.sort_by_key(|&v| (self.load[v], v));
                surplus.extend(mine.into_iter().take(counts[i] - quotas[i]).map(|v| v as Vnode));
            }
        }
        surplus.sort_by_key(|&v| (self.load[v as usize], v));
        let mut takers: Vec<usize> = self.pool.iter().copied().filter(|&i| counts[i] < quotas[i]).collect();
        takers.sort();
        let mut surplus = surplus.into_iter();
        for t in takers {
            while counts[t] < quotas[t] {
                if *budget == 0 {
                    return true;
                }
                let Some(v) = surplus.next() else { return false };
                let from = self.owner[v as usize].unwrap_or(t);
                counts[from] -= 1;
                counts[t] += 1;
                self.owner[v as usize] = Some(t);
                *budget -= 1;
            }
        }
        false
    }

    /// Step 4. Returns whether the budget ran out with work left.
    fn balance_load(&mut self, epsilon: f64, min_gap: u64, budget: &mut usize) -> bool {
        if self.pool.len() < 2 {
            return false;
        }
        let total_cap: f64 = self.pool.iter().map(|&i| self.capacity(i)).sum();
        let mut node_load = vec![0u64; self.nodes.len()];
        for v in 0..VNODES {
            if let (true, Some(o)) = (self.is_shared(v), self.owner[v]) {
                node_load[o] += self.load[v];
            }
        }
        let total: u64 = self.pool.iter().map(|&i| node_load[i]).sum();
        if total == 0 {
            return false;
        }
        let shares: Vec<f64> = (0..self.nodes.len()).map(|i| total as f64 * self.capacity(i) / total_cap).collect();
        let share = |i: usize| shares[i];
        // Each swap strictly lowers the hottest node's excess, so this ends; the
        // bound is a guard against float ties.
        for _ in 0..VNODES {
            let ratio = |i: usize| node_load[i] as f64 / share(i);
            let hot = *self.pool.iter().max_by(|&&a, &&b| ratio(a).total_cmp(&ratio(b))).unwrap_or(&self.pool[0]);
            let cold = *self.pool.iter().min_by(|&&a, &&b| ratio(a).total_cmp(&ratio(b))).unwrap_or(&self.pool[0]);
            let excess = node_load[hot] as f64 - share(hot);
            if hot == cold || node_load[hot] as f64 <= (1.0 + epsilon) * share(hot) || excess < min_gap as f64 {
                return false;
            }
            if *budget < 2 {
                return true;
            }
            let want = (node_load[hot] as f64 - share(hot)).min(share(cold) - node_load[cold] as f64);
            if want < 1.0 {
                return false;
            }
            let Some((h, c)) = self.best_swap(hot, cold, want) else { return false };
            let d = self.load[h] - self.load[c];
            self.owner[h] = Some(cold);
            self.owner[c] = Some(hot);
            node_load[hot] -= d;
            node_load[cold] += d;
            *budget -= 2;
        }
        false
    }

    /// The swap (vnode of `hot`, vnode of `cold`) whose load difference is
    /// closest to `want`, among those that move some load but less than `2 * want`.
    fn best_swap(&self, hot: usize, cold: usize, want: f64) -> Option<(usize, usize)> {
        let owned = |n: usize| -> Vec<usize> {
            (0..VNODES).filter(|&v| self.is_shared(v) && self.owner[v] == Some(n)).collect()
        };
        let mut cold_vn = owned(cold);
        cold_vn.sort_by_key(|&v| self.load[v]);
        let cold_loads: Vec<u64> = cold_vn.iter().map(|&v| self.load[v]).collect();
        let mut best: Option<(f64, usize, usize)> = None;
        for h in owned(hot) {
            let lh = self.load[h] as f64;
            let target = lh - want;
            let at = cold_loads.partition_point(|&l| (l as f64) < target);
            for k in [at.wrapping_sub(1), at] {
                let Some(&c) = cold_vn.get(k) else { continue };
                let d = lh - self.load[c] as f64;
                if d <= 0.0 || d >= 2.0 * want {
                    continue;
                }
                let err = (d - want).abs();
                if best.is_none_or(|(e, _, _)| err < e) {
                    best = Some((err, h, c));
                }
            }
        }
        best.map(|(_, h, c)| (h, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(id: &str) -> NodeInput {
        NodeInput { id: id.into(), capacity: 1, pinned: vec![], draining: false }
    }

    fn ids(owners: &[Option<String>]) -> Vec<Option<&str>> {
        owners.iter().map(|o| o.as_deref()).collect()
    }

    /// Runs rounds until nothing moves; returns owners and the total moves.
    fn settle(
        mut owners: Vec<Option<String>>,
        nodes: &[NodeInput],
        load: &[u32],
        policy: &Policy,
    ) -> (Vec<Option<String>>, usize) {
        let mut moved = 0;
        for _ in 0..100 {
            let p = plan(&ids(&owners), nodes, load, policy);
            moved += p.moves.len();
            let done = p.moves.is_empty();
            owners = p.owners;
            if done {
                break;
            }
        }
        (owners, moved)
    }

    fn count(owners: &[Option<String>], id: &str) -> usize {
        owners.iter().filter(|o| o.as_deref() == Some(id)).count()
    }

    #[test]
    fn first_assignment_is_balanced() {
        let nodes: Vec<NodeInput> = ["a", "b", "c"].iter().map(|s| node(s)).collect();
        let (owners, _) = settle(vec![None; VNODES], &nodes, &[], &Policy::default());
        let c: Vec<usize> = ["a", "b", "c"].iter().map(|id| count(&owners, id)).collect();
        assert_eq!(c.iter().sum::<usize>(), VNODES);
        assert!(c.iter().max().unwrap_or(&0) - c.iter().min().unwrap_or(&0) <= 1, "{c:?}");
    }

    #[test]
    fn capacity_weights() {
        let mut nodes: Vec<NodeInput> = ["a", "b"].iter().map(|s| node(s)).collect();
        nodes[1].capacity = 3;
        let (owners, _) = settle(vec![None; VNODES], &nodes, &[], &Policy::default());
        assert_eq!(count(&owners, "a"), 1024);
        assert_eq!(count(&owners, "b"), 3072);
    }

    #[test]
    fn pins_are_respected_and_pinned_nodes_own_only_their_pins() {
        let mut nodes: Vec<NodeInput> = ["a", "b", "c"].iter().map(|s| node(s)).collect();
        nodes[0].pinned = (0..100).collect();
        let (owners, _) = settle(vec![None; VNODES], &nodes, &[], &Policy::default());
        assert!((0..100).all(|v| owners[v].as_deref() == Some("a")));
        assert_eq!(count(&owners, "a"), 100);
        assert_eq!(count(&owners, "b") + count(&owners, "c"), VNODES - 100);
    }

    #[test]
    fn draining_node_is_emptied() {
        let mut nodes: Vec<NodeInput> = ["a", "b", "c"].iter().map(|s| node(s)).collect();
        let (owners, _) = settle(vec![None; VNODES], &nodes, &[], &Policy::default());
        nodes[1].draining = true;
        let p = plan(&ids(&owners), &nodes, &[], &Policy::default());
        assert_eq!(count(&p.owners, "b"), 0);
        assert!(p.moves.iter().all(|m| m.from.as_deref() == Some("b")));
    }

    #[test]
    fn move_cap_spreads_a_join_over_rounds() {
        let mut nodes: Vec<NodeInput> = ["a", "b", "c"].iter().map(|s| node(s)).collect();
        let (owners, _) = settle(vec![None; VNODES], &nodes, &[], &Policy::default());
        nodes.push(node("d"));
        let policy = Policy { max_moves: 100, ..Policy::default() };
        let p = plan(&ids(&owners), &nodes, &[], &policy);
        assert_eq!(p.moves.len(), 100);
        assert!(p.capped);
        let (owners, _) = settle(p.owners, &nodes, &[], &policy);
        assert_eq!(count(&owners, "d"), 1024);
    }

    #[test]
    fn hot_node_sheds_load_by_swaps() {
        let nodes: Vec<NodeInput> = ["a", "b"].iter().map(|s| node(s)).collect();
        let (owners, _) = settle(vec![None; VNODES], &nodes, &[], &Policy::default());
        // Everything a owns is hot.
        let load: Vec<u32> = owners.iter().map(|o| if o.as_deref() == Some("a") { 10 } else { 1 }).collect();
        let (after, moved) = settle(owners, &nodes, &load, &Policy::default());
        assert!(moved > 0);
        let l = |id: &str| -> u64 {
            (0..VNODES).filter(|&v| after[v].as_deref() == Some(id)).map(|v| u64::from(load[v])).sum()
        };
        let (la, lb) = (l("a") as f64, l("b") as f64);
        let share = (la + lb) / 2.0;
        assert!(la.max(lb) <= 1.1 * share + 10.0, "a={la} b={lb}");
        // Counts stay exactly balanced.
        assert_eq!(count(&after, "a"), 2048);
    }

    #[test]
    fn small_absolute_gaps_move_nothing() {
        let nodes: Vec<NodeInput> = ["a", "b"].iter().map(|s| node(s)).collect();
        let (owners, _) = settle(vec![None; VNODES], &nodes, &[], &Policy::default());
        // a carries 3x b, but only 40 connections in all: not worth a handoff.
        let mut load = vec![0u32; VNODES];
        let (mut on_a, mut on_b) = (0, 0);
        for v in 0..VNODES {
            match owners[v].as_deref() {
                Some("a") if on_a < 30 => {
                    load[v] = 1;
                    on_a += 1;
                }
                Some("b") if on_b < 10 => {
                    load[v] = 1;
                    on_b += 1;
                }
                _ => {}
            }
        }
        assert!(plan(&ids(&owners), &nodes, &load, &Policy::default()).moves.is_empty());
        let eager = Policy { min_load_gap: 1, ..Policy::default() };
        assert!(!plan(&ids(&owners), &nodes, &load, &eager).moves.is_empty());
    }

    #[test]
    fn load_within_hysteresis_moves_nothing() {
        let nodes: Vec<NodeInput> = ["a", "b"].iter().map(|s| node(s)).collect();
        let (owners, _) = settle(vec![None; VNODES], &nodes, &[], &Policy::default());
        let load: Vec<u32> = owners.iter().map(|o| if o.as_deref() == Some("a") { 105 } else { 100 }).collect();
        let p = plan(&ids(&owners), &nodes, &load, &Policy::default());
        assert!(p.moves.is_empty());
    }

    #[test]
    fn no_live_nodes_means_no_owners() {
        let p = plan(&vec![Some("gone"); VNODES], &[], &[], &Policy::default());
        assert!(p.owners.iter().all(Option::is_none));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join(u32),
        Leave(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(1u32..4).prop_map(Op::Join), (0usize..64).prop_map(Op::Leave)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// After any sequence of joins and leaves (with capacities and pins),
        /// every vnode has exactly one live owner and pins hold.
        #[test]
        fn every_vnode_has_one_live_owner(ops in proptest::collection::vec(op(), 1..12), pin_first in any::<bool>()) {
            let mut nodes: Vec<NodeInput> = vec![node("n0")];
            if pin_first {
                nodes[0].pinned = (0..64).collect();
            }
            let mut next = 1;
            let mut owners = vec![None; VNODES];
            for op in ops {
                match op {
                    Op::Join(cap) => {
                        let mut n = node(&format!("n{next}"));
                        n.capacity = cap;
                        nodes.push(n);
                        next += 1;
                    }
                    Op::Leave(i) => {
                        if nodes.len() > 1 {
                            nodes.remove(i % nodes.len());
                        }
                    }
                }
                owners = settle(owners, &nodes, &[], &Policy::default()).0;
                for o in &owners {
                    let o = o.as_deref();
                    prop_assert!(o.is_some_and(|id| nodes.iter().any(|n| n.id == id)));
                }
                for n in &nodes {
                    for &v in &n.pinned {
                        prop_assert_eq!(owners[v as usize].as_deref(), Some(n.id.as_str()));
                    }
                }
            }
        }

        /// One node joining N equal nodes moves at most 1.05/(N+1) of the
        /// vnodes, and max/avg vnodes per node stays at most 1.01.
        #[test]
        fn join_moves_little_and_balance_holds(n in 1usize..=40) {
            let mut nodes: Vec<NodeInput> = (0..n).map(|i| node(&format!("n{i}"))).collect();
            let policy = Policy { max_moves: VNODES, ..Policy::default() };
            let (owners, _) = settle(vec![None; VNODES], &nodes, &[], &policy);
            nodes.push(node("new"));
            let (after, moved) = settle(owners.clone(), &nodes, &[], &policy);
            let changed = (0..VNODES).filter(|&v| owners[v] != after[v]).count();
            prop_assert_eq!(changed, moved);
            prop_assert!(changed as f64 <= 1.05 * VNODES as f64 / (n + 1) as f64, "moved {} of {}", changed, VNODES);
            // Only the new node gained vnodes.
            prop_assert!((0..VNODES).all(|v| owners[v] == after[v] || after[v].as_deref() == Some("new")));
            let counts: Vec<usize> = nodes.iter().map(|x| count(&after, &x.id)).collect();
            let avg = VNODES as f64 / nodes.len() as f64;
            let max = *counts.iter().max().unwrap_or(&0) as f64;
            prop_assert!(max / avg <= 1.01, "max/avg {} for {} nodes", max / avg, nodes.len());
        }

        /// A node leaving: only its vnodes move, to the least loaded.
        #[test]
        fn leave_moves_only_the_leavers_vnodes(n in 2usize..=40, gone in 0usize..40) {
            let mut nodes: Vec<NodeInput> = (0..n).map(|i| node(&format!("n{i}"))).collect();
            let policy = Policy { max_moves: VNODES, ..Policy::default() };
            let (owners, _) = settle(vec![None; VNODES], &nodes, &[], &policy);
            let leaver = nodes.remove(gone % n).id;
            let (after, _) = settle(owners.clone(), &nodes, &[], &policy);
            prop_assert!((0..VNODES).all(|v| owners[v] == after[v] || owners[v].as_deref() == Some(leaver.as_str())));
            let counts: Vec<usize> = nodes.iter().map(|x| count(&after, &x.id)).collect();
            prop_assert!(counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0) <= 1);
        }
    }
}
