//! `zeroboot mcp`: sandboxes as tools of the Model Context Protocol, for agent
//! hosts (Claude Desktop, VS Code, Cursor...) that spawn a server and speak
//! MCP over its stdin/stdout.
//!
//! A front end beside [`crate::rpc`], not on top of it: it translates MCP tool
//! calls into [`Engine`] calls and never touches KVM. The protocol itself
//! (initialisation, tool listing, JSON Schemas, progress, cancellation) is the
//! official Rust SDK's, `rmcp`. Layers: `tools` declares each tool's input and
//! result shapes and maps a call to the session; `session` owns the engine,
//! the session's template and its default sandbox, and runs engine calls off
//! the async runtime under the request's cancellation; `progress` reports long
//! calls to a client that asked; `error` turns every failure into a tool error
//! (`isError`), so a timeout or a crashed guest never takes the server down.

mod error;
mod progress;
mod session;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use rmcp::ServiceExt;

use crate::engine::{Engine, EngineConfig};
use crate::spec::Spec;
pub use error::ToolError;
use session::Session;

/// Where the session's template comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// A built-in template (`bare`).
    Builtin(String),
    /// A template file written by `template.save`.
    File(PathBuf),
    /// A template spec (`zeroboot.toml`, or `.json`), built on first use.
    Spec(PathBuf, Box<Spec>),
}

impl TemplateSource {
    /// `bare` (a name without `/` or `.`) is a built-in; a `.toml` or
    /// `.json` path is a template spec, read and checked now so a wrong field
    /// stops the server before a client connects; anything else is a
    /// template file, which must exist.
    pub fn parse(arg: &str) -> Result<TemplateSource, String> {
        if !arg.is_empty() && !arg.contains(['/', '.']) {
            return Ok(TemplateSource::Builtin(arg.to_string()));
        }
        let path = PathBuf::from(arg);
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("toml" | "json")
        ) {
            let spec = Spec::load(&path).map_err(|e| format!("{arg}: {e}"))?;
            return Ok(TemplateSource::Spec(path, Box::new(spec)));
        }
        if !path.is_file() {
            return Err(format!("{arg}: no such template file"));
        }
        Ok(TemplateSource::File(path))
    }
}

impl std::fmt::Display for TemplateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateSource::Builtin(name) => write!(f, "builtin:{name}"),
            TemplateSource::File(path) | TemplateSource::Spec(path, _) => {
                write!(f, "{}", path.display())
            }
        }
    }
}

/// Options of `zeroboot mcp`.
#[derive(Clone, Debug)]
pub struct McpOptions {
    /// Engine limits and sizes.
    pub engine: EngineConfig,
    /// The template the session's sandboxes are forked from.
    pub template: TemplateSource,
}

/// Serves MCP on stdin/stdout until the client closes stdin; returns the exit
/// code. Like `zeroboot serve`, it starts without KVM: the client can list the
/// tools, and every call is a tool error saying why KVM is unavailable.
pub fn serve(opts: McpOptions) -> ExitCode {
    let output = match crate::stdio::protocol_stdout() {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot take over stdout");
            return ExitCode::FAILURE;
        }
    };
    let engine = Engine::new(opts.engine).map_err(|e| {
        let detail = crate::error_chain(&e);
        tracing::warn!(error = %detail, "engine unavailable; every tool call will fail");
        detail
    });
    let session = Session::new(engine, opts.template);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("zeroboot-mcp")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        let transport = (tokio::io::stdin(), tokio::fs::File::from_std(output));
        let service = tools::Server::new(session.clone())
            .serve(transport)
            .await
            .map_err(|e| e.to_string())?;
        service.waiting().await.map_err(|e| e.to_string())
    });
    // Every sandbox and pooled VM goes with the session, whatever ended it.
    session.shutdown();
    runtime.shutdown_background();
    match served {
        Ok(reason) => {
            tracing::info!(?reason, "MCP session ended");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "MCP session failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_argument_is_a_builtin_name_or_an_existing_file() {
        assert_eq!(
            TemplateSource::parse("bare"),
            Ok(TemplateSource::Builtin("bare".into()))
        );
        let file = std::env::temp_dir().join(format!("zb-mcp-tpl-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let arg = file.to_str().unwrap();
        assert_eq!(
            TemplateSource::parse(arg),
            Ok(TemplateSource::File(file.clone()))
        );
        std::fs::remove_file(&file).unwrap();
        assert!(TemplateSource::parse(arg).unwrap_err().contains("no such"));
        assert!(TemplateSource::parse("./bare").is_err());
        assert!(TemplateSource::parse("").is_err());
    }

    #[test]
    fn a_spec_is_read_and_checked_when_the_server_starts() {
        let dir = std::env::temp_dir().join(format!("zb-mcp-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("zeroboot.toml");
        std::fs::write(&good, "[python]\npreload = [\"json\"]\n").unwrap();
        let arg = good.to_str().unwrap();
        match TemplateSource::parse(arg) {
            Ok(TemplateSource::Spec(path, spec)) => {
                assert_eq!(path, good);
                assert_eq!(spec.python.preload, ["json"]);
            }
            other => panic!("{other:?}"),
        }
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[python]\npreloads = [\"json\"]\n").unwrap();
        let err = TemplateSource::parse(bad.to_str().unwrap()).unwrap_err();
        assert!(err.contains("preloads"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
