//! The stdio JSON-RPC worker (being written).

use crate::engine::EngineConfig;

/// Options of `zeroboot serve`.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Engine limits and sizes.
    pub engine: EngineConfig,
    /// Largest accepted message body in bytes.
    pub max_message_bytes: usize,
}

/// Serves JSON-RPC on stdin/stdout until shutdown or EOF; returns the exit code.
pub fn serve(_opts: ServeOptions) -> std::process::ExitCode {
    eprintln!("zeroboot serve: not implemented yet");
    std::process::ExitCode::FAILURE
}
