//! A linearizability checker for histories of a grow-only set, as the
//! failure tests record them: concurrent clients add unique elements and
//! read the whole set, each operation with its invocation and return time
//! (or no return time when its outcome is unknown: a write that may or may
//! not have been committed). [`linearizable`] is Wing and Gong's search
//! with Lowe's memoization (as in Porcupine and Knossos): is there one
//! total order of the operations, consistent with real time, in which
//! every read returns exactly the elements added before it?
//!
//! It catches a lost acknowledged write, a stale read, a read going back
//! in time, and an element that appears without ever being added (a write
//! refused for sure is left out of the history, so seeing it fails the
//! check). Elements are numbered `0..MAX_ELEMENTS`.
//!
//! ```
//! use swarm_core::harness::linearizability::{Op, OpKind, linearizable};
//! let add = |bit, call, ret| Op { call, ret, kind: OpKind::Add(bit) };
//! let read = |seen, call, ret| Op { call, ret: Some(ret), kind: OpKind::Read(seen) };
//! // A read after an acknowledged add must see it.
//! assert!(linearizable(&[add(0, 0, Some(1)), read(0b1, 5, 6)]));
//! assert!(!linearizable(&[add(0, 0, Some(1)), read(0b0, 5, 6)]));
//! // A write of unknown outcome may show up late, or never.
//! assert!(linearizable(&[add(0, 0, None), read(0b0, 5, 6), read(0b1, 7, 8)]));
//! ```

use std::collections::HashSet;

/// How many distinct elements a history may add (the state is a `u128`).
pub const MAX_ELEMENTS: u32 = 128;

/// One operation of the history. `ret` is `None` when the outcome is unknown
/// (the operation may take effect at any time after its call, or never).
#[derive(Clone, Debug)]
pub struct Op {
    /// When the operation was invoked (any monotonic unit).
    pub call: u64,
    /// When it returned, or `None` if its outcome is unknown.
    pub ret: Option<u64>,
    /// What it did.
    pub kind: OpKind,
}

/// What an operation did to the grow-only set.
#[derive(Clone, Debug)]
pub enum OpKind {
    /// Adds element `bit` (below [`MAX_ELEMENTS`]) to the set.
    Add(u32),
    /// Read the whole set: bit `i` set when element `i` was seen.
    Read(u128),
}

/// The grow-only set model: the state is a bit set of elements. `None`
/// when the model refuses the operation (a read that does not match, an
/// element beyond [`MAX_ELEMENTS`]).
pub fn step(state: u128, kind: &OpKind) -> Option<u128> {
    match kind {
        OpKind::Add(bit) => 1u128.checked_shl(*bit).map(|b| state | b),
        OpKind::Read(seen) => (*seen == state).then_some(state),
    }
}

/// Wing & Gong's search with Lowe's memoization: is there a total order of
/// the operations, consistent with real time, that the model accepts?
pub fn linearizable(ops: &[Op]) -> bool {
    // Events: (time, is_return, op). Calls sort before returns at equal times.
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, false, i));
        events.push((op.ret.unwrap_or(u64::MAX), true, i));
    }
    events.sort();
    let n = events.len();
    // Doubly linked list over event slots 1..=n, 0 is the head sentinel.
    let mut next: Vec<usize> = (1..=n + 1).collect();
    let mut prev: Vec<usize> = (0..=n).map(|i| i.saturating_sub(1)).collect();
    let end = n + 1;
    let mut ret_slot = vec![0usize; ops.len()];
    let mut call_slot = vec![0usize; ops.len()];
    for (i, e) in events.iter().enumerate() {
        if e.1 {
            ret_slot[e.2] = i + 1;
        } else {
            call_slot[e.2] = i + 1;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, s: usize| {
        let (p, nx) = (prev[s], next[s]);
        next[p] = nx;
        if nx != end {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, s: usize| {
        let (p, nx) = (prev[s], next[s]);
        next[p] = s;
        if nx != end {
            prev[nx] = s;
        }
    };
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, u128)> = HashSet::new();
    let mut stack: Vec<(usize, u128)> = Vec::new();
    let mut state: u128 = 0;
    let mut entry = next[0];
    while next[0] != end {
        if entry == end {
            // Every remaining call was tried: backtrack.
            let Some((op, st)) = stack.pop() else { return false };
            state = st;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_slot[op]);
            relink(&mut next, &mut prev, call_slot[op]);
            entry = next[call_slot[op]];
            continue;
        }
        let (_, is_ret, op) = events[entry - 1];
        if !is_ret {
            if let Some(new_state) = step(state, &ops[op].kind) {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), new_state)) {
                    stack.push((op, state));
                    state = new_state;
                    linearized = lin;
                    unlink(&mut next, &mut prev, call_slot[op]);
                    unlink(&mut next, &mut prev, ret_slot[op]);
                    entry = next[0];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // A return whose call is not linearized yet: backtrack.
            let Some((op, st)) = stack.pop() else { return false };
            state = st;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_slot[op]);
            relink(&mut next, &mut prev, call_slot[op]);
            entry = next[call_slot[op]];
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checker_accepts_and_rejects_known_histories() {
        let add = |b, call, ret| Op { call, ret, kind: OpKind::Add(b) };
        let read = |s, call, ret| Op { call, ret: Some(ret), kind: OpKind::Read(s) };
        // Concurrent add and read: both outcomes are fine.
        assert!(linearizable(&[add(0, 0, Some(10)), read(0b1, 5, 6)]));
        assert!(linearizable(&[add(0, 0, Some(10)), read(0b0, 5, 6)]));
        // A read after an acknowledged add must see it (stale read).
        assert!(!linearizable(&[add(0, 0, Some(1)), read(0b0, 5, 6)]));
        // Reads may not go back in time.
        assert!(!linearizable(&[add(0, 0, Some(100)), read(0b1, 5, 6), read(0b0, 7, 8)]));
        // An unknown add may show up late, or never.
        assert!(linearizable(&[add(0, 0, None), read(0b0, 5, 6), read(0b1, 7, 8)]));
        assert!(linearizable(&[add(0, 0, None), read(0b0, 5, 6)]));
        // But once seen it cannot disappear.
        assert!(!linearizable(&[add(0, 0, None), read(0b1, 5, 6), read(0b0, 7, 8)]));
        // Real-time order between adds: y acked before x called, a read sees x
        // but not y.
        assert!(!linearizable(&[add(0, 0, Some(1)), add(1, 2, Some(3)), read(0b10, 2, 9)]));
        // An element never added cannot be read.
        assert!(!linearizable(&[read(0b100, 0, 1)]));
    }

    #[test]
    fn elements_beyond_the_model_are_refused() {
        assert!(!linearizable(&[Op { call: 0, ret: Some(1), kind: OpKind::Add(MAX_ELEMENTS) }]));
        assert!(linearizable(&[Op { call: 0, ret: Some(1), kind: OpKind::Add(MAX_ELEMENTS - 1) }]));
    }
}
