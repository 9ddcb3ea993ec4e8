//! Every limit the engine enforces, in one value chosen by the operator. The
//! CLI, the JSON-RPC worker and the tests all hand the engine an
//! [`EngineConfig`] and get the same rules: front ends never re-check a limit
//! of their own, they report the engine's refusal.

use std::time::Duration;

/// Limits and sizes chosen by the operator.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EngineConfig {
    /// Idle VMs kept ready per template.
    pub pool_size: usize,
    /// Most sandboxes alive at once.
    pub max_sandboxes: usize,
    /// Deadline of an exec that names none.
    pub default_timeout_ms: u64,
    /// Output bytes (stdout + stderr) kept per exec by default.
    pub default_output_cap: usize,
    /// Largest output cap an exec may ask for (the default cap is always allowed).
    pub max_output_cap: usize,
    /// Extra time the host allows past an exec's deadline before it stops the
    /// vCPU: a guest agent that honours the in-guest deadline answers
    /// `timed_out` first and the sandbox stays usable.
    pub exec_host_grace_ms: u64,
    /// Largest `count` of one fork (or run) of many sandboxes.
    pub max_fork_count: usize,
    /// Largest file `write_file` sends and `read_file` accepts (the guest
    /// may set a lower limit of its own).
    pub max_file_bytes: usize,
    /// Smallest guest memory of a Linux template, in MiB.
    pub min_linux_memory_mib: usize,
    /// Largest guest memory of a Linux template, in MiB.
    pub max_linux_memory_mib: usize,
    /// The memory budget in bytes; `None`: [`super::DEFAULT_MEMORY_PERCENT`]
    /// of the memory available when the engine starts (see
    /// [`super::available_memory`]).
    pub max_memory: Option<u64>,
    /// How long a sandbox goes without a request before the pages its runs
    /// left as the template has them are given back (see `trim.rs`); `None`:
    /// never.
    pub trim_idle_ms: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pool_size: 8,
            max_sandboxes: 4096,
            default_timeout_ms: 30_000,
            default_output_cap: 1 << 20,
            max_output_cap: 64 << 20,
            exec_host_grace_ms: 500,
            max_fork_count: 4096,
            max_file_bytes: 16 << 20,
            min_linux_memory_mib: 64,
            max_linux_memory_mib: 65536,
            max_memory: None,
            trim_idle_ms: Some(5),
        }
    }
}

/// Longest in-guest deadline the agent protocol can carry (a `u32` of ms).
pub const MAX_TIMEOUT_MS: u64 = u32::MAX as u64;

impl EngineConfig {
    /// The largest output cap a call may ask for.
    pub fn output_cap_limit(&self) -> usize {
        self.max_output_cap.max(self.default_output_cap)
    }

    /// The host's deadline for an exec whose in-guest deadline is `timeout`.
    pub fn host_deadline(&self, timeout: Duration) -> Duration {
        timeout + Duration::from_millis(self.exec_host_grace_ms)
    }
}
