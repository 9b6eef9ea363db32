//! How managers reach each other: the [`Transport`] trait and an in-process
//! implementation with fault injection ([`InProcNetwork`]).
//!
//! A transport carries opaque frames (protobuf-encoded raft messages) from
//! one manager to another, best effort: raft tolerates loss, duplication
//! and reordering, and retries on its own. Sending must never block the
//! manager's driver thread. Received frames are handed to the destination
//! manager's [`Inbox`].
//!
//! [`InProcNetwork`] connects managers of one process and can drop, delay,
//! duplicate and reorder frames and partition managers, all decided by a
//! seeded random generator so a failing run can be replayed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Sends frames to other managers. Implementations must not block.
pub trait Transport: Send + Sync + 'static {
    /// Sends `frame` to manager `to`, best effort.
    fn send(&self, to: u64, frame: Vec<u8>);

    /// The manager whose frames arrive at `inbox` stopped: a transport that
    /// keeps a directory of managers (as [`InProcNetwork`] does) forgets it,
    /// unless another inbox was registered in its place since (a restart).
    /// The driver calls it once, when it stops. The default does nothing
    /// (the TCP transport keeps no directory: peers simply fail to connect).
    fn leave(&self, inbox: &Inbox) {
        let _ = inbox;
    }
}

/// Where a transport delivers frames for one manager. Cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    pub(crate) deliver: Arc<dyn Fn(Option<u64>, Vec<u8>) + Send + Sync>,
}

impl Inbox {
    /// An inbox that hands each frame to `deliver` (which must not block);
    /// [`crate::RaftStore::inbox`] is the one a manager uses.
    pub fn new(deliver: impl Fn(Vec<u8>) + Send + Sync + 'static) -> Inbox {
        Inbox { deliver: Arc::new(move |_, frame| deliver(frame)) }
    }

    /// Hands a received frame to the manager (never blocks).
    pub fn deliver(&self, frame: Vec<u8>) {
        (self.deliver)(None, frame)
    }

    /// Hands a frame received on a connection authenticated as manager
    /// `sender` (its preamble, checked against its certificate under TLS):
    /// the manager refuses the message if it claims another sender, so an
    /// authenticated manager cannot speak in another's name.
    pub fn deliver_from(&self, sender: u64, frame: Vec<u8>) {
        (self.deliver)(Some(sender), frame)
    }

    /// True when both are clones of one inbox (the same manager's).
    pub fn same_as(&self, other: &Inbox) -> bool {
        Arc::ptr_eq(&self.deliver, &other.deliver)
    }
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inbox")
    }
}

/// Fault settings of an [`InProcNetwork`]. Probabilities are in `[0, 1]`.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Probability that a frame is lost.
    pub drop: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Each frame is delayed by a uniform time in `[0, max_delay]`; with a
    /// non-zero delay frames overtake each other (reordering).
    pub max_delay: Duration,
}

/// A small seeded generator (splitmix64): reproducible fault decisions.
#[derive(Clone, Debug)]
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SeededRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An integer in `[0, n)` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

struct Delayed {
    at: Instant,
    seq: u64,
    to: u64,
    frame: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Default)]
struct NetState {
    inboxes: HashMap<u64, Inbox>,
    /// Directed links that are cut: (from, to).
    cut: HashSet<(u64, u64)>,
    faults: Faults,
    rng: Option<SeededRng>,
    queue: BinaryHeap<Reverse<Delayed>>,
    seq: u64,
    closed: bool,
    sent: u64,
    dropped: u64,
}

/// An in-process network between managers, with seeded fault injection.
/// Cheap to clone. A background thread delivers delayed frames; it stops
/// when the last clone is dropped or on [`InProcNetwork::close`].
#[derive(Clone)]
pub struct InProcNetwork {
    inner: Arc<(Mutex<NetState>, Condvar)>,
}

impl InProcNetwork {
    /// A network without faults; `seed` drives every later fault decision.
    pub fn new(seed: u64) -> Self {
        let inner =
            Arc::new((Mutex::new(NetState { rng: Some(SeededRng::new(seed)), ..Default::default() }), Condvar::new()));
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("inproc-net".into())
            .spawn(move || delay_loop(weak))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the in-process network's delay thread"));
        InProcNetwork { inner }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        // Every critical section leaves NetState consistent.
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers manager `id`'s inbox (replacing an older one: a restart).
    pub fn register(&self, id: u64, inbox: Inbox) {
        self.lock().inboxes.insert(id, inbox);
    }

    /// Removes manager `id` (frames to it are lost, as if it were down).
    /// A [`crate::RaftStore`] does it on its own when it stops (shutdown,
    /// or drop of its last handle); call it to cut a manager off first.
    pub fn unregister(&self, id: u64) {
        self.lock().inboxes.remove(&id);
    }

    /// The managers registered now, in id order.
    pub fn registered(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.lock().inboxes.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The transport manager `id` sends with.
    pub fn transport(&self, id: u64) -> Arc<dyn Transport> {
        Arc::new(InProcTransport { from: id, net: self.clone() })
    }

    /// Sets the fault settings.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        let mut s = self.lock();
        for &x in a {
            for &y in b {
                s.cut.insert((x, y));
                s.cut.insert((y, x));
            }
        }
    }

    /// Cuts manager `id` off from everyone.
    pub fn isolate(&self, id: u64, all: &[u64]) {
        let others: Vec<u64> = all.iter().copied().filter(|&x| x != id).collect();
        self.partition(&[id], &others);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Frames sent and frames dropped so far.
    pub fn counters(&self) -> (u64, u64) {
        let s = self.lock();
        (s.sent, s.dropped)
    }

    /// Stops delivering delayed frames and drops them.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.queue.clear();
        self.inner.1.notify_all();
    }

    fn send(&self, from: u64, to: u64, frame: Vec<u8>) {
        let mut s = self.lock();
        s.sent += 1;
        if s.closed || s.cut.contains(&(from, to)) {
            s.dropped += 1;
            return;
        }
        let faults = s.faults.clone();
        let Some(mut rng) = s.rng.take() else { return };
        let lost = faults.drop > 0.0 && rng.next_f64() < faults.drop;
        let copies = if faults.duplicate > 0.0 && rng.next_f64() < faults.duplicate { 2 } else { 1 };
        let mut delays = Vec::new();
        for _ in 0..copies {
            let nanos = faults.max_delay.as_nanos() as u64;
            delays.push(if nanos == 0 { Duration::ZERO } else { Duration::from_nanos(rng.below(nanos + 1)) });
        }
        s.rng = Some(rng);
        if lost {
            s.dropped += 1;
            return;
        }
        let now = Instant::now();
        for d in delays {
            if d.is_zero() {
                if let Some(inbox) = s.inboxes.get(&to) {
                    inbox.deliver(frame.clone());
                }
            } else {
                s.seq += 1;
                let seq = s.seq;
                s.queue.push(Reverse(Delayed { at: now + d, seq, to, frame: frame.clone() }));
                self.inner.1.notify_all();
            }
        }
    }
}

fn delay_loop(weak: std::sync::Weak<(Mutex<NetState>, Condvar)>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let (lock, cvar) = &*inner;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        if s.closed {
            return;
        }
        let now = Instant::now();
        while s.queue.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(d)) = s.queue.pop()
                && !s.closed
                && let Some(inbox) = s.inboxes.get(&d.to)
            {
                inbox.deliver(d.frame);
            }
        }
        let wait =
            s.queue.peek().map(|Reverse(d)| d.at.saturating_duration_since(now)).unwrap_or(Duration::from_millis(50));
        let _unused = cvar.wait_timeout(s, wait.min(Duration::from_millis(50)));
    }
}

struct InProcTransport {
    from: u64,
    net: InProcNetwork,
}

impl Transport for InProcTransport {
    fn send(&self, to: u64, frame: Vec<u8>) {
        self.net.send(self.from, to, frame);
    }

    fn leave(&self, inbox: &Inbox) {
        let mut s = self.net.lock();
        if s.inboxes.get(&self.from).is_some_and(|registered| registered.same_as(inbox)) {
            s.inboxes.remove(&self.from);
            tracing::debug!(id = self.from, "stopped manager left the in-process network");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn counting_inbox() -> (Inbox, Arc<AtomicU64>) {
        let n = Arc::new(AtomicU64::new(0));
        let c = n.clone();
        (
            Inbox {
                deliver: Arc::new(move |_, _| {
                    c.fetch_add(1, Ordering::SeqCst);
                }),
            },
            n,
        )
    }

    fn run(seed: u64) -> (u64, u64, u64) {
        let net = InProcNetwork::new(seed);
        let (inbox, received) = counting_inbox();
        net.register(2, inbox);
        net.set_faults(Faults { drop: 0.2, duplicate: 0.3, max_delay: Duration::ZERO });
        let t = net.transport(1);
        for i in 0..1000u32 {
            t.send(2, i.to_be_bytes().to_vec());
        }
        let (sent, dropped) = net.counters();
        (sent, dropped, received.load(Ordering::SeqCst))
    }

    fn faults_are_reproducible(seed: u64) {
        let a = run(seed);
        assert_eq!(a, run(seed), "seed {seed:#x}");
        assert_ne!(a, run(seed.wrapping_add(1)), "seed {seed:#x}");
        let (sent, dropped, received) = a;
        assert_eq!(sent, 1000);
        // 20% of 1,000: 200 +- 4 standard deviations (12.6).
        assert!((150..250).contains(&dropped), "seed {seed:#x}: about 20% dropped: {dropped}");
        // Delivered = kept frames plus duplicates (about 30% of them).
        assert!(received > sent - dropped, "seed {seed:#x}: some frames were duplicated: {received}");
    }

    #[test]
    fn faults_are_reproducible_from_the_seed() {
        faults_are_reproducible(42);
    }

    #[test]
    fn faults_are_reproducible_from_a_fresh_seed() {
        faults_are_reproducible(swarm_core::harness::test_seed("faults_are_reproducible_from_a_fresh_seed"));
    }

    #[test]
    fn leaving_removes_only_the_inbox_that_is_registered() {
        let net = InProcNetwork::new(3);
        let (old, _) = counting_inbox();
        let (new, got) = counting_inbox();
        net.register(1, old.clone());
        net.register(2, counting_inbox().0);
        // Manager 1 restarted: its new inbox replaced the old one before the
        // old driver got round to leaving.
        net.register(1, new.clone());
        net.transport(1).leave(&old);
        assert_eq!(net.registered(), vec![1, 2], "a stale leave keeps the restarted manager");
        net.transport(2).send(1, vec![1]);
        assert_eq!(got.load(Ordering::SeqCst), 1);
        net.transport(1).leave(&new.clone());
        assert_eq!(net.registered(), vec![2], "a clone of the registered inbox leaves");
    }

    #[test]
    fn partitions_cut_links_both_ways_until_healed() {
        let net = InProcNetwork::new(1);
        let (in1, got1) = counting_inbox();
        let (in2, got2) = counting_inbox();
        net.register(1, in1);
        net.register(2, in2);
        net.partition(&[1], &[2]);
        net.transport(1).send(2, vec![1]);
        net.transport(2).send(1, vec![1]);
        assert_eq!((got1.load(Ordering::SeqCst), got2.load(Ordering::SeqCst)), (0, 0));
        net.heal();
        net.transport(1).send(2, vec![1]);
        net.transport(2).send(1, vec![1]);
        assert_eq!((got1.load(Ordering::SeqCst), got2.load(Ordering::SeqCst)), (1, 1));
    }

    #[test]
    fn delayed_frames_arrive_later_and_can_overtake() {
        delayed_frames_overtake(7);
    }

    #[test]
    fn delayed_frames_overtake_with_a_fresh_seed() {
        delayed_frames_overtake(swarm_core::harness::test_seed("delayed_frames_overtake_with_a_fresh_seed"));
    }

    fn delayed_frames_overtake(seed: u64) {
        let net = InProcNetwork::new(seed);
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = order.clone();
        net.register(2, Inbox::new(move |f: Vec<u8>| o.lock().unwrap().push(f[0])));
        net.set_faults(Faults { max_delay: Duration::from_millis(20), ..Default::default() });
        let t = net.transport(1);
        for i in 0..50u8 {
            t.send(2, vec![i]);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while order.lock().unwrap().len() < 50 {
            assert!(Instant::now() < deadline, "delayed frames were not delivered");
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = order.lock().unwrap().clone();
        // 50 delays drawn from 20,000,001 values in order by chance: never.
        assert!(got.windows(2).any(|w| w[0] > w[1]), "seed {seed:#x}: some frames were reordered: {got:?}");
    }
}
