//! Ctrl-C for the examples that start containers: on SIGINT or SIGTERM an
//! example removes exactly the containers this run started, says which,
//! and exits with 130 or 143 (128 + the signal's number, as a shell reports
//! a command that a signal ended).
//!
//! ```ignore
//! let interrupt = Interrupt::install("quickstart")?;
//! interrupt.guard(async {
//!     // The agents and the example's own calls go through `rt`.
//!     let rt = interrupt.track(DockerRuntime::connect(DockerRuntimeOptions::default())?);
//!     spec.task_template.container.labels.extend(interrupt.run_labels());
//!     // ...
//! }).await
//! ```
//!
//! The run gets a name, `<example>-<pid>-<nanoseconds, hex>`, printed at
//! start; every container the example asks for carries the label
//! [`RUN_LABEL`]`=<run>` ([`Interrupt::run_labels`]), and the runtimes it
//! creates them through are wrapped by [`Interrupt::track`]. On a signal,
//! [`Interrupt::guard`] drops the example's work, refuses new creates and
//! waits (at most [`IN_FLIGHT_BUDGET`]) for the creates and removes already
//! sent to an engine (see [`tracked`](super::tracked)); then it lists the
//! run's containers on every tracked runtime and removes them, until none
//! is listed or [`SWEEP_BUDGET`] has passed. Another signal during that,
//! after [`REPEAT_WINDOW`], ends the example at once, naming the label of
//! what may be left. When the example ends by itself, the same cleanup
//! runs and names whatever the run left behind (normally nothing).

use super::tracked::{InFlight, Tracked};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use swarm::model::Labels;
use swarm::runtime::{Runtime, RuntimeError};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The label on every container an example run starts; its value names the
/// run.
pub const RUN_LABEL: &str = "io.swarm-rs.example.run";

/// How long creates and removes already sent to an engine may take to
/// finish once a signal came.
pub const IN_FLIGHT_BUDGET: Duration = Duration::from_secs(15);

/// How long listing and removing the run's containers may take.
pub const SWEEP_BUDGET: Duration = Duration::from_secs(20);

/// A signal this soon after the cleanup started repeats the first one; a
/// later one abandons the cleanup.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(1);

/// The signals that end an example.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`kill`, a supervisor stopping the run).
    Terminate,
}

impl Signal {
    /// The signal's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// The exit status a shell shows for a command this signal ended:
    /// 128 + its number.
    pub fn exit_status(self) -> i32 {
        match self {
            Signal::Interrupt => 128 + 2,
            Signal::Terminate => 128 + 15,
        }
    }
}

/// The two signal streams.
struct Listener {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Listener {
    fn install() -> std::io::Result<Listener> {
        Ok(Listener { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
    }

    /// The next signal.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            Some(()) = self.interrupt.recv() => Signal::Interrupt,
            Some(()) = self.terminate.recv() => Signal::Terminate,
            else => std::future::pending().await,
        }
    }
}

/// What a cleanup did.
#[derive(Debug, Default)]
struct Sweep {
    /// Name and runtime of each container removed.
    removed: Vec<(String, String)>,
    /// Names of the containers still listed when the budget ran out.
    left: Vec<String>,
    /// The last error met, if any.
    error: Option<String>,
    /// False when creates or removes were still in flight after
    /// [`IN_FLIGHT_BUDGET`].
    drained: bool,
}

/// An example's run: its label, the runtimes its containers live on, and
/// the signal handling. See the module doc.
pub struct Interrupt {
    example: &'static str,
    run: String,
    in_flight: Arc<InFlight>,
    engines: Mutex<Vec<Arc<dyn Runtime>>>,
    listener: tokio::sync::Mutex<Listener>,
}

impl Interrupt {
    /// Names the run and starts listening for SIGINT and SIGTERM (call it
    /// first thing, inside the tokio runtime). Prints the run's label.
    pub fn install(example: &'static str) -> std::io::Result<Interrupt> {
        let listener = Listener::install()?;
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let run = format!("{example}-{}-{nanos:x}", std::process::id());
        eprintln!("{example}: this run labels its containers {RUN_LABEL}={run}; Ctrl-C removes them");
        Ok(Interrupt {
            example,
            run,
            in_flight: Arc::new(InFlight::default()),
            engines: Mutex::new(Vec::new()),
            listener: tokio::sync::Mutex::new(listener),
        })
    }

    /// The run's name.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The label to put on every container of the run (also the selector
    /// that finds them).
    pub fn run_labels(&self) -> Labels {
        Labels::from([(RUN_LABEL.to_string(), self.run.clone())])
    }

    /// Wraps `rt`: the cleanup removes the run's containers on it, after
    /// its creates and removes in flight have finished. Create the run's
    /// containers through the returned runtime (or clones of it) only.
    pub fn track<R: Runtime>(&self, rt: R) -> Tracked<R> {
        let rt = Arc::new(rt);
        self.engines.lock().unwrap_or_else(PoisonError::into_inner).push(rt.clone());
        Tracked::new(rt, self.in_flight.clone())
    }

    /// Runs `body`. If SIGINT or SIGTERM comes first, `body` is dropped,
    /// the run's containers are removed and the process exits with 130 or
    /// 143. Otherwise returns what `body` returned, after removing what
    /// the run left behind.
    pub async fn guard<F: Future>(&self, body: F) -> F::Output {
        let mut listener = self.listener.lock().await;
        let signal = tokio::select! {
            out = body => {
                let sweep = self.clean_up_or_exit(&mut listener, None).await;
                if !sweep.removed.is_empty() || !sweep.left.is_empty() || sweep.error.is_some() {
                    eprintln!("{}: the run left containers behind", self.example);
                    self.report(&sweep);
                }
                return out;
            }
            s = listener.next() => s,
        };
        eprintln!("\n{}: {}: removing the containers this run started", self.example, signal.name());
        let sweep = self.clean_up_or_exit(&mut listener, Some(signal)).await;
        self.report(&sweep);
        let status = signal.exit_status();
        eprintln!("{}: exiting with status {status} ({})", self.example, signal.name());
        std::process::exit(status)
    }

    /// The cleanup; a signal meanwhile exits at once (with the status of
    /// `first`, the signal that started it, if any), unless it comes within
    /// [`REPEAT_WINDOW`] of the start: that is the same request delivered
    /// twice (`timeout` signals its child and then its process group) or a
    /// double press.
    async fn clean_up_or_exit(&self, listener: &mut Listener, first: Option<Signal>) -> Sweep {
        let started = Instant::now();
        let cleanup = self.clean_up();
        tokio::pin!(cleanup);
        loop {
            tokio::select! {
                sweep = &mut cleanup => return sweep,
                again = listener.next() => {
                    if started.elapsed() < REPEAT_WINDOW {
                        continue;
                    }
                    let status = first.unwrap_or(again).exit_status();
                    eprintln!(
                        "\n{}: {} during the cleanup: exiting with status {status}; containers labelled {RUN_LABEL}={} may be left",
                        self.example,
                        again.name(),
                        self.run
                    );
                    std::process::exit(status)
                }
            }
        }
    }

    /// Refuses new creates, lets those in flight finish, then removes every
    /// container labelled with the run on every tracked runtime.
    async fn clean_up(&self) -> Sweep {
        let mut sweep = Sweep { drained: self.in_flight.drain(IN_FLIGHT_BUDGET).await, ..Default::default() };
        let engines = self.engines.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let selector = self.run_labels();
        let deadline = Instant::now() + SWEEP_BUDGET;
        loop {
            let mut found = Vec::new();
            let mut listed = true;
            for rt in &engines {
                match tokio::time::timeout_at(deadline, rt.list(&selector)).await {
                    Ok(Ok(containers)) => found.extend(containers.into_iter().map(|c| (rt.clone(), c))),
                    Ok(Err(e)) => {
                        listed = false;
                        sweep.error = Some(format!("listing the containers on {}: {e}", rt.name()));
                    }
                    Err(_) => {
                        listed = false;
                        sweep.error = Some(format!("listing the containers on {}: timed out", rt.name()));
                    }
                }
            }
            sweep.left = found.iter().map(|(_, c)| c.name.clone()).collect();
            if (found.is_empty() && listed) || Instant::now() >= deadline {
                return sweep;
            }
            let mut removals = JoinSet::new();
            for (rt, c) in found {
                removals.spawn(async move {
                    let r = rt.remove(&c.id).await;
                    (c.name, rt.name().to_string(), r)
                });
            }
            let mut failed = !listed;
            while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, removals.join_next()).await {
                match joined {
                    Ok((name, runtime, Ok(()))) => sweep.removed.push((name, runtime)),
                    // Gone meanwhile (its agent removed it).
                    Ok((_, _, Err(RuntimeError::NotFound(_)))) => {}
                    Ok((name, _, Err(e))) => {
                        failed = true;
                        sweep.error = Some(format!("removing {name}: {e}"));
                    }
                    Err(e) => {
                        failed = true;
                        sweep.error = Some(format!("a removal task failed: {e}"));
                    }
                }
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    fn report(&self, sweep: &Sweep) {
        let example = self.example;
        if !sweep.drained {
            eprintln!("{example}: creates or removes were still in flight after {IN_FLIGHT_BUDGET:?}");
        }
        for (name, runtime) in &sweep.removed {
            eprintln!("  removed {name} ({runtime})");
        }
        match sweep.removed.len() {
            0 => eprintln!("{example}: no container of this run to remove"),
            1 => eprintln!("{example}: removed 1 container"),
            n => eprintln!("{example}: removed {n} containers"),
        }
        if !sweep.left.is_empty() {
            eprintln!(
                "{example}: could not remove {} within {SWEEP_BUDGET:?}: {}; they carry the label {RUN_LABEL}={}",
                sweep.left.len(),
                sweep.left.join(", "),
                self.run
            );
        }
        if let Some(e) = &sweep.error {
            eprintln!("{example}: last error: {e}");
        }
    }
}
