//! What a failed tool call tells the agent. MCP separates protocol errors (a
//! malformed request: rmcp answers those itself) from tool errors, which are
//! ordinary results with `isError: true` that the model reads and acts on. Every
//! failure of a tool that got as far as running is a tool error, mapped here in
//! one place: the server stays up, whatever the guest did.

use rmcp::model::{ContentBlock, IntoContents};

use crate::engine::EngineError;

/// A tool call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// /dev/kvm could not be opened when the server started.
    #[error("KVM is unavailable on this host: {0}")]
    KvmUnavailable(String),
    /// An argument the engine was never asked about is wrong.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The engine refused or failed the call.
    #[error("{}", crate::error_chain(.0))]
    Engine(#[from] EngineError),
    /// The session's default sandbox was stopped by the failure (a host
    /// deadline, a cancel, a crashed guest); it was killed, and the next call
    /// without `sandbox` forks a fresh one.
    #[error(
        "{}; the session's default sandbox {sandbox} was stopped and removed, \
         the next call starts a fresh one", crate::error_chain(.cause)
    )]
    DefaultSandboxLost {
        /// The sandbox that was removed.
        sandbox: String,
        /// What stopped it.
        cause: EngineError,
    },
    /// The program ran past `timeout_ms` and the guest's agent killed it (the
    /// sandbox stays usable); what it printed until then comes along.
    #[error(
        "the program did not finish within {timeout_ms} ms and was killed\n\
         --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    )]
    TimedOut {
        /// The deadline.
        timeout_ms: u64,
        /// Output until the deadline.
        stdout: String,
        /// Error output until the deadline.
        stderr: String,
    },
    /// The runtime could not run the engine call (only while shutting down).
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl IntoContents for ToolError {
    fn into_contents(self) -> Vec<ContentBlock> {
        vec![ContentBlock::text(self.to_string())]
    }
}

#[cfg(test)]
mod tests {
    use rmcp::handler::server::tool::IntoCallToolResult;
    use rmcp::model::CallToolResponse;

    use super::*;

    #[test]
    fn a_failed_tool_is_a_result_marked_as_error_with_the_cause_chain() {
        let failed: Result<String, ToolError> = Err(ToolError::DefaultSandboxLost {
            sandbox: "sb-3".into(),
            cause: EngineError::ExecTimeout { timeout_ms: 1500 },
        });
        let Ok(CallToolResponse::Complete(result)) = failed.into_call_tool_result() else {
            panic!("a tool error must be a complete tool result, not a protocol error");
        };
        assert_eq!(result.is_error, Some(true));
        let text = serde_json::to_string(&result.content).unwrap();
        assert!(text.contains("exec timed out after 1500 ms"), "{text}");
        assert!(text.contains("sb-3"), "{text}");
    }
}
