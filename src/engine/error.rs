//! The engine's errors: what a caller (the RPC layer, the CLI, a test) can act
//! on. The RPC layer maps each variant to a JSON-RPC code in one place.

use crate::agent::{AgentError, AgentErrorCode};
use crate::vmm::VmmError;

/// Bytes per guest page.
const PAGE: u64 = 4096;

/// Errors from engine operations.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// /dev/kvm is missing or unusable.
    #[error("KVM is unavailable")]
    KvmUnavailable(#[source] VmmError),
    /// No template has this id.
    #[error("template not found: {0}")]
    TemplateNotFound(String),
    /// The template still has live sandboxes.
    #[error("template {template} has {sandboxes} live sandboxes")]
    TemplateInUse {
        /// The template.
        template: String,
        /// How many sandboxes live.
        sandboxes: usize,
    },
    /// No sandbox has this id (never existed, or killed).
    #[error("sandbox not found: {0}")]
    SandboxNotFound(String),
    /// Another exec is running on the sandbox.
    #[error("sandbox {0} is busy with another exec")]
    SandboxBusy(String),
    /// The sandbox was stopped by an earlier timeout, cancel, crash or protocol
    /// violation; only kill is possible.
    #[error("sandbox {id} is unusable: {reason}")]
    SandboxUnusable {
        /// The sandbox.
        id: String,
        /// What happened to it.
        reason: String,
    },
    /// The exec passed its deadline; the vCPU was stopped.
    #[error("exec timed out after {timeout_ms} ms")]
    ExecTimeout {
        /// The deadline.
        timeout_ms: u64,
    },
    /// The exec was cancelled by the caller; the vCPU was stopped.
    #[error("exec cancelled")]
    Cancelled,
    /// The guest crashed.
    #[error("guest crashed: {reason}")]
    GuestCrashed {
        /// Exit reason reported by KVM.
        reason: String,
    },
    /// The guest broke the agent protocol.
    #[error("guest protocol violation: {detail}")]
    GuestProtocol {
        /// What was wrong.
        detail: String,
    },
    /// The agent in the guest refused or failed the request.
    #[error("agent error: {message}")]
    AgentFailed {
        /// The agent's message.
        message: String,
    },
    /// A file exceeds a size limit: the host's `max_file_bytes`, the read's
    /// `max_bytes`, or the guest's own (the bare guest's file store is small).
    #[error("file too large: {detail}")]
    FileTooLarge {
        /// Which limit, and by how much.
        detail: String,
    },
    /// A configured limit was reached.
    #[error("resource limit: {0}")]
    ResourceLimit(String),
    /// The worker's memory budget cannot cover what a call would add.
    #[error(
        "resource limit: the worker's memory budget cannot cover {what} \
         ({requested} bytes wanted, {available} of {limit} left)"
    )]
    OverBudget {
        /// What was to be charged ("sandbox", "template", "snapshot"...).
        what: &'static str,
        /// Bytes it would cost.
        requested: u64,
        /// Bytes the budget has left.
        available: u64,
        /// The whole budget.
        limit: u64,
    },
    /// The sandbox dirtied more memory than its own limit; its vCPU was
    /// stopped and only kill remains.
    #[error(
        "resource limit: the sandbox holds {dirty} bytes of private memory, over its limit of {limit}"
    )]
    SandboxMemoryLimit {
        /// Its limit in bytes.
        limit: u64,
        /// What it held when stopped.
        dirty: u64,
    },
    /// The request is invalid (empty argv, too large, unknown builtin...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A template file could not be read or written.
    #[error("template file {path}: {detail}")]
    TemplateFile {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// A template file was captured on a host whose CPU this host cannot
    /// stand in for (another vendor, or features this host's KVM lacks).
    #[error("template file {path} cannot run on this host: {detail}")]
    TemplateIncompatible {
        /// The file.
        path: String,
        /// What differs.
        detail: String,
    },
    /// A template's guest did not answer a probe exec (checked when a
    /// template is built or loaded): it spun past the deadline, crashed, or
    /// broke the protocol. Nothing of it was registered.
    #[error("template rejected: {detail}")]
    TemplateUnresponsive {
        /// What the guest did, and where its vCPU was.
        detail: String,
    },
    /// Linux guests need hardware virtualisation, and this host's KVM is kvm-pvm.
    #[error(
        "a Linux guest needs hardware KVM (Intel VT-x or AMD-V): this /dev/kvm is kvm-pvm, \
         which emulates guest kernel code and cannot boot a stock kernel"
    )]
    LinuxNeedsHardwareKvm,
    /// A Linux guest did not boot to the agent's Ready.
    #[error("Linux guest failed to boot: {reason}")]
    LinuxBoot {
        /// What went wrong.
        reason: String,
        /// The end of the guest's serial console.
        console: String,
    },
    /// A fork's network policy has a bad entry.
    #[error("network policy: {0}")]
    NetworkPolicy(#[from] crate::net::PolicyError),
    /// The template spec was refused.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// The spec's image could not be built.
    #[error("cannot build the template's image")]
    Image(#[source] crate::image::ImageError),
    /// A `python.preload` module raised when imported.
    #[error("a preloaded module failed to import:\n{traceback}")]
    PreloadFailed {
        /// Python's traceback.
        traceback: String,
    },
    /// A warm-up command failed.
    #[error("warm-up command {command:?} failed (exit {}): {stderr}", exit_code.map_or("by a signal".to_owned(), |c| c.to_string()))]
    WarmupFailed {
        /// The command.
        command: String,
        /// Its exit code (`None`: a signal or the deadline ended it).
        exit_code: Option<i32>,
        /// Its stderr.
        stderr: String,
    },
    /// The KVM layer failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

impl EngineError {
    /// Classifies a failed conversation.
    pub(crate) fn from_agent(e: AgentError) -> EngineError {
        match e {
            AgentError::Protocol(detail) => EngineError::GuestProtocol { detail },
            AgentError::Crashed(reason) => EngineError::GuestCrashed { reason },
            AgentError::Interrupted => EngineError::Cancelled,
            AgentError::Agent {
                code: AgentErrorCode::TooLarge,
                message,
            } => EngineError::FileTooLarge { detail: message },
            AgentError::Agent { message, .. } => EngineError::AgentFailed { message },
            AgentError::MemoryLimit(over) => EngineError::SandboxMemoryLimit {
                limit: over.limit * PAGE,
                dirty: over.pages * PAGE,
            },
            e @ AgentError::RequestTooLarge { .. } => EngineError::InvalidRequest(e.to_string()),
            AgentError::Vmm(v) => EngineError::Vmm(v),
        }
    }

    /// True when the failure leaves the sandbox's vCPU in an unknown state.
    pub fn breaks_sandbox(&self) -> bool {
        matches!(
            self,
            EngineError::ExecTimeout { .. }
                | EngineError::Cancelled
                | EngineError::GuestCrashed { .. }
                | EngineError::GuestProtocol { .. }
                | EngineError::SandboxMemoryLimit { .. }
                | EngineError::Vmm(_)
        )
    }
}
