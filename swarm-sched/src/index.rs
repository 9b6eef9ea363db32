//! Indexes over the nodes of a [`ClusterView`]: a bit set of node positions
//! ([`NodeSet`]) and a [`NodeIndex`] that answers "which nodes are ready,
//! active, match this constraint, run this platform" with set operations
//! instead of a scan per task.
//!
//! The index is built once per `schedule` call (O(nodes x labels)); a
//! constraint is then evaluated once per call, whatever the number of tasks
//! and services using it, and a group of tasks narrows its candidates with a
//! few word-wise ANDs over 10,000 nodes (157 `u64`s).
//!
//! ```
//! use swarm_sched::index::NodeSet;
//! let mut s = NodeSet::full(70);
//! s.remove(3);
//! assert_eq!(s.count(), 69);
//! assert!(!s.contains(3) && s.contains(69));
//! assert_eq!(s.iter().next(), Some(0));
//! ```

use crate::score::{RankKey, Scorer};
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::HashMap;
use swarm_core::constraint::{Constraint, ConstraintKey, ConstraintOp, normalize_arch};
use swarm_core::feasibility::{node_active, node_ready, platform_ok};
use swarm_core::id::NodeId;
use swarm_core::model::Platform;
use swarm_core::scheduler::{ClusterView, NodeInfo, TaskRequest};

/// A set of node positions (indexes into [`ClusterView::nodes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSet {
    words: Vec<u64>,
    len: usize,
}

impl NodeSet {
    /// No node out of `len`.
    pub fn empty(len: usize) -> Self {
        NodeSet { words: vec![0; len.div_ceil(64)], len }
    }

    /// Every node out of `len`.
    pub fn full(len: usize) -> Self {
        let mut s = NodeSet { words: vec![u64::MAX; len.div_ceil(64)], len };
        s.trim();
        s
    }

    fn trim(&mut self) {
        let rem = self.len % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    /// How many positions the set ranges over.
    pub fn universe(&self) -> usize {
        self.len
    }

    /// Adds node `i`.
    pub fn insert(&mut self, i: usize) {
        if i < self.len {
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    /// Removes node `i`.
    pub fn remove(&mut self, i: usize) {
        if i < self.len {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }

    /// True when node `i` is in the set.
    pub fn contains(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Number of nodes in the set.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Keeps only the nodes also in `other`.
    pub fn intersect(&mut self, other: &NodeSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= *b;
        }
    }

    /// Adds every node of `other`.
    pub fn union(&mut self, other: &NodeSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
    }

    /// The nodes not in the set.
    pub fn complement(&self) -> NodeSet {
        let mut s = NodeSet { words: self.words.iter().map(|w| !w).collect(), len: self.len };
        s.trim();
        s
    }

    /// Number of nodes in `self` but not in `other`.
    pub fn count_minus(&self, other: &NodeSet) -> usize {
        self.words.iter().zip(&other.words).map(|(a, b)| (a & !b).count_ones() as usize).sum()
    }

    /// The nodes in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut bits = w;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(wi * 64 + b)
            })
        })
    }
}

/// The nodes with one attribute value: a list while there are few (node
/// ids and hostnames have one node each: a bit set of every node per value
/// would cost nodes^2 / 8 bytes), a set from [`Members::SPARSE`] nodes on.
#[derive(Clone, Debug)]
enum Members {
    Few(Vec<u32>),
    Set(NodeSet),
}

impl Members {
    const SPARSE: usize = 32;

    fn add(&mut self, i: usize, len: usize) {
        match self {
            Members::Few(v) if v.len() < Self::SPARSE => v.push(i as u32),
            Members::Few(v) => {
                let mut set = NodeSet::empty(len);
                for &j in v.iter() {
                    set.insert(j as usize);
                }
                set.insert(i);
                *self = Members::Set(set);
            }
            Members::Set(set) => set.insert(i),
        }
    }

    fn to_set(&self, len: usize) -> NodeSet {
        match self {
            Members::Few(v) => {
                let mut set = NodeSet::empty(len);
                for &j in v {
                    set.insert(j as usize);
                }
                set
            }
            Members::Set(set) => set.clone(),
        }
    }
}

/// Lower-cased value -> the nodes with it, for one attribute.
type Values = HashMap<String, Members>;

/// Adds node `i` (of `len`) to the nodes with `value`.
fn put(by_value: &mut Values, value: &str, i: usize, len: usize) {
    // Values are mostly lower case already: no allocation to look them up.
    let members = if value.bytes().any(|b| b.is_ascii_uppercase()) {
        by_value.entry(value.to_ascii_lowercase()).or_insert(Members::Few(Vec::new()))
    } else if let Some(m) = by_value.get_mut(value) {
        m
    } else {
        by_value.entry(value.to_string()).or_insert(Members::Few(Vec::new()))
    };
    members.add(i, len);
}

/// Which node attribute an index entry is about (every constraint key but
/// `node.ip`, which is matched as a CIDR by a scan).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Attr {
    Id,
    Hostname,
    Role,
    Os,
    Arch,
    NodeLabel(String),
    EngineLabel(String),
}

/// Set-based answers about the nodes of one [`ClusterView`]. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct NodeIndex {
    len: usize,
    by_id: HashMap<NodeId, usize>,
    ready: NodeSet,
    active: NodeSet,
    /// attribute -> lower-cased value -> nodes with it.
    values: HashMap<Attr, Values>,
    /// Distinct platforms with their nodes.
    platforms: Vec<(Platform, NodeSet)>,
    /// Constraints already evaluated during this call.
    memo: RefCell<HashMap<Constraint, NodeSet>>,
}

impl NodeIndex {
    /// Indexes every node of `view`.
    pub fn new(view: &ClusterView) -> Self {
        let len = view.nodes.len();
        let mut idx = NodeIndex {
            len,
            by_id: HashMap::with_capacity(len),
            ready: NodeSet::empty(len),
            active: NodeSet::empty(len),
            values: HashMap::new(),
            platforms: Vec::new(),
            memo: RefCell::new(HashMap::new()),
        };
        let mut fixed: [Values; 5] = Default::default();
        let mut node_labels: HashMap<String, Values> = HashMap::new();
        let mut engine_labels: HashMap<String, Values> = HashMap::new();
        for (i, info) in view.nodes.iter().enumerate() {
            let n = &info.node;
            idx.by_id.insert(n.id.clone(), i);
            if node_ready(n) {
                idx.ready.insert(i);
            }
            if node_active(n) {
                idx.active.insert(i);
            }
            put(&mut fixed[0], n.id.as_str(), i, len);
            put(&mut fixed[1], &n.description.hostname, i, len);
            put(&mut fixed[2], n.spec.role.as_str(), i, len);
            put(&mut fixed[3], &n.description.platform.os, i, len);
            put(&mut fixed[4], &normalize_arch(&n.description.platform.architecture), i, len);
            for (labels, by_key) in
                [(&n.spec.labels, &mut node_labels), (&n.description.engine_labels, &mut engine_labels)]
            {
                for (k, v) in labels {
                    let by_value = match by_key.get_mut(k.as_str()) {
                        Some(m) => m,
                        None => by_key.entry(k.clone()).or_default(),
                    };
                    put(by_value, v, i, len);
                }
            }
            let p = &n.description.platform;
            match idx.platforms.iter_mut().find(|(q, _)| q == p) {
                Some((_, set)) => set.insert(i),
                None => {
                    let mut set = NodeSet::empty(len);
                    set.insert(i);
                    idx.platforms.push((p.clone(), set));
                }
            }
        }
        let [id, hostname, role, os, arch] = fixed;
        idx.values.extend([
            (Attr::Id, id),
            (Attr::Hostname, hostname),
            (Attr::Role, role),
            (Attr::Os, os),
            (Attr::Arch, arch),
        ]);
        idx.values.extend(node_labels.into_iter().map(|(k, v)| (Attr::NodeLabel(k), v)));
        idx.values.extend(engine_labels.into_iter().map(|(k, v)| (Attr::EngineLabel(k), v)));
        idx
    }

    /// Number of nodes indexed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the view has no node.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Position of a node by id.
    pub fn position(&self, id: &NodeId) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// Nodes whose status is ready
    /// ([`node_ready`]).
    pub fn ready(&self) -> &NodeSet {
        &self.ready
    }

    /// Nodes whose availability is active
    /// ([`node_active`]).
    pub fn active(&self) -> &NodeSet {
        &self.active
    }

    /// Nodes that satisfy `c`, or `None` for keys the index does not cover
    /// (`node.ip`: the caller scans with [`Constraint::matches`]).
    pub fn matching(&self, c: &Constraint) -> Option<NodeSet> {
        let attr = match &c.key {
            ConstraintKey::NodeId => Attr::Id,
            ConstraintKey::NodeHostname => Attr::Hostname,
            ConstraintKey::NodeRole => Attr::Role,
            ConstraintKey::PlatformOs => Attr::Os,
            ConstraintKey::PlatformArch => Attr::Arch,
            ConstraintKey::NodeLabel(k) => Attr::NodeLabel(k.clone()),
            ConstraintKey::EngineLabel(k) => Attr::EngineLabel(k.clone()),
            ConstraintKey::NodeIp => return None,
        };
        let value = match c.key {
            ConstraintKey::PlatformArch => normalize_arch(&c.value),
            _ => c.value.to_ascii_lowercase(),
        };
        let equal = self
            .values
            .get(&attr)
            .and_then(|m| m.get(&value))
            .map_or_else(|| NodeSet::empty(self.len), |m| m.to_set(self.len));
        Some(match c.op {
            ConstraintOp::Eq => equal,
            // A node without the label holds `!=`, like Constraint::matches.
            ConstraintOp::Ne => equal.complement(),
        })
    }

    /// Nodes of `view` (the view this index was built from) that satisfy
    /// `c`, from the index or, for `node.ip`, by one scan; remembered for
    /// the rest of the call.
    pub fn constraint_set(&self, view: &ClusterView, c: &Constraint) -> NodeSet {
        if let Some(s) = self.memo.borrow().get(c) {
            return s.clone();
        }
        let set = self.matching(c).unwrap_or_else(|| {
            let mut s = NodeSet::empty(self.len);
            for (i, info) in view.nodes.iter().enumerate().take(self.len) {
                if c.matches(&info.node) {
                    s.insert(i);
                }
            }
            s
        });
        self.memo.borrow_mut().insert(c.clone(), set.clone());
        set
    }

    /// Nodes whose platform is one of `wanted` (empty = every node).
    pub fn platform_matching(&self, wanted: &[Platform]) -> NodeSet {
        if wanted.is_empty() {
            return NodeSet::full(self.len);
        }
        let mut out = NodeSet::empty(self.len);
        for (p, set) in &self.platforms {
            if platform_ok(p, wanted) {
                out.union(set);
            }
        }
        out
    }
}

/// Most node classes a [`RankIndex`] keeps (see
/// [`Scorer::rank_key`]); a view with more
/// (nodes of many different capacities, for the share-based scorers)
/// takes the per-group path.
pub const MAX_RANK_CLASSES: usize = 32;

/// A node in a class's order: best key first, ties by position.
type Slot = (Reverse<i128>, u32);

/// Target entries per block of a class's order (a block splits at twice
/// this).
const BLOCK: usize = 64;

/// A run of a class's order with the skyline of its nodes' free CPU and
/// memory (the pairs no other node of the block beats on both), so a
/// search skips a block none of whose nodes can fit the task: a node full
/// on CPU with memory to spare ranks high in a best-fit order but takes
/// nothing, and the largest CPU and the largest memory of a block are
/// often on different nodes.
/// Removing a node leaves its pair on the skyline (`stale`: the skyline
/// may promise more than the block holds, never less); a search that
/// scans a stale block in vain recomputes it.
#[derive(Clone, Debug, Default)]
struct Block {
    slots: Vec<Slot>,
    /// Free (CPU, memory) of each slot's node, in slot order: a search
    /// reads these in sequence instead of looking every node up.
    free: Vec<(u64, u64)>,
    skyline: Vec<(u64, u64)>,
    stale: bool,
}

impl Block {
    /// True when some node of the block has `cpu` and `mem` free.
    fn can_fit(&self, cpu: u64, mem: u64) -> bool {
        self.skyline.iter().any(|&(c, m)| c >= cpu && m >= mem)
    }

    /// Adds a node's free pair to the skyline.
    fn raise(&mut self, p: (u64, u64)) {
        if self.skyline.iter().any(|&(c, m)| c >= p.0 && m >= p.1) {
            return;
        }
        self.skyline.retain(|&(c, m)| !(p.0 >= c && p.1 >= m));
        self.skyline.push(p);
    }
}

/// The nodes of one class in key order, as a list of sorted blocks.
#[derive(Clone, Debug)]
struct RankClass {
    class: (u64, u64),
    blocks: Vec<Block>,
}

impl RankClass {
    /// The block that holds (or would hold) `slot`: the first whose last
    /// slot is not before it, else the last block.
    fn block_of(&self, slot: &Slot) -> usize {
        let b = self.blocks.partition_point(|b| b.slots.last().is_some_and(|l| l < slot));
        b.min(self.blocks.len().saturating_sub(1))
    }

    fn refresh(&mut self, b: usize) {
        let block = &mut self.blocks[b];
        block.stale = false;
        let mut points: Vec<(u64, u64)> = block.free.clone();
        // CPU descending, then memory descending: a point is on the
        // skyline when its memory beats every point before it.
        points.sort_unstable_by(|a, b| b.cmp(a));
        block.skyline.clear();
        let mut best_mem = None;
        for p in points {
            if best_mem.is_none_or(|m| p.1 > m) {
                best_mem = Some(p.1);
                block.skyline.push(p);
            }
        }
    }

    fn remove(&mut self, slot: &Slot) {
        if self.blocks.is_empty() {
            return;
        }
        let b = self.block_of(slot);
        if let Ok(k) = self.blocks[b].slots.binary_search(slot) {
            self.blocks[b].slots.remove(k);
            self.blocks[b].free.remove(k);
            if self.blocks[b].slots.is_empty() {
                self.blocks.remove(b);
            } else {
                self.blocks[b].stale = true;
            }
        }
    }

    fn insert(&mut self, slot: Slot, free: (u64, u64)) {
        if self.blocks.is_empty() {
            self.blocks.push(Block::default());
        }
        let b = self.block_of(&slot);
        let block = &mut self.blocks[b];
        let k = block.slots.binary_search(&slot).unwrap_or_else(|k| k);
        block.slots.insert(k, slot);
        block.free.insert(k, free);
        block.raise(free);
        if block.slots.len() >= 2 * BLOCK {
            let tail = block.slots.split_off(BLOCK);
            let tail_free = block.free.split_off(BLOCK);
            self.blocks.insert(b + 1, Block { slots: tail, free: tail_free, skyline: Vec::new(), stale: false });
            self.refresh(b);
            self.refresh(b + 1);
        }
    }
}

/// Every node of a view ordered by a scorer's [`RankKey`]: "the best node
/// that passes these filters" is, per class, the first fitting node from
/// the scorer's bound on, then the best of those few by score. Each class
/// is a sorted list of blocks of about 64 nodes that know the skyline of
/// their nodes' free CPU and memory, so the search skips whole blocks of
/// nodes too full for the task. Kept up to date as
/// tasks are placed ([`RankIndex::update`]). See
/// [`Scorer::rank_key`] for the contract that
/// makes this the node a scan would pick.
#[derive(Clone, Debug)]
pub struct RankIndex {
    classes: Vec<RankClass>,
    /// Per node: its class and key.
    at: Vec<(u32, i128)>,
    /// Per node: free nano-CPUs and memory bytes.
    free: Vec<(u64, u64)>,
    /// Nodes taken out of the order for now ([`RankIndex::hide`]).
    hidden: Vec<bool>,
}

fn free_of(node: &NodeInfo) -> (u64, u64) {
    (node.available.nano_cpus, node.available.memory_bytes)
}

impl RankIndex {
    /// Orders `nodes` by `scorer`'s keys; `None` when the scorer has none
    /// for some node or the nodes fall in more than [`MAX_RANK_CLASSES`]
    /// classes.
    pub fn new(nodes: &[NodeInfo], scorer: &dyn Scorer) -> Option<Self> {
        let mut classes: Vec<(u64, u64)> = Vec::new();
        let mut slots: Vec<Vec<Slot>> = Vec::new();
        let mut at = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let RankKey { class, key } = scorer.rank_key(n)?;
            let c = match classes.iter().position(|c| *c == class) {
                Some(c) => c,
                None if classes.len() < MAX_RANK_CLASSES => {
                    classes.push(class);
                    slots.push(Vec::new());
                    classes.len() - 1
                }
                None => return None,
            };
            slots[c].push((Reverse(key), i as u32));
            at.push((c as u32, key));
        }
        let free: Vec<(u64, u64)> = nodes.iter().map(free_of).collect();
        let classes = classes
            .into_iter()
            .zip(slots)
            .map(|(class, mut slots)| {
                slots.sort_unstable();
                let mut rc = RankClass {
                    class,
                    blocks: slots
                        .chunks(BLOCK)
                        .map(|c| Block {
                            slots: c.to_vec(),
                            free: c.iter().map(|(_, i)| free[*i as usize]).collect(),
                            skyline: Vec::new(),
                            stale: false,
                        })
                        .collect(),
                };
                for b in 0..rc.blocks.len() {
                    rc.refresh(b);
                }
                rc
            })
            .collect();
        let hidden = vec![false; nodes.len()];
        Some(RankIndex { classes, at, free, hidden })
    }

    /// Re-keys node `i` (`node` as it now stands). False when the scorer
    /// no longer gives it a key in its class (a broken contract: the
    /// caller drops the index).
    pub fn update(&mut self, i: usize, node: &NodeInfo, scorer: &dyn Scorer) -> bool {
        let Some(&(c, old)) = self.at.get(i) else { return false };
        let Some(RankKey { class, key }) = scorer.rank_key(node) else { return false };
        let rc = &mut self.classes[c as usize];
        if class != rc.class {
            return false;
        }
        if !self.hidden[i] {
            rc.remove(&(Reverse(old), i as u32));
        }
        self.free[i] = free_of(node);
        self.at[i].1 = key;
        if !self.hidden[i] {
            rc.insert((Reverse(key), i as u32), self.free[i]);
        }
        true
    }

    /// Takes node `i` out of the order until [`RankIndex::show`]: a group
    /// hides the nodes its service runs on (ranked by its own local heap)
    /// so that searches do not step over them. Updates while hidden are
    /// kept.
    pub fn hide(&mut self, i: usize) {
        if let Some(&(c, key)) = self.at.get(i) {
            if !self.hidden[i] {
                self.classes[c as usize].remove(&(Reverse(key), i as u32));
                self.hidden[i] = true;
            }
        }
    }

    /// Puts a hidden node back, with its current key.
    pub fn show(&mut self, i: usize) {
        if let Some(&(c, key)) = self.at.get(i) {
            if self.hidden[i] {
                self.hidden[i] = false;
                self.classes[c as usize].insert((Reverse(key), i as u32), self.free[i]);
            }
        }
    }

    /// The best node of `candidates` for `req` that `fits`: per class the
    /// first node from `scorer.rank_bound` on that is a candidate and
    /// fits, then the best of those by `score(node, neutral)` (ties to the
    /// lowest position). Nodes that do not fit are removed from
    /// `candidates` (for a group's filters: a node that fails once fails
    /// the rest of the group). Returns the score and the node.
    pub fn best(
        &mut self,
        nodes: &[NodeInfo],
        scorer: &dyn Scorer,
        req: &TaskRequest,
        neutral: &TaskRequest,
        candidates: &mut NodeSet,
        fits: &mut dyn FnMut(&NodeInfo) -> bool,
    ) -> Option<(f64, usize)> {
        let (cpu, mem) = (req.reservations.nano_cpus, req.reservations.memory_bytes);
        let mut best: Option<(f64, usize)> = None;
        for rc in &mut self.classes {
            let start: Slot = (Reverse(scorer.rank_bound(rc.class, req)), 0);
            let mut found = None;
            for b in rc.block_of(&start)..rc.blocks.len() {
                if !rc.blocks[b].can_fit(cpu, mem) {
                    continue;
                }
                let block = &rc.blocks[b];
                let from = block.slots.partition_point(|s| *s < start);
                let mut room = false;
                found = block.slots[from..].iter().zip(&block.free[from..]).find_map(|(&(_, i), &(c, m))| {
                    if c < cpu || m < mem {
                        return None; // too full for this task, maybe not for the next
                    }
                    let i = i as usize;
                    room = true;
                    if !candidates.contains(i) {
                        return None;
                    }
                    if !fits(&nodes[i]) {
                        candidates.remove(i);
                        return None;
                    }
                    Some(i)
                });
                if found.is_some() {
                    break;
                }
                if !room && from == 0 && rc.blocks[b].stale {
                    // The skyline promised room the block no longer has.
                    rc.refresh(b);
                }
            }
            if let Some(i) = found {
                let s = scorer.score(&nodes[i], neutral);
                let s = if s.is_nan() { f64::NEG_INFINITY } else { s };
                if best.is_none_or(|(bs, bi)| s > bs || (s == bs && i < bi)) {
                    best = Some((s, i));
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use swarm_core::model::{Node, Resources};
    use swarm_core::scheduler::NodeInfo;

    fn view() -> ClusterView {
        let mut nodes = Vec::new();
        for i in 0..130 {
            let mut n = Node::ready(format!("n{i:03}"), format!("h{i}"), Resources::default());
            if i % 2 == 0 {
                n.spec.labels.insert("zone".into(), if i % 4 == 0 { "EU".into() } else { "us".into() });
            }
            if i == 5 {
                n.description.platform = Platform::new("linux", "aarch64");
            }
            nodes.push(NodeInfo::new(Arc::new(n)));
        }
        ClusterView { nodes }
    }

    #[test]
    fn set_operations() {
        let mut a = NodeSet::full(130);
        assert_eq!(a.count(), 130);
        assert_eq!(a.complement().count(), 0);
        a.remove(0);
        a.remove(129);
        let mut b = NodeSet::empty(130);
        b.insert(0);
        b.insert(64);
        assert_eq!(a.count_minus(&b), 127);
        a.intersect(&b);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![64]);
        b.union(&NodeSet::full(130));
        assert_eq!(b.count(), 130);
        b.insert(500); // out of range: ignored
        assert!(!b.contains(500));
    }

    #[test]
    fn index_agrees_with_constraint_matches() {
        let v = view();
        let idx = NodeIndex::new(&v);
        for c in [
            "node.labels.zone==eu",
            "node.labels.zone!=eu",
            "node.labels.rack==r1",
            "node.labels.rack!=r1",
            "node.platform.arch==arm64",
            "node.platform.arch!=x86_64",
            "node.hostname==H7",
            "node.id!=n003",
            "node.role==worker",
            "node.platform.os==windows",
        ] {
            let c: Constraint = c.parse().unwrap();
            let set = idx.matching(&c).unwrap();
            for (i, info) in v.nodes.iter().enumerate() {
                assert_eq!(set.contains(i), c.matches(&info.node), "{c} on node {i}");
            }
        }
        let ip: Constraint = "node.ip==10.0.0.0/8".parse().unwrap();
        assert!(idx.matching(&ip).is_none());
        assert_eq!(idx.constraint_set(&v, &ip).count(), 0); // no node has an address
        let ne: Constraint = "node.ip!=10.0.0.0/8".parse().unwrap();
        assert_eq!(idx.constraint_set(&v, &ne).count(), 130);
        let arm = idx.platform_matching(&[Platform::new("", "arm64")]);
        assert_eq!(arm.iter().collect::<Vec<_>>(), vec![5]);
        assert_eq!(idx.platform_matching(&[]).count(), 130);
        assert_eq!(idx.position(&"n010".into()), Some(10));
        assert_eq!(idx.ready().count(), 130);
    }
}
