//! The managers' keys of encrypted overlay networks: a leader-only
//! controller that gives every encrypted overlay network a key and rotates
//! it.
//!
//! The keys live in the store ([`Network::keys`], oldest first; the raft log
//! is encrypted at rest) and reach the nodes in their overlay views
//! (`swarm_core::overlay::NetworkView::keys`), so only nodes with tasks on
//! the network (and every node for an encrypted ingress network) get them,
//! over their mutual-TLS session. The node's plane
//! ([`crate::overlay::Overlay`]) installs them in its tunnel
//! ([`crate::tunnel`]): sealing under the key marked `current`, opening
//! under it or the other one.
//!
//! Per network, from [`NetKeysConfig`] (`rotation` 12 h, `grace` 1 min):
//!
//! 1. A network without keys gets key 1, current at once (no node can hold
//!    another key of it yet).
//! 2. `rotation` after the newest key was made, a new key (next id, a fresh
//!    secret from the OS CSPRNG) is added as *accepted* only: every node
//!    opens records under it but still seals under the current key. The
//!    key before the current one (if any) is dropped: no node has sealed
//!    under it since the last rotation's second step.
//! 3. `grace` later, the new key becomes current: nodes seal under it and
//!    still accept the old one, until the next rotation drops it.
//!
//! So a node never receives a record under a key it does not hold, as long
//! as every node got the view of step 2 before step 3 (the grace period
//! covers the dispatcher's delivery; a node disconnected longer keeps its
//! last keys and cannot talk to rotated nodes until it reconnects, as in
//! Swarm). The store holds at most two keys per network.
//!
//! Deterministic under tokio's paused clock: every decision is a function
//! of the store and the reconcile's `now`; the controller asks to be woken
//! at the next step ([`Plan::wake_at`]). A new leader continues from the
//! keys' `created` timestamps (a clock behind the old leader's delays the
//! next step by the difference). Networks that are not encrypted overlay
//! networks have their keys removed.
//!
//! ```no_run
//! # fn f(store: std::sync::Arc<dyn swarm_core::store::Store>, scheduler: Box<dyn swarm_core::scheduler::Scheduler>) -> Result<(), Box<dyn std::error::Error>> {
//! use swarm_core::manager::Manager;
//! use swarm_net::netkeys::{NetKeysConfig, NetworkKeys};
//! let keys = NetworkKeys::new(NetKeysConfig::default())?;
//! let manager = Manager::builder(store).scheduler(scheduler).controller(move || keys.clone()).start()?;
//! # drop(manager); Ok(()) }
//! ```

use ring::rand::{SecureRandom, SystemRandom};
use std::time::Duration;
use swarm_core::controller::{Context, Controller, Interest, Plan};
use swarm_core::id::NetworkId;
use swarm_core::model::{Network, NetworkKey, Object, SecretBytes};
use swarm_core::state::{Change, Op, State};
use swarm_core::time::Timestamp;

/// Bytes of a network key's secret (a ChaCha20-Poly1305 master key).
pub const SECRET_LEN: usize = 32;

/// Settings of the key controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetKeysConfig {
    /// A new key this long after the newest one was made (default 12 h, as
    /// Swarm).
    pub rotation: Duration,
    /// A new key is only accepted this long before it becomes current
    /// (default 1 min): the time every node has to receive it.
    pub grace: Duration,
    /// Try again this soon when the OS random generator failed (default
    /// 1 s).
    pub retry: Duration,
}

impl Default for NetKeysConfig {
    fn default() -> Self {
        NetKeysConfig {
            rotation: Duration::from_secs(12 * 3600),
            grace: Duration::from_secs(60),
            retry: Duration::from_secs(1),
        }
    }
}

/// Why the key controller cannot run or made no key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetKeysError {
    /// A setting is unusable.
    #[error("network keys: bad setting {field}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The OS random generator failed.
    #[error("network keys: the system random generator failed")]
    Random,
}

impl NetKeysConfig {
    /// Checks the settings: `grace` and `retry` above zero, `grace` shorter
    /// than `rotation`.
    pub fn validate(&self) -> Result<(), NetKeysError> {
        let bad = |field, reason: String| Err(NetKeysError::Config { field, reason });
        if self.grace.is_zero() {
            return bad("grace", "must be above zero (nodes need time to accept a new key)".into());
        }
        if self.retry.is_zero() {
            return bad("retry", "must be above zero".into());
        }
        if self.rotation <= self.grace {
            return bad(
                "rotation",
                format!("{:?} must be longer than the grace period {:?}", self.rotation, self.grace),
            );
        }
        Ok(())
    }
}

/// True for the networks that get keys: overlay networks (the ingress
/// network included) with the `encrypted` option.
pub fn wants_keys(network: &Network) -> bool {
    network.is_overlay() && network.spec.is_encrypted()
}

/// A fresh secret from the OS CSPRNG.
pub fn generate_secret() -> Result<SecretBytes, NetKeysError> {
    let mut secret = vec![0u8; SECRET_LEN];
    SystemRandom::new().fill(&mut secret).map_err(|_| NetKeysError::Random)?;
    Ok(SecretBytes(secret))
}

/// What to do about one network's keys at `now`.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyStep {
    /// The keys to write, if they change.
    pub keys: Option<Vec<NetworkKey>>,
    /// When the next step is due (none when the network needs no keys).
    pub wake_at: Option<Timestamp>,
}

/// The key schedule of `network` at `now` (see the [module docs](self)):
/// pure but for `secret`, called when a key is made.
pub fn step(
    network: &Network,
    now: Timestamp,
    config: &NetKeysConfig,
    secret: &mut dyn FnMut() -> Result<SecretBytes, NetKeysError>,
) -> Result<KeyStep, NetKeysError> {
    if !wants_keys(network) {
        let keys = (!network.keys.is_empty()).then(Vec::new);
        return Ok(KeyStep { keys, wake_at: None });
    }
    let keys = &network.keys;
    let Some(newest) = keys.last() else {
        let first = NetworkKey { id: 1, secret: secret()?, created: now, current: true };
        return Ok(KeyStep { keys: Some(vec![first]), wake_at: Some(now.plus(config.rotation)) });
    };
    // The key nodes seal under: the newest one marked current.
    let current = keys.iter().rev().find(|k| k.current);
    let well_formed = keys.len() <= 2 && keys.iter().filter(|k| k.current).count() == 1;
    if newest.current {
        let due = newest.created.plus(config.rotation);
        if now >= due {
            // Step 1: the next key, accepted only; the one before the
            // current goes.
            let id = match newest.id.wrapping_add(1) {
                0 => 1,
                id => id,
            };
            let next = NetworkKey { id, secret: secret()?, created: now, current: false };
            return Ok(KeyStep { keys: Some(vec![newest.clone(), next]), wake_at: Some(now.plus(config.grace)) });
        }
        let keys = (!well_formed).then(|| {
            // Only the current key and at most the one before it.
            let mut kept: Vec<NetworkKey> =
                keys.iter().rev().nth(1).map(|k| NetworkKey { current: false, ..k.clone() }).into_iter().collect();
            kept.push(newest.clone());
            kept
        });
        return Ok(KeyStep { keys, wake_at: Some(due) });
    }
    // The newest key is accepted only.
    let switch = newest.created.plus(config.grace);
    if now >= switch {
        // Step 2: it becomes current; the old current stays accepted.
        let mut out: Vec<NetworkKey> =
            current.map(|k| NetworkKey { current: false, ..k.clone() }).into_iter().collect();
        out.push(NetworkKey { current: true, ..newest.clone() });
        return Ok(KeyStep { keys: Some(out), wake_at: Some(newest.created.plus(config.rotation)) });
    }
    let keys = (!well_formed).then(|| {
        let mut out: Vec<NetworkKey> = match current {
            Some(k) => vec![k.clone()],
            // Nothing current: the newest must be current at once.
            None => return vec![NetworkKey { current: true, ..newest.clone() }],
        };
        out.push(newest.clone());
        out
    });
    Ok(KeyStep { keys, wake_at: Some(switch) })
}

/// The leader-only controller writing [`Network::keys`] (one key per
/// network); run it with `Manager::builder(..).controller(..)`.
#[derive(Clone)]
pub struct NetworkKeys {
    config: NetKeysConfig,
}

impl NetworkKeys {
    /// A controller with `config` (checked).
    pub fn new(config: NetKeysConfig) -> Result<NetworkKeys, NetKeysError> {
        config.validate()?;
        Ok(NetworkKeys { config })
    }
}

impl std::fmt::Debug for NetworkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkKeys").field("config", &self.config).finish()
    }
}

fn concerns(network: &Network) -> bool {
    wants_keys(network) || !network.keys.is_empty()
}

impl Controller for NetworkKeys {
    type Key = NetworkId;

    fn name(&self) -> &str {
        "network-keys"
    }

    fn keys(&self, state: &State) -> Vec<NetworkId> {
        state.networks().filter(|n| concerns(n)).map(|n| n.id.clone()).collect()
    }

    fn interest(&self, change: &Change) -> Interest<NetworkId> {
        Interest::Keys(
            change
                .events
                .iter()
                .filter_map(|e| match &e.object {
                    Object::Network(n) if concerns(n) => Some(n.id.clone()),
                    _ => None,
                })
                .collect(),
        )
    }

    fn reconcile(&mut self, cx: &mut Context<'_>, id: &NetworkId) -> Plan {
        let Some(network) = cx.state.network(id) else { return Plan::default() };
        match step(network, cx.now, &self.config, &mut generate_secret) {
            Ok(KeyStep { keys, wake_at }) => {
                let mut plan = Plan { ops: Vec::new(), wake_at };
                if let Some(keys) = keys {
                    let ids = |ks: &[NetworkKey]| ks.iter().map(|k| (k.id, k.current)).collect::<Vec<_>>();
                    tracing::info!(
                        network = %network.spec.name,
                        id = %network.id,
                        before = ?ids(&network.keys),
                        after = ?ids(&keys),
                        "network keys: (id, current) changed"
                    );
                    let mut n = network.as_ref().clone();
                    n.keys = keys;
                    plan.ops.push(Op::Update(Object::Network(n)));
                }
                plan
            }
            Err(e) => {
                tracing::error!(network = %network.spec.name, error = %e, retry_in = ?self.config.retry, "network keys: no key made");
                Plan { ops: Vec::new(), wake_at: Some(cx.now.plus(self.config.retry)) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use swarm_core::controller::{self, RuntimeConfig};
    use swarm_core::model::{NetworkSpec, OPT_ENCRYPTED};
    use swarm_core::state::Transaction;
    use swarm_core::store::{MemStore, Store};

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn encrypted(id: &str) -> Network {
        let mut spec = NetworkSpec { name: id.into(), driver: "overlay".into(), ..Default::default() };
        spec.options.insert(OPT_ENCRYPTED.into(), "".into());
        Network { id: id.into(), spec, ..Default::default() }
    }

    fn shape(keys: &[NetworkKey], t0: Timestamp) -> Vec<(u32, bool, Duration)> {
        keys.iter().map(|k| (k.id, k.current, k.created.since(t0))).collect()
    }

    fn secret_counter() -> impl FnMut() -> Result<SecretBytes, NetKeysError> {
        let mut n = 0u8;
        move || {
            n += 1;
            Ok(SecretBytes(vec![n; SECRET_LEN]))
        }
    }

    #[test]
    fn config_is_checked() {
        assert!(NetKeysConfig::default().validate().is_ok());
        let c = NetKeysConfig { grace: HOUR, rotation: HOUR, ..Default::default() };
        assert!(matches!(c.validate(), Err(NetKeysError::Config { field: "rotation", .. })), "{:?}", c.validate());
        let c = NetKeysConfig { grace: Duration::ZERO, ..Default::default() };
        assert!(matches!(NetworkKeys::new(c), Err(NetKeysError::Config { field: "grace", .. })));
    }

    #[test]
    fn the_schedule_step_by_step() {
        let cfg = NetKeysConfig { rotation: HOUR, grace: MIN, ..Default::default() };
        let t0 = Timestamp(1_000_000_000_000);
        let mut secret = secret_counter();
        let mut n = encrypted("n");
        let mut at = |n: &mut Network, t: Duration| {
            let s = step(n, t0.plus(t), &cfg, &mut secret).expect("step");
            if let Some(k) = s.keys.clone() {
                n.keys = k;
            }
            s
        };
        // A key at once, current.
        let s = at(&mut n, Duration::ZERO);
        assert_eq!(shape(&n.keys, t0), vec![(1, true, Duration::ZERO)]);
        assert_eq!(s.wake_at, Some(t0.plus(HOUR)));
        // Nothing before the rotation is due.
        let s = at(&mut n, HOUR - Duration::from_secs(1));
        assert_eq!((s.keys, s.wake_at), (None, Some(t0.plus(HOUR))));
        // Step one: key 2 accepted only.
        let s = at(&mut n, HOUR);
        assert_eq!(shape(&n.keys, t0), vec![(1, true, Duration::ZERO), (2, false, HOUR)]);
        assert_eq!(s.wake_at, Some(t0.plus(HOUR + MIN)));
        let s = at(&mut n, HOUR + MIN / 2);
        assert_eq!((s.keys, s.wake_at), (None, Some(t0.plus(HOUR + MIN))));
        // Step two: key 2 current, key 1 still accepted.
        let s = at(&mut n, HOUR + MIN);
        assert_eq!(shape(&n.keys, t0), vec![(1, false, Duration::ZERO), (2, true, HOUR)]);
        assert_eq!(s.wake_at, Some(t0.plus(2 * HOUR)));
        // Next rotation: key 1 dropped, key 3 accepted.
        at(&mut n, 2 * HOUR);
        assert_eq!(shape(&n.keys, t0), vec![(2, true, HOUR), (3, false, 2 * HOUR)]);
        at(&mut n, 2 * HOUR + MIN);
        assert_eq!(shape(&n.keys, t0), vec![(2, false, HOUR), (3, true, 2 * HOUR)]);
        // Secrets are fresh per key.
        assert_ne!(n.keys[0].secret, n.keys[1].secret);
        // A leader back after a long outage catches up one step at a time.
        let s = at(&mut n, 30 * HOUR);
        assert_eq!(shape(&n.keys, t0), vec![(3, true, 2 * HOUR), (4, false, 30 * HOUR)]);
        assert_eq!(s.wake_at, Some(t0.plus(30 * HOUR + MIN)));
        // Not encrypted (or not overlay): keys removed, nothing more.
        n.spec.options.clear();
        let s = at(&mut n, 31 * HOUR);
        assert_eq!((s.keys, s.wake_at), (Some(Vec::new()), None));
        let s = at(&mut n, 32 * HOUR);
        assert_eq!((s.keys, s.wake_at), (None, None));
    }

    #[test]
    fn malformed_key_lists_are_repaired_and_a_failed_generator_is_reported() {
        let cfg = NetKeysConfig { rotation: HOUR, grace: MIN, ..Default::default() };
        let t0 = Timestamp(1_000_000_000_000);
        let key = |id, current| NetworkKey { id, secret: SecretBytes(vec![id as u8; 32]), created: t0, current };
        let mut n = encrypted("n");
        // Three keys, the last current: keep the last and the one before.
        n.keys = vec![key(1, false), key(2, false), key(3, true)];
        let s = step(&n, t0, &cfg, &mut secret_counter()).expect("step");
        assert_eq!(
            s.keys.map(|k| k.iter().map(|k| (k.id, k.current)).collect::<Vec<_>>()),
            Some(vec![(2, false), (3, true)])
        );
        // Nothing current before the switch: the newest becomes current now.
        n.keys = vec![key(1, false)];
        let s = step(&n, t0, &cfg, &mut secret_counter()).expect("step");
        assert_eq!(s.keys.map(|k| k.iter().map(|k| (k.id, k.current)).collect::<Vec<_>>()), Some(vec![(1, true)]));
        // The generator failing: an error, no key.
        n.keys.clear();
        let e = step(&n, t0, &cfg, &mut || Err(NetKeysError::Random));
        assert_eq!(e, Err(NetKeysError::Random));
        assert_eq!(generate_secret().expect("CSPRNG").0.len(), SECRET_LEN);
        assert_ne!(generate_secret().expect("CSPRNG"), generate_secret().expect("CSPRNG"));
    }

    /// Runs the controller on a store under the paused clock and records
    /// the keys' shape at each point of `probes` (offsets from the start).
    async fn run_controller(probes: &[Duration]) -> Vec<Vec<(u32, bool, Duration)>> {
        let store = Arc::new(MemStore::new());
        let s: Arc<dyn Store> = store.clone();
        let cfg = NetKeysConfig { rotation: HOUR, grace: MIN, ..Default::default() };
        let plain = Network {
            id: "plain".into(),
            spec: NetworkSpec { name: "plain".into(), driver: "overlay".into(), ..Default::default() },
            ..Default::default()
        };
        let mut local = encrypted("local");
        local.spec.driver = "bridge".into();
        store.commit(Transaction::new().create(encrypted("enc")).create(plain).create(local)).await.expect("commit");
        let t0 = swarm_core::time::now();
        let task = tokio::spawn(controller::run(
            s,
            NetworkKeys::new(cfg).expect("config"),
            RuntimeConfig { seed: Some(7), ..Default::default() },
        ));
        let start = tokio::time::Instant::now();
        let mut out = Vec::new();
        for p in probes {
            tokio::time::sleep_until(start + *p).await;
            // Let the controller commit what is due.
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            let state = store.state();
            assert!(state.network(&"plain".into()).expect("plain").keys.is_empty(), "a plain network gets no key");
            assert!(state.network(&"local".into()).expect("local").keys.is_empty(), "a bridge network gets no key");
            let enc = state.network(&"enc".into()).expect("enc");
            let text = format!("{enc:?}");
            for k in &enc.keys {
                assert_eq!(k.secret.0.len(), SECRET_LEN);
                let hex: String = k.secret.0.iter().map(|b| format!("{b:02x}")).collect();
                assert!(
                    !text.contains(&hex) && !text.contains(&format!("{:?}", k.secret.0)),
                    "secret in Debug: {text}"
                );
            }
            out.push(shape(&enc.keys, t0));
        }
        task.abort();
        out
    }

    #[tokio::test(start_paused = true)]
    async fn the_controller_keys_and_rotates_on_the_paused_clock_deterministically() {
        let ms = Duration::from_millis;
        let probes =
            [ms(10), HOUR - ms(10), HOUR + ms(10), HOUR + MIN - ms(10), HOUR + MIN + ms(10), 2 * HOUR + ms(10)];
        let got = run_controller(&probes).await;
        let z = Duration::ZERO;
        assert_eq!(
            got,
            vec![
                vec![(1, true, z)],
                vec![(1, true, z)],
                vec![(1, true, z), (2, false, HOUR)],
                vec![(1, true, z), (2, false, HOUR)],
                vec![(1, false, z), (2, true, HOUR)],
                vec![(2, true, HOUR), (3, false, 2 * HOUR)],
            ]
        );
        assert_eq!(run_controller(&probes).await, got, "a second run takes the same steps at the same times");
    }
}
