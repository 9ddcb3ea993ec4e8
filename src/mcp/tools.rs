//! The tools: each one's input and result shape (their JSON Schemas come from
//! these types and their doc comments) and its translation into session and
//! engine calls. Nothing here knows JSON-RPC or KVM.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{Json, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::progress::{Progress, excerpt};
use super::session::Session;
use super::{TemplateSource, ToolError};
use crate::engine::{
    Branching, CancelToken, CodeRequest, Engine, EngineError, ExecRequest, ExecResult, Language,
    OutputStream, SandboxState,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The MCP server: one per connection.
#[derive(Clone)]
pub(super) struct Server {
    session: Arc<Session>,
    tool_router: ToolRouter<Server>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ExecArgs {
    /// Program and arguments, e.g. ["echo", "hello"]. Not run through a shell.
    argv: Vec<String>,
    /// Text given to the program's standard input.
    #[serde(default)]
    stdin: Option<String>,
    /// Environment variables added for this program.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Working directory inside the sandbox.
    #[serde(default)]
    cwd: Option<String>,
    /// Deadline in milliseconds (default: the server's, 30000). A program still
    /// running then is killed and the call is a tool error.
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Sandbox id from `fork`; default: the session's sandbox, created on first use.
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct ExecOutput {
    /// The sandbox the program ran in.
    sandbox: String,
    /// Standard output (invalid UTF-8 replaced by U+FFFD).
    stdout: String,
    /// Standard error (invalid UTF-8 replaced by U+FFFD).
    stderr: String,
    /// Exit code; null when a signal ended the program.
    exit_code: Option<i32>,
    /// The signal that ended the program, if one did.
    signal: Option<i32>,
    /// Output beyond the server's cap was dropped.
    truncated: bool,
    /// Wall time of the call in microseconds.
    duration_us: u64,
}

/// What `run_code`'s code is written in.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum CodeLanguage {
    /// Python 3 (the template's interpreter).
    #[default]
    Python,
    /// JavaScript in Node.js (when the template's image has it).
    Javascript,
    /// Shell code, run as `sh -c` runs it.
    Bash,
}

impl From<CodeLanguage> for Language {
    fn from(l: CodeLanguage) -> Language {
        match l {
            CodeLanguage::Python => Language::Python,
            CodeLanguage::Javascript => Language::JavaScript,
            CodeLanguage::Bash => Language::Bash,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RunCodeArgs {
    /// The code, like a notebook cell: when it ends with an expression
    /// (Python, JavaScript), that value's text comes back as `result`.
    code: String,
    /// `python` (default), `javascript` or `bash`.
    #[serde(default)]
    language: CodeLanguage,
    /// A name: cells with the same name share one interpreter's variables
    /// and imports inside the sandbox (and `snapshot` branches them). Without
    /// it every call runs in a fresh interpreter.
    #[serde(default)]
    context: Option<String>,
    /// Environment variables set before the code runs.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Working directory inside the sandbox.
    #[serde(default)]
    cwd: Option<String>,
    /// Deadline in milliseconds (default: the server's, 30000). Code still
    /// running then is stopped and the call is a tool error; a context
    /// survives it when its interpreter could be interrupted.
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Sandbox id from `fork`; default: the session's sandbox, created on first use.
    #[serde(default)]
    sandbox: Option<String>,
}

/// An uncaught exception.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct CodeError {
    /// The exception's type, e.g. `ZeroDivisionError`.
    name: String,
    /// Its message.
    value: String,
    /// The formatted traceback.
    traceback: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct RunCodeOutput {
    /// The sandbox the code ran in.
    sandbox: String,
    /// Standard output (invalid UTF-8 replaced by U+FFFD).
    stdout: String,
    /// Standard error (invalid UTF-8 replaced by U+FFFD).
    stderr: String,
    /// Exit code (non-zero after an uncaught exception); null when a signal
    /// ended the interpreter.
    exit_code: Option<i32>,
    /// The text of the last expression's value, when the code ended with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<String>,
    /// The uncaught exception, if there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<CodeError>,
    /// Output beyond the server's cap was dropped.
    truncated: bool,
    /// Wall time of the call in microseconds.
    duration_us: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct WriteFileArgs {
    /// Absolute path inside the sandbox; an existing file is replaced.
    path: String,
    /// The file's content as text (UTF-8). Give this or `content_base64`.
    #[serde(default)]
    content: Option<String>,
    /// The file's content as base64, for binary files.
    #[serde(default)]
    content_base64: Option<String>,
    /// Permission bits (default 0o644 = 420).
    #[serde(default)]
    mode: Option<u32>,
    /// Sandbox id; default: the session's sandbox.
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct WriteFileOutput {
    /// The sandbox written to.
    sandbox: String,
    /// The path written.
    path: String,
    /// Bytes written.
    bytes: usize,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadFileArgs {
    /// Absolute path inside the sandbox.
    path: String,
    /// Largest file accepted in bytes (default and maximum: the server's limit).
    #[serde(default)]
    max_bytes: Option<usize>,
    /// Sandbox id; default: the session's sandbox.
    #[serde(default)]
    sandbox: Option<String>,
}

/// How `content` is encoded.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Encoding {
    /// The file is valid UTF-8 and `content` is its text.
    Utf8,
    /// The file is binary and `content` is its base64.
    Base64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct ReadFileOutput {
    /// The sandbox read from.
    sandbox: String,
    /// The path read.
    path: String,
    /// The file's content, as `encoding` says.
    content: String,
    /// `utf8` for text, `base64` for binary content.
    encoding: Encoding,
    /// The file's size in bytes.
    bytes: usize,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SandboxArg {
    /// Sandbox id; default: the session's sandbox.
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct SnapshotOutput {
    /// The branch: pass it to `fork` as `from` to start sandboxes in exactly
    /// this state (memory, files, processes).
    branch: String,
    /// The sandbox that was captured; it carries on unchanged.
    sandbox: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ForkArgs {
    /// A branch from `snapshot`; default: the session's template.
    #[serde(default)]
    from: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct ForkOutput {
    /// The new sandbox; pass it as `sandbox` to the other tools.
    sandbox: String,
    /// What it was forked from (a template or a branch).
    from: String,
    /// Time the fork took in microseconds.
    fork_us: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ListArgs {}

#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct SandboxEntry {
    /// Its id.
    sandbox: String,
    /// The template or branch it was forked from.
    from: String,
    /// `ready`, `busy` or `broken` (only `kill` works on a broken one).
    state: String,
    /// True for the session's default sandbox.
    default: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct BranchEntry {
    /// Its id (pass to `fork` as `from`).
    branch: String,
    /// What it is: the session's template, or the sandbox it was captured from.
    source: String,
    /// Live sandboxes forked from it.
    sandboxes: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct ListOutput {
    /// Where the session's template comes from.
    template_source: String,
    /// The session's template, once loaded.
    template: Option<String>,
    /// The session's default sandbox, once created.
    default_sandbox: Option<String>,
    /// Every live sandbox.
    sandboxes: Vec<SandboxEntry>,
    /// The session's template and every branch.
    branches: Vec<BranchEntry>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct KillOutput {
    /// The sandbox killed.
    sandbox: String,
}

#[tool_router]
impl Server {
    pub fn new(session: Arc<Session>) -> Server {
        Server {
            session,
            tool_router: Self::tool_router(),
        }
    }

    /// Runs a program in a sandbox (a KVM virtual machine forked from the
    /// template in under a millisecond) and returns its output and exit code.
    /// A non-zero exit code is a result, not an error; a timeout is an error.
    #[tool]
    async fn exec(
        &self,
        Parameters(a): Parameters<ExecArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ExecOutput>, ToolError> {
        let progress = Progress::new(&ctx);
        let sandbox = self.session.sandbox(a.sandbox, &ctx, &progress).await?;
        let req = ExecRequest {
            argv: a.argv,
            env: a.env.into_iter().collect(),
            cwd: a.cwd.unwrap_or_default(),
            stdin: a.stdin.unwrap_or_default().into_bytes(),
            timeout: a.timeout_ms.map(Duration::from_millis),
            ..Default::default()
        };
        let (id, timeout) = (sandbox.clone(), req.timeout);
        let r = self
            .streamed(
                &sandbox,
                &ctx,
                &progress,
                timeout,
                move |e, cancel, out| e.exec(&id, &req, cancel, out),
                |r| r,
            )
            .await?;
        Ok(Json(ExecOutput {
            sandbox,
            stdout: text(&r.stdout),
            stderr: text(&r.stderr),
            exit_code: r.exit_code,
            signal: r.signal,
            truncated: r.truncated,
            duration_us: r.duration.as_micros() as u64,
        }))
    }

    /// Runs Python, JavaScript or shell code in a sandbox like a notebook
    /// cell: output, exit code, the last expression's value as `result`, and
    /// an uncaught exception as `error` (a result, not a tool error). With
    /// `context`, cells share one interpreter's state; without it each call
    /// starts a fresh, already warm interpreter.
    #[tool]
    async fn run_code(
        &self,
        Parameters(a): Parameters<RunCodeArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RunCodeOutput>, ToolError> {
        let progress = Progress::new(&ctx);
        let sandbox = self.session.sandbox(a.sandbox, &ctx, &progress).await?;
        let req = CodeRequest {
            language: a.language.into(),
            code: a.code,
            context: a.context,
            env: a.env.into_iter().collect(),
            cwd: a.cwd.unwrap_or_default(),
            timeout: a.timeout_ms.map(Duration::from_millis),
            output_cap: None,
        };
        let (id, timeout) = (sandbox.clone(), req.timeout);
        let r = self
            .streamed(
                &sandbox,
                &ctx,
                &progress,
                timeout,
                move |e, cancel, out| e.run_code(&id, &req, cancel, out),
                |r| &r.exec,
            )
            .await?;
        Ok(Json(RunCodeOutput {
            sandbox,
            stdout: text(&r.exec.stdout),
            stderr: text(&r.exec.stderr),
            exit_code: r.exec.exit_code,
            result: r.result,
            error: r.error.map(|e| CodeError {
                name: e.name,
                value: e.value,
                traceback: e.traceback,
            }),
            truncated: r.exec.truncated,
            duration_us: r.exec.duration.as_micros() as u64,
        }))
    }

    /// Writes a file into a sandbox (text, or binary as base64), replacing any
    /// file at that path. The file appears whole or not at all.
    #[tool]
    async fn write_file(
        &self,
        Parameters(a): Parameters<WriteFileArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<WriteFileOutput>, ToolError> {
        let data = match (a.content, a.content_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => B64
                .decode(b64.as_bytes())
                .map_err(|e| ToolError::InvalidArgument(format!("content_base64: {e}")))?,
            _ => {
                return Err(ToolError::InvalidArgument(
                    "give exactly one of `content` or `content_base64`".into(),
                ));
            }
        };
        let mode = a.mode.unwrap_or(0o644);
        if mode > 0o7777 {
            return Err(ToolError::InvalidArgument(
                "mode must be at most 0o7777 (4095)".into(),
            ));
        }
        let progress = Progress::new(&ctx);
        let sandbox = self.session.sandbox(a.sandbox, &ctx, &progress).await?;
        let bytes = data.len();
        let (id, path) = (sandbox.clone(), a.path.clone());
        self.session
            .run_on(&sandbox, &ctx, move |engine, cancel| {
                engine.write_file(&id, &path, data, mode, None, cancel)
            })
            .await?;
        Ok(Json(WriteFileOutput {
            sandbox,
            path: a.path,
            bytes,
        }))
    }

    /// Reads a file from a sandbox: text as is, binary content as base64.
    #[tool]
    async fn read_file(
        &self,
        Parameters(a): Parameters<ReadFileArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ReadFileOutput>, ToolError> {
        let progress = Progress::new(&ctx);
        let sandbox = self.session.sandbox(a.sandbox, &ctx, &progress).await?;
        let (id, path, max) = (sandbox.clone(), a.path.clone(), a.max_bytes);
        let data = self
            .session
            .run_on(&sandbox, &ctx, move |engine, cancel| {
                let max = max.unwrap_or(engine.config().max_file_bytes);
                engine.read_file(&id, &path, max, None, cancel)
            })
            .await?;
        let bytes = data.len();
        let (content, encoding) = match String::from_utf8(data) {
            Ok(text) => (text, Encoding::Utf8),
            Err(e) => (B64.encode(e.as_bytes()), Encoding::Base64),
        };
        Ok(Json(ReadFileOutput {
            sandbox,
            path: a.path,
            content,
            encoding,
            bytes,
        }))
    }

    /// Captures a sandbox's current state (memory, files, running processes)
    /// as a branch; `fork` with `from` starts new sandboxes from it. The
    /// sandbox itself carries on unchanged.
    #[tool]
    async fn snapshot(
        &self,
        Parameters(a): Parameters<SandboxArg>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SnapshotOutput>, ToolError> {
        let progress = Progress::new(&ctx);
        let sandbox = self.session.sandbox(a.sandbox, &ctx, &progress).await?;
        let id = sandbox.clone();
        let info = self
            .session
            .run_on(&sandbox, &ctx, move |engine, cancel| {
                engine.snapshot_sandbox(&id, Branching::Layer, cancel)
            })
            .await?;
        Ok(Json(SnapshotOutput {
            branch: info.template,
            sandbox,
        }))
    }

    /// Starts a new sandbox from the session's template, or from a branch
    /// that `snapshot` returned. Sandboxes never see each other's changes.
    #[tool]
    async fn fork(
        &self,
        Parameters(a): Parameters<ForkArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ForkOutput>, ToolError> {
        let progress = Progress::new(&ctx);
        let from = match a.from {
            Some(branch) => branch,
            None => self.session.template(&ctx, &progress).await?,
        };
        let template = from.clone();
        let forked = self
            .session
            .run(&ctx, move |engine, _| engine.fork(&template))
            .await?;
        Ok(Json(ForkOutput {
            sandbox: forked.sandbox,
            from,
            fork_us: forked.fork_us,
        }))
    }

    /// Lists the live sandboxes and the branches they can be forked from.
    #[tool]
    async fn list(
        &self,
        Parameters(ListArgs {}): Parameters<ListArgs>,
    ) -> Result<Json<ListOutput>, ToolError> {
        let (template, default_sandbox) = self.session.defaults().await;
        let engine = self.session.engine()?;
        let sandboxes = engine
            .list_sandboxes()
            .into_iter()
            .map(|s| SandboxEntry {
                default: default_sandbox.as_deref() == Some(&s.sandbox),
                sandbox: s.sandbox,
                from: s.template,
                state: match s.state {
                    SandboxState::Ready => "ready".into(),
                    SandboxState::Busy => "busy".into(),
                    SandboxState::Broken { .. } => "broken".into(),
                },
            })
            .collect();
        let branches = engine
            .list_templates()
            .into_iter()
            .map(|t| BranchEntry {
                branch: t.template,
                source: t.source,
                sandboxes: t.sandboxes,
            })
            .collect();
        Ok(Json(ListOutput {
            template_source: self.session.source().to_string(),
            template,
            default_sandbox,
            sandboxes,
            branches,
        }))
    }

    /// Kills a sandbox and frees its memory at once. Killing the session's
    /// default sandbox makes the next call start a fresh one.
    #[tool]
    async fn kill(
        &self,
        Parameters(a): Parameters<SandboxArg>,
    ) -> Result<Json<KillOutput>, ToolError> {
        let sandbox = match a.sandbox {
            Some(id) => id,
            None => match self.session.defaults().await.1 {
                Some(id) => id,
                None => {
                    return Err(ToolError::InvalidArgument(
                        "no sandbox given and the session has no default sandbox yet".into(),
                    ));
                }
            },
        };
        self.session.kill(&sandbox).await?;
        Ok(Json(KillOutput { sandbox }))
    }
}

/// Forwards an output chunk as a progress message, when the client asked
/// for progress.
impl Server {
    /// Runs `call` on sandbox `id` with its output forwarded to the client as
    /// progress. A run that reached its deadline (`timeout`, or the engine's
    /// default) is the tool's `TimedOut` error, with the output it made;
    /// `exec` finds the run's exec result in what `call` returns.
    async fn streamed<T: Send + 'static>(
        &self,
        id: &str,
        ctx: &RequestContext<RoleServer>,
        progress: &Progress,
        timeout: Option<Duration>,
        call: impl FnOnce(
            &Engine,
            &CancelToken,
            &mut dyn FnMut(OutputStream, &[u8]),
        ) -> Result<T, EngineError>
        + Send
        + 'static,
        exec: impl Fn(&T) -> &ExecResult,
    ) -> Result<T, ToolError> {
        let (tx, forwarding) = progress.forwarder().unzip();
        let forwarding = async {
            if let Some(forwarding) = forwarding {
                forwarding.await;
            }
        };
        let running = self.session.run_on(id, ctx, move |engine, cancel| {
            // The engine checks the deadline against its limits.
            let timeout_ms =
                timeout.map_or(engine.config().default_timeout_ms, |t| t.as_millis() as u64);
            call(engine, cancel, &mut |stream, data| {
                forward(tx.as_ref(), stream, data)
            })
            .map(|r| (r, timeout_ms))
        });
        // The sender goes with the finished call, which ends the forwarding.
        let (ran, ()) = tokio::join!(running, forwarding);
        let (r, timeout_ms) = ran?;
        let e = exec(&r);
        if e.timed_out {
            return Err(ToolError::TimedOut {
                timeout_ms,
                stdout: text(&e.stdout),
                stderr: text(&e.stderr),
            });
        }
        Ok(r)
    }
}

/// Output bytes as the text a tool result carries.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn forward(
    tx: Option<&tokio::sync::mpsc::UnboundedSender<String>>,
    stream: OutputStream,
    data: &[u8],
) {
    if let Some(tx) = tx {
        let label = match stream {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        };
        // The receiver lives until the call returns.
        let _ = tx.send(format!("{label}: {}", excerpt(data)));
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        let template = match self.session.source() {
            TemplateSource::Builtin(name) => format!("the built-in `{name}` template"),
            TemplateSource::File(path) => format!("the template file {}", path.display()),
            TemplateSource::Spec(path, _) => {
                format!("the template built from the spec {}", path.display())
            }
        };
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("zeroboot", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "Each sandbox is a KVM virtual machine forked copy-on-write from {template}. \
                 Tools act on the session's default sandbox (created on first use) unless \
                 given `sandbox`. `snapshot` branches a sandbox's state; `fork` with `from` \
                 starts new sandboxes from a branch."
            ))
    }
}
