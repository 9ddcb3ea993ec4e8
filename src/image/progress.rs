//! What a build reports while it runs: the phase it is in and how far it
//! got (bytes for downloads, steps otherwise). The CLI draws it on stderr,
//! the JSON-RPC worker sends it as `template.progress` notifications.

use serde::{Deserialize, Serialize};

/// A phase of building a template from a spec, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Choosing package versions (Debian closure, Python wheels).
    Resolve,
    /// Fetching packages (bytes).
    Download,
    /// Building the root filesystem and the initramfs.
    Assemble,
    /// Booting the guest to the agent's Ready.
    Boot,
    /// Checking preloads and running warm-up commands.
    Warmup,
    /// Capturing the snapshot.
    Capture,
}

/// One report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Units done (bytes when downloading).
    pub done: u64,
    /// Units in all, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// What is happening, for people.
    pub message: String,
}

impl Progress {
    /// A report without a count.
    pub fn step(phase: Phase, message: impl Into<String>) -> Progress {
        Progress {
            phase,
            done: 0,
            total: None,
            message: message.into(),
        }
    }
}

/// Receives reports (called on the building thread).
pub type Reporter<'a> = &'a mut dyn FnMut(&Progress);
