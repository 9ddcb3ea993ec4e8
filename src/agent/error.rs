//! Why a conversation with a guest ended without a result.

use zeroboot_proto::{AgentErrorCode, WireError};

use crate::vmm::{DirtyOverLimit, VmmError};

/// Errors talking to a guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The guest sent a malformed or out-of-place frame.
    #[error("guest protocol violation: {0}")]
    Protocol(String),
    /// The vCPU died (triple fault, failed entry, ...).
    #[error("guest crashed: {0}")]
    Crashed(String),
    /// The run was interrupted by a kick (deadline or cancellation).
    #[error("guest run interrupted")]
    Interrupted,
    /// The agent refused or failed the request.
    #[error("agent error {code:?}: {message}")]
    Agent {
        /// The agent's code.
        code: AgentErrorCode,
        /// The agent's message.
        message: String,
    },
    /// The guest dirtied more memory than its limit; its vCPU is stopped.
    #[error("guest holds {} pages privately, over its limit of {}", .0.pages, .0.limit)]
    MemoryLimit(DirtyOverLimit),
    /// The request does not fit the guest's mailbox.
    #[error("request of {bytes} bytes exceeds the guest mailbox of {limit} bytes")]
    RequestTooLarge {
        /// The whole frame's size, everything it carries included.
        bytes: usize,
        /// The mailbox's size.
        limit: usize,
    },
    /// The KVM layer failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

impl From<WireError> for AgentError {
    fn from(e: WireError) -> Self {
        AgentError::Protocol(e.to_string())
    }
}
