//! A small command-line parser: positional words, `--flag value`,
//! `--flag=value`, and switches without a value. Each flag read is
//! consumed, and [`Args::finish`] refuses whatever was not: an unknown or
//! misspelt flag is an error that names it, never silently ignored.
//!
//! ```
//! use swarm_cli::args::Args;
//! let mut a = Args::parse(["create", "--name", "web", "--replicas=3", "--detach"], &["detach"]).unwrap();
//! assert_eq!(a.positional(), ["create"]);
//! assert_eq!(a.next_word().as_deref(), Some("create"));
//! assert_eq!(a.value("name").as_deref(), Some("web"));
//! assert_eq!(a.parsed::<u64>("replicas").unwrap(), Some(3));
//! assert!(a.switch("detach"));
//! a.finish().unwrap();
//! let mut b = Args::parse(["--replicsa", "3"], &[]).unwrap();
//! assert_eq!(b.value("replicas"), None);
//! assert_eq!(b.finish().unwrap_err().to_string(), "unknown flag --replicsa");
//! ```

use std::collections::BTreeMap;

/// A command-line error, naming the flag or word at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// A flag that needs a value came last.
    #[error("flag --{0} needs a value")]
    MissingValue(String),
    /// A flag's value could not be read.
    #[error("flag --{flag}: {value:?} is not valid: {reason}")]
    BadValue {
        /// The flag.
        flag: String,
        /// What was given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A flag nobody asked for.
    #[error("unknown flag --{0}")]
    Unknown(String),
    /// A required flag or word is missing.
    #[error("missing {0}")]
    Missing(String),
    /// More positional words than the command takes.
    #[error("unexpected argument {0:?}")]
    Unexpected(String),
}

/// Parsed arguments. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct Args {
    positional: Vec<String>,
    values: BTreeMap<String, Vec<String>>,
    switches: BTreeMap<String, usize>,
}

impl Args {
    /// Parses `argv` (without the program name); names in `switches` take
    /// no value. A lone `--` ends flags.
    pub fn parse<I, S>(argv: I, switches: &[&str]) -> Result<Args, ArgError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut out = Args::default();
        let mut it = argv.into_iter().map(Into::into);
        while let Some(a) = it.next() {
            if a == "--" {
                out.positional.extend(it.by_ref());
                break;
            }
            let Some(flag) = a.strip_prefix("--") else {
                out.positional.push(a);
                continue;
            };
            if let Some((name, value)) = flag.split_once('=') {
                out.values.entry(name.to_owned()).or_default().push(value.to_owned());
            } else if switches.contains(&flag) {
                *out.switches.entry(flag.to_owned()).or_default() += 1;
            } else {
                let value = it.next().ok_or_else(|| ArgError::MissingValue(flag.to_owned()))?;
                out.values.entry(flag.to_owned()).or_default().push(value);
            }
        }
        Ok(out)
    }

    /// The positional words not taken yet.
    pub fn positional(&self) -> &[String] {
        &self.positional
    }

    /// Takes the next positional word.
    pub fn next_word(&mut self) -> Option<String> {
        if self.positional.is_empty() { None } else { Some(self.positional.remove(0)) }
    }

    /// Takes the next positional word, or fails naming `what`.
    pub fn word(&mut self, what: &str) -> Result<String, ArgError> {
        self.next_word().ok_or_else(|| ArgError::Missing(what.to_owned()))
    }

    /// Takes the last value of `--name`.
    pub fn value(&mut self, name: &str) -> Option<String> {
        self.values.remove(name).and_then(|mut v| v.pop())
    }

    /// Takes every value of a repeatable `--name`.
    pub fn values(&mut self, name: &str) -> Vec<String> {
        self.values.remove(name).unwrap_or_default()
    }

    /// Takes `--name`, which must be there.
    pub fn required(&mut self, name: &str) -> Result<String, ArgError> {
        self.value(name).ok_or_else(|| ArgError::Missing(format!("--{name}")))
    }

    /// Takes `--name` and parses it.
    pub fn parsed<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>, ArgError>
    where
        T::Err: std::fmt::Display,
    {
        match self.value(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e: T::Err| ArgError::BadValue {
                flag: name.to_owned(),
                value: v,
                reason: e.to_string(),
            }),
        }
    }

    /// Takes the switch `--name`.
    pub fn switch(&mut self, name: &str) -> bool {
        self.switches.remove(name).is_some()
    }

    /// Fails on the first flag or word nobody took.
    pub fn finish(self) -> Result<(), ArgError> {
        if let Some(name) = self.values.keys().chain(self.switches.keys()).next() {
            return Err(ArgError::Unknown(name.clone()));
        }
        if let Some(w) = self.positional.first() {
            return Err(ArgError::Unexpected(w.clone()));
        }
        Ok(())
    }
}
