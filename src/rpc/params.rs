//! The wire shapes: params and results of every method, as plain serde
//! types, and their translation to and from the engine's own types (which
//! know nothing of serde or JSON). Params reject unknown members, so a
//! misspelt option (`timeout` for `timeout_ms`) is an invalid-params error
//! rather than silently ignored. schema/openrpc.json describes the same
//! shapes; the integration tests hold the two together.

use std::collections::BTreeMap;
use std::time::Duration;

use jsonrpsee::types::ErrorObjectOwned;
use serde::{Deserialize, Serialize};

use super::{errors, output};
use crate::engine::{self, ExecRequest, Program, SandboxState};

/// `template.load`: exactly one of `builtin` or `path`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateLoad {
    /// A built-in template: "bare".
    pub builtin: Option<String>,
    /// A file written by `template.save`.
    pub path: Option<String>,
    /// Guest memory of a built-in template, in MiB (default: its own size).
    pub memory_mib: Option<usize>,
}

/// `template.build`: `kernel` and `initramfs`, or `spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateBuild {
    /// A Linux kernel (bzImage) on the worker's host.
    pub kernel: Option<String>,
    /// An initramfs whose `/init` is the zeroboot agent.
    pub initramfs: Option<String>,
    /// A template spec (schema/template-spec.json), checked by the engine.
    pub spec: Option<serde_json::Value>,
    /// Guest memory in MiB.
    pub memory_mib: Option<usize>,
    /// Kernel command line (default: the image's).
    pub cmdline: Option<String>,
}

/// `template.unload`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateUnload {
    /// The template id.
    pub template: String,
    /// Kill its live sandboxes instead of refusing.
    #[serde(default)]
    pub force: bool,
    /// Leave its live sandboxes running instead of refusing.
    #[serde(default)]
    pub keep_sandboxes: bool,
}

/// `template.save`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSave {
    /// The template id.
    pub template: String,
    /// Where to write the file.
    pub path: String,
}

/// `sandbox.fork`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxFork {
    /// The template id.
    pub template: String,
    /// Fork this many at once (the result is then a list).
    pub count: Option<usize>,
    /// Most private memory each sandbox may dirty, in MiB (default: the
    /// template's size).
    pub memory_limit_mib: Option<u64>,
    /// The sandboxes' network (absent: the template's; `false`: none).
    #[serde(default)]
    pub network: NetworkParam,
}

/// `network`: absent for the template's, `false` for none, or a policy object.
#[derive(Debug, Default)]
pub enum NetworkParam {
    /// Absent: what the template's spec says.
    #[default]
    Template,
    /// `false`.
    Off,
    /// A policy (boxed: it would make every call's params as large).
    Policy(Box<NetworkPolicy>),
}

impl<'de> Deserialize<'de> for NetworkParam {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(false) => Ok(NetworkParam::Off),
            v @ serde_json::Value::Object(_) => NetworkPolicy::deserialize(v)
                .map(|p| NetworkParam::Policy(Box::new(p)))
                .map_err(|e| D::Error::custom(format!("network: {e}"))),
            _ => Err(D::Error::custom(
                "network must be false or an object {allow, deny, max_connections, max_bytes_per_sec}",
            )),
        }
    }
}

/// A sandbox's network policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Allowed destinations.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Denied destinations (deny wins).
    #[serde(default)]
    pub deny: Vec<String>,
    /// Connections open at once.
    pub max_connections: Option<usize>,
    /// Bandwidth cap each way, bytes per second.
    pub max_bytes_per_sec: Option<u64>,
}

/// The engine's fork options for a fork's (or run's) `network` and
/// `memory_limit_mib`.
pub fn fork_options(
    network: NetworkParam,
    memory_limit_mib: Option<u64>,
) -> crate::engine::ForkOptions {
    use crate::engine::{ForkNetwork, NetworkSpec};
    crate::engine::ForkOptions {
        network: match network {
            NetworkParam::Template => ForkNetwork::Template,
            NetworkParam::Off => ForkNetwork::Off,
            NetworkParam::Policy(p) => ForkNetwork::On(NetworkSpec {
                allow: p.allow,
                deny: p.deny,
                max_connections: p.max_connections,
                max_bytes_per_sec: p.max_bytes_per_sec,
                link: None,
            }),
        },
        memory_limit: memory_limit_mib.map(|mib| mib.saturating_mul(1 << 20)),
    }
}

/// Params naming one sandbox.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxRef {
    /// The sandbox id.
    pub sandbox: String,
}

/// `sandbox.snapshot`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSnapshot {
    /// The sandbox id.
    pub sandbox: String,
    /// Copy its whole memory into a template of its own instead of a layer.
    #[serde(default)]
    pub full_copy: bool,
}

/// `sandbox.list`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxList {
    /// Only sandboxes of this template.
    pub template: Option<String>,
}

/// How output bytes travel in JSON strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 text; invalid sequences become U+FFFD (lossy).
    #[default]
    Utf8,
    /// Standard base64 with padding (exact bytes).
    Base64,
}

/// How `argv` is interpreted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgramKind {
    /// `argv[0]` is the program, the rest its arguments.
    #[default]
    Argv,
    /// `argv[0]` is Python source run by the guest's pre-warmed interpreter.
    Python,
}

/// Declares a params struct carrying every exec param besides its own
/// members (`sandbox.exec` and `sandbox.run` share them; serde's `flatten`
/// would drop `deny_unknown_fields` and buffer the whole object), and
/// `into_exec`, which splits off the exec part.
macro_rules! with_exec_params {
    ($(#[$doc:meta])* pub struct $name:ident { $($(#[$fdoc:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
            /// Program and arguments (non-empty).
            pub argv: Vec<String>,
            /// Standard input as UTF-8 text.
            pub stdin: Option<String>,
            /// Standard input as base64 (exclusive with `stdin`).
            pub stdin_base64: Option<String>,
            /// Environment variables.
            #[serde(default)]
            pub env: BTreeMap<String, String>,
            /// Working directory.
            #[serde(default)]
            pub cwd: String,
            /// Deadline in milliseconds.
            pub timeout_ms: Option<u64>,
            /// Output bytes kept (stdout and stderr together).
            pub output_cap: Option<usize>,
            /// Send output as `sandbox.output` notifications while it runs.
            #[serde(default)]
            pub stream: bool,
            /// Encoding of stdout/stderr in the result and notifications.
            #[serde(default)]
            pub encoding: Encoding,
            /// How `argv` is interpreted.
            #[serde(default)]
            pub program: ProgramKind,
        }

        impl $name {
            /// The exec part, and the rest of the params.
            pub fn into_exec(self) -> (ExecParams, ($($ty,)*)) {
                (
                    ExecParams {
                        argv: self.argv,
                        stdin: self.stdin,
                        stdin_base64: self.stdin_base64,
                        env: self.env,
                        cwd: self.cwd,
                        timeout_ms: self.timeout_ms,
                        output_cap: self.output_cap,
                        stream: self.stream,
                        encoding: self.encoding,
                        program: self.program,
                    },
                    ($(self.$field,)*),
                )
            }
        }
    };
}

with_exec_params! {
    /// `sandbox.exec`.
    pub struct SandboxExec {
        /// The sandbox id.
        pub sandbox: String,
    }
}

with_exec_params! {
    /// `sandbox.run`: fork, exec, kill in one call.
    pub struct SandboxRun {
        /// The template id.
        pub template: String,
        /// Run this many at once (the result is then a list).
        pub count: Option<usize>,
        /// The sandboxes' network (absent: the template's; `false`: none).
        #[serde(default)]
        pub network: NetworkParam,
        /// Most private memory each sandbox may dirty, in MiB (default: the
        /// template's size).
        pub memory_limit_mib: Option<u64>,
    }
}

/// The exec params of `sandbox.exec` and `sandbox.run`.
#[derive(Debug)]
pub struct ExecParams {
    argv: Vec<String>,
    stdin: Option<String>,
    stdin_base64: Option<String>,
    env: BTreeMap<String, String>,
    cwd: String,
    timeout_ms: Option<u64>,
    output_cap: Option<usize>,
    /// Stream output as notifications.
    pub stream: bool,
    /// How output bytes travel.
    pub encoding: Encoding,
    program: ProgramKind,
}

impl ExecParams {
    /// The request in the engine's words (which checks its limits).
    pub fn request(self) -> Result<ExecRequest, ErrorObjectOwned> {
        Ok(ExecRequest {
            stdin: bytes_param(self.stdin, self.stdin_base64, "stdin")?,
            argv: self.argv,
            env: self.env.into_iter().collect(),
            cwd: self.cwd,
            program: match self.program {
                ProgramKind::Argv => Program::Argv,
                ProgramKind::Python => Program::Python,
            },
            timeout: self.timeout_ms.map(Duration::from_millis),
            output_cap: self.output_cap,
        })
    }
}

/// Bytes given as UTF-8 text in `name` or as base64 in `name_base64` (at
/// most one; neither: empty).
pub fn bytes_param(
    text: Option<String>,
    base64: Option<String>,
    name: &str,
) -> Result<Vec<u8>, ErrorObjectOwned> {
    match (text, base64) {
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(b64)) => output::decode_base64(&b64).map_err(errors::invalid_params),
        (None, None) => Ok(Vec::new()),
        (Some(_), Some(_)) => Err(errors::invalid_params(format!(
            "give at most one of `{name}` or `{name}_base64`"
        ))),
    }
}

/// A language `sandbox.run_code` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LanguageName {
    /// Python, in the guest's pre-warmed interpreter.
    Python,
    /// JavaScript, in Node.js.
    Javascript,
    /// Shell code (`sh -c` semantics, bash when the image has it).
    Bash,
}

impl From<LanguageName> for engine::Language {
    fn from(l: LanguageName) -> Self {
        match l {
            LanguageName::Python => engine::Language::Python,
            LanguageName::Javascript => engine::Language::JavaScript,
            LanguageName::Bash => engine::Language::Bash,
        }
    }
}

impl From<engine::Language> for LanguageName {
    fn from(l: engine::Language) -> Self {
        match l {
            engine::Language::Python => LanguageName::Python,
            engine::Language::JavaScript => LanguageName::Javascript,
            engine::Language::Bash => LanguageName::Bash,
        }
    }
}

/// `sandbox.run_code`: exactly one of `sandbox` or `template`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxRunCode {
    /// The sandbox to run in.
    pub sandbox: Option<String>,
    /// Or a template: fork a sandbox, run, kill it.
    pub template: Option<String>,
    /// What `code` is written in.
    pub language: LanguageName,
    /// The source.
    pub code: String,
    /// A persistent context to run in (created on first use).
    pub context: Option<String>,
    /// Deadline in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Environment variables set before the code runs.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory to run in.
    #[serde(default)]
    pub cwd: String,
    /// Output bytes kept (stdout and stderr together).
    pub output_cap: Option<usize>,
    /// Send output as `sandbox.output` notifications while it runs.
    #[serde(default)]
    pub stream: bool,
    /// Encoding of stdout/stderr in the result and notifications.
    #[serde(default)]
    pub encoding: Encoding,
    /// With `template`: the fork's network (absent: the template's;
    /// `false`: none).
    #[serde(default)]
    pub network: NetworkParam,
    /// With `template`: most private memory the fork may dirty, in MiB.
    pub memory_limit_mib: Option<u64>,
}

impl SandboxRunCode {
    /// The engine's request (the engine checks the deadline, the output
    /// cap and the context name).
    pub fn request(&self) -> engine::CodeRequest {
        engine::CodeRequest {
            language: self.language.into(),
            code: self.code.clone(),
            context: self.context.clone(),
            env: self.env.clone().into_iter().collect(),
            cwd: self.cwd.clone(),
            timeout: self.timeout_ms.map(Duration::from_millis),
            output_cap: self.output_cap,
        }
    }
}

/// `sandbox.write_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxWriteFile {
    /// The sandbox id.
    pub sandbox: String,
    /// Absolute path in the guest.
    pub path: String,
    /// Content as UTF-8 text.
    pub data: Option<String>,
    /// Content as base64 (exclusive with `data`).
    pub data_base64: Option<String>,
    /// Permission bits.
    #[serde(default = "default_mode")]
    pub mode: u32,
}

fn default_mode() -> u32 {
    0o644
}

/// `sandbox.read_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxReadFile {
    /// The sandbox id.
    pub sandbox: String,
    /// Absolute path in the guest.
    pub path: String,
    /// Largest content returned.
    pub max_bytes: Option<usize>,
    /// Encoding of `data` in the result.
    #[serde(default)]
    pub encoding: Encoding,
}

/// Params of methods that take none (an empty object, or nothing), and the
/// empty result `{}`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `$/cancelRequest`.
#[derive(Debug, Deserialize)]
pub struct CancelParams {
    /// Id of the call to cancel.
    pub id: Box<serde_json::value::RawValue>,
}

/// A template, as `template.load`, `template.build`, `template.list` and
/// `sandbox.snapshot` describe it.
#[derive(Serialize)]
pub struct TemplateInfo {
    /// Its id.
    pub template: String,
    /// Where it came from.
    pub source: String,
    /// Guest memory size.
    pub memory_bytes: usize,
    /// Live sandboxes forked from it.
    pub sandboxes: usize,
    /// Idle VMs ready for its forks: a root's pool (which also feeds its
    /// branches), or the few a branch keeps restored to itself.
    pub pooled: usize,
    /// Bytes of the memory budget its own memory takes.
    pub charged_bytes: u64,
    /// Branches between it and the template its memory is mapped from.
    pub depth: u32,
    /// Memory it holds above the memory it maps.
    pub memory: TemplateMemory,
}

/// `memory` of a [`TemplateInfo`], in bytes.
#[derive(Serialize)]
pub struct TemplateMemory {
    /// Pages it captured itself.
    pub own_bytes: u64,
    /// Pages every fork of it gets written over the mapped memory.
    pub view_bytes: u64,
    /// Memory its page stores hold, shared with its ancestors and branches.
    pub held_bytes: u64,
}

impl From<engine::TemplateInfo> for TemplateInfo {
    fn from(t: engine::TemplateInfo) -> Self {
        TemplateInfo {
            template: t.template,
            source: t.source,
            memory_bytes: t.memory_bytes,
            sandboxes: t.sandboxes,
            pooled: t.pooled,
            charged_bytes: t.charged_bytes,
            depth: t.depth,
            memory: TemplateMemory {
                own_bytes: t.memory.own_bytes,
                view_bytes: t.memory.view_bytes,
                held_bytes: t.memory.held_bytes,
            },
        }
    }
}

/// Result of `template.list`.
#[derive(Serialize)]
pub struct TemplateList {
    /// Every loaded template, by id.
    pub templates: Vec<TemplateInfo>,
}

/// Result of `template.unload`.
#[derive(Serialize)]
pub struct Unloaded {
    /// The template.
    pub template: String,
    /// Sandboxes killed with it (only with `force`).
    pub killed: usize,
}

/// Result of `template.save`.
#[derive(Serialize)]
pub struct Saved {
    /// The template.
    pub template: String,
    /// The file written.
    pub path: String,
    /// Its size.
    pub bytes: u64,
}

/// Result of `sandbox.fork`.
#[derive(Serialize)]
pub struct Forked {
    /// The new sandbox.
    pub sandbox: String,
    /// Time the fork took, as the engine saw it.
    pub fork_us: u64,
    /// Whether a pooled VM was used (false: created on the request path).
    pub pooled: bool,
}

impl From<engine::Forked> for Forked {
    fn from(f: engine::Forked) -> Self {
        Forked {
            sandbox: f.sandbox,
            fork_us: f.fork_us,
            pooled: f.pooled,
        }
    }
}

/// Result of `sandbox.fork` with `count`.
#[derive(Serialize)]
pub struct ForkedMany {
    /// The new sandboxes.
    pub sandboxes: Vec<Forked>,
    /// Wall time of the whole call.
    pub total_us: u64,
}

/// One sandbox in `sandbox.list`.
#[derive(Serialize)]
pub struct SandboxInfo {
    /// Its id.
    pub sandbox: String,
    /// Its template.
    pub template: String,
    /// "ready", "busy" or "broken".
    pub state: &'static str,
    /// Why it is broken, if it is.
    pub reason: Option<String>,
}

impl From<engine::SandboxInfo> for SandboxInfo {
    fn from(s: engine::SandboxInfo) -> Self {
        let (state, reason) = match s.state {
            SandboxState::Ready => ("ready", None),
            SandboxState::Busy => ("busy", None),
            SandboxState::Broken { reason } => ("broken", Some(reason)),
        };
        SandboxInfo {
            sandbox: s.sandbox,
            template: s.template,
            state,
            reason,
        }
    }
}

/// Result of `sandbox.list`.
#[derive(Serialize)]
pub struct SandboxListResult {
    /// Live sandboxes, by id.
    pub sandboxes: Vec<SandboxInfo>,
}

/// Result of `sandbox.stats`.
#[derive(Serialize)]
pub struct SandboxStats {
    /// Its id.
    pub sandbox: String,
    /// Pages the sandbox holds privately (copied on write).
    pub dirty_pages: u64,
    /// Same, in KiB.
    pub private_dirty_kib: u64,
    /// VM exits to userspace so far.
    pub exits: u64,
    /// Requests served (execs, file operations, snapshots).
    pub execs: u64,
    /// Time since fork.
    pub uptime_ms: u64,
    /// Port accesses nothing answered.
    pub stray_pio: u64,
    /// MMIO accesses nothing answered.
    pub stray_mmio: u64,
    /// Most private memory it may hold, in bytes.
    pub memory_limit_bytes: u64,
    /// Network counters; null for a sandbox without network.
    pub network: Option<crate::net::NetStats>,
}

impl From<engine::SandboxStats> for SandboxStats {
    fn from(s: engine::SandboxStats) -> Self {
        SandboxStats {
            sandbox: s.sandbox,
            dirty_pages: s.dirty_pages,
            private_dirty_kib: s.private_dirty_kib,
            exits: s.exits,
            execs: s.execs,
            uptime_ms: s.uptime_ms,
            stray_pio: s.stray_pio,
            stray_mmio: s.stray_mmio,
            memory_limit_bytes: s.memory_limit_bytes,
            network: s.network,
        }
    }
}

/// Result of `sandbox.exec`.
#[derive(Serialize)]
pub struct ExecResult {
    /// Standard output in `encoding`.
    pub stdout: String,
    /// Standard error in `encoding`.
    pub stderr: String,
    /// The encoding of `stdout` and `stderr`.
    pub encoding: Encoding,
    /// Exit code; null when a signal ended the program.
    pub exit_code: Option<i32>,
    /// Terminating signal, if any.
    pub signal: Option<i32>,
    /// The guest agent's own deadline killed the program (the sandbox stays usable).
    pub timed_out: bool,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
    /// Wall time of the call on the host.
    pub duration_us: u64,
}

impl ExecResult {
    /// The engine's result, its output in `encoding`.
    pub fn new(r: engine::ExecResult, encoding: Encoding) -> ExecResult {
        ExecResult {
            stdout: output::encode(&r.stdout, encoding),
            stderr: output::encode(&r.stderr, encoding),
            encoding,
            exit_code: r.exit_code,
            signal: r.signal,
            timed_out: r.timed_out,
            truncated: r.truncated,
            duration_us: r.duration.as_micros() as u64,
        }
    }
}

/// Result of `sandbox.run`: the exec's result and the sandbox it ran in
/// (already killed).
#[derive(Serialize)]
pub struct RunResult {
    /// The sandbox the program ran in, as named in its `sandbox.output`
    /// notifications; gone by the time of this answer.
    pub sandbox: String,
    /// Time the fork took.
    pub fork_us: u64,
    /// The exec's result.
    #[serde(flatten)]
    pub exec: ExecResult,
}

/// One run of `sandbox.run` with `count`: its result, or its error.
#[derive(Serialize)]
#[serde(untagged)]
pub enum RunOutcome {
    /// The program ran to its end.
    Ran(RunResult),
    /// It did not (timeout, guest fault...).
    Failed {
        /// The sandbox it was to run in (already killed).
        sandbox: String,
        /// Why it failed, as a JSON-RPC error object.
        error: ErrorObjectOwned,
    },
}

/// Result of `sandbox.run` with `count`.
#[derive(Serialize)]
pub struct RunMany {
    /// One outcome per run, in no particular order.
    pub results: Vec<RunOutcome>,
    /// Wall time of the whole call.
    pub total_us: u64,
}

/// An uncaught exception in `sandbox.run_code`'s result.
#[derive(Serialize)]
pub struct CodeErrorWire {
    /// The exception's type.
    pub name: String,
    /// Its message.
    pub value: String,
    /// The formatted traceback.
    pub traceback: String,
}

/// Result of `sandbox.run_code`.
#[derive(Serialize)]
pub struct RunCodeResult {
    /// Output and status, as `sandbox.exec` reports them.
    #[serde(flatten)]
    pub exec: ExecResult,
    /// The text of the last expression's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The uncaught exception.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<CodeErrorWire>,
}

/// One entry of `sandbox.contexts`' result.
#[derive(Serialize)]
pub struct ContextEntry {
    /// Its name.
    pub name: String,
    /// Its language.
    pub language: LanguageName,
}

/// Result of `sandbox.contexts`.
#[derive(Serialize)]
pub struct ContextList {
    /// The live contexts, by name.
    pub contexts: Vec<ContextEntry>,
}

impl From<Vec<engine::ContextInfo>> for ContextList {
    fn from(contexts: Vec<engine::ContextInfo>) -> ContextList {
        ContextList {
            contexts: contexts
                .into_iter()
                .map(|c| ContextEntry {
                    name: c.name,
                    language: c.language.into(),
                })
                .collect(),
        }
    }
}

/// Params of the `template.progress` notification.
#[derive(Serialize)]
pub struct BuildProgress<'a> {
    /// Id of the `template.build` call.
    pub request: &'a serde_json::value::RawValue,
    /// The phase and how far it got.
    #[serde(flatten)]
    pub progress: &'a crate::image::progress::Progress,
}

/// Result of `template.build` with a spec: the template and what its image holds.
#[derive(Serialize)]
pub struct SpecBuilt {
    /// The template.
    #[serde(flatten)]
    pub template: TemplateInfo,
    /// Base, packages with versions, preloads, sizes, the spec.
    pub manifest: crate::image::spec_image::Manifest,
}

/// Params of the `sandbox.output` notification.
#[derive(Serialize)]
pub struct Output<'a> {
    /// The sandbox.
    pub sandbox: &'a str,
    /// Id of the `sandbox.exec`, `sandbox.run` or `sandbox.run_code` call
    /// that produced it.
    pub request: &'a serde_json::value::RawValue,
    /// "stdout" or "stderr".
    pub stream: &'static str,
    /// The chunk in `encoding`.
    pub data: String,
    /// The encoding of `data`.
    pub encoding: Encoding,
}

/// Result of `sandbox.write_file`.
#[derive(Serialize)]
pub struct Written {
    /// Bytes written.
    pub bytes: usize,
}

/// Result of `sandbox.read_file`.
#[derive(Serialize)]
pub struct FileContent {
    /// Content in `encoding`.
    pub data: String,
    /// Its encoding.
    pub encoding: Encoding,
    /// Content length in bytes.
    pub bytes: usize,
}
