//! A bridge from raft-rs' `slog` logging to `tracing`.
//!
//! raft-rs logs through `slog`. [`raft_logger`] builds a `slog::Logger`
//! whose drain forwards every record (message and key/values) to `tracing`
//! under the `raft` target, at the matching level.

use slog::{Drain, KV, OwnedKVList, Record, Serializer};
use std::fmt::{self, Write as _};

/// Forwards slog records to tracing.
struct TracingDrain;

/// Collects slog key/values as `key=value` pairs.
struct KvText(String);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments) -> slog::Result {
        // Writing into a String cannot fail.
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Info => tracing::debug!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Debug | slog::Level::Trace => tracing::trace!(target: "raft", "{msg}{}", kv.0),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs that forwards to tracing. raft's own `info`
/// records (elections, term changes) are logged at `debug`: they are routine.
pub fn raft_logger(node_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("raft_id" => node_id))
}
