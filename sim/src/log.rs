//! The event log of a run: one line per store write, RPC outcome, fault and admin action,
//! stamped with simulated time. Its SHA-256 is the run's fingerprint: the same seed must give
//! the same hash, byte for byte (certificates included, through their digests).

use std::sync::{Arc, Mutex};

/// A shared, append-only event log.
#[derive(Clone, Default)]
pub struct EventLog {
    inner: Arc<Mutex<LogInner>>,
}

#[derive(Default)]
struct LogInner {
    lines: Vec<String>,
    echo: bool,
}

impl EventLog {
    /// A log; with `echo`, lines are also printed as they come.
    pub fn new(echo: bool) -> EventLog {
        EventLog { inner: Arc::new(Mutex::new(LogInner { lines: Vec::new(), echo })) }
    }

    /// Appends a line, stamped with the simulated time.
    pub fn push(&self, line: impl Into<String>) {
        let t = madsim::time::TimeHandle::try_current().map_or(0, |h| h.elapsed().as_millis());
        let line = format!("{t:>9} {}", line.into());
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.echo {
            println!("{line}");
        }
        g.lines.push(line);
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).lines.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SHA-256 of all lines, hex.
    pub fn hash(&self) -> String {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = Vec::new();
        for l in &g.lines {
            all.extend_from_slice(l.as_bytes());
            all.push(b'\n');
        }
        hex::encode(swarmca_core::rootca::digest(&all))
    }

    /// All lines.
    pub fn lines(&self) -> Vec<String> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).lines.clone()
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.lines.iter().rev().take(n).rev().cloned().collect()
    }
}
