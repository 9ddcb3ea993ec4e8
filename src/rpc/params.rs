//! Params and results of every method, as plain serde types. Params reject
//! unknown members, so a misspelt option (`timeout` for `timeout_ms`) is an
//! invalid-params error rather than silently ignored. schema/openrpc.json
//! describes the same shapes; the integration tests hold the two together.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// A policy.
    Policy(NetworkPolicy),
}

impl<'de> Deserialize<'de> for NetworkParam {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(false) => Ok(NetworkParam::Off),
            v @ serde_json::Value::Object(_) => NetworkPolicy::deserialize(v)
                .map(NetworkParam::Policy)
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

impl NetworkParam {
    /// The engine's fork options for this param.
    pub fn fork_options(self) -> crate::engine::ForkOptions {
        use crate::engine::{ForkNetwork, NetworkSpec};
        crate::engine::ForkOptions {
            network: match self {
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
        }
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

/// `sandbox.exec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxExec {
    /// The sandbox id.
    pub sandbox: String,
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

/// Params of methods that take none (an empty object, or nothing).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `$/cancelRequest`.
#[derive(Debug, Deserialize)]
pub struct CancelParams {
    /// Id of the call to cancel.
    pub id: Box<serde_json::value::RawValue>,
}

/// Result of `template.list`.
#[derive(Serialize)]
pub struct TemplateList {
    /// Every loaded template, by id.
    pub templates: Vec<crate::engine::TemplateInfo>,
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

/// Result of `sandbox.fork` with `count`.
#[derive(Serialize)]
pub struct ForkedMany {
    /// The new sandboxes.
    pub sandboxes: Vec<crate::engine::Forked>,
    /// Wall time of the whole call.
    pub total_us: u64,
}

/// Result of `sandbox.list`.
#[derive(Serialize)]
pub struct SandboxListResult {
    /// Live sandboxes, by id.
    pub sandboxes: Vec<crate::engine::SandboxInfo>,
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
    pub template: crate::engine::TemplateInfo,
    /// Base, packages with versions, preloads, sizes, the spec.
    pub manifest: crate::image::spec_image::Manifest,
}

/// Params of the `sandbox.output` notification.
#[derive(Serialize)]
pub struct Output<'a> {
    /// The sandbox.
    pub sandbox: &'a str,
    /// Id of the `sandbox.exec` call that produced it.
    pub request: &'a serde_json::value::RawValue,
    /// "stdout" or "stderr".
    pub stream: &'static str,
    /// The chunk in `encoding`.
    pub data: String,
    /// The encoding of `data`.
    pub encoding: Encoding,
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
