//! The methods: a jsonrpsee [`RpcModule`] whose callbacks parse params, run
//! the engine call on the blocking pool (engine calls block for as long as the
//! guest runs) and serialise the result. Per-call context — the call's id,
//! its cancel token, the channel for notifications — reaches a callback as a
//! [`Call`] in the request's extensions.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jsonrpsee::RpcModule;
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::errors;
use super::framing::Framing;
use super::message::{self, Id};
use super::output::{self, ChunkEncoder};
use super::params::*;
use super::server::Outbox;
use crate::agent::{ExecRequest, Program, Stream};
use crate::engine::{
    Branching, CancelToken, DEFAULT_LINUX_MEMORY_MIB, EXEC_HOST_GRACE_MS, Engine, ExecOptions,
    Unload,
};

/// The OpenRPC document returned by `rpc.discover`.
pub const OPENRPC: &str = include_str!("../../schema/openrpc.json");

/// The OpenRPC document, compacted once (a reply must fit on one NDJSON line).
fn openrpc() -> &'static RawValue {
    static DOC: std::sync::LazyLock<Box<RawValue>> = std::sync::LazyLock::new(|| {
        let doc: serde_json::Value =
            serde_json::from_str(OPENRPC).expect("schema/openrpc.json is JSON");
        serde_json::value::to_raw_value(&doc).expect("a JSON value serialises")
    });
    &DOC
}

/// Largest `output_cap` a call may ask for (unless the engine default is larger).
pub const MAX_OUTPUT_CAP: usize = 64 << 20;
/// Largest `count` of one `sandbox.fork`.
pub const MAX_FORK_COUNT: usize = 4096;
/// Smallest `memory_mib` of `template.build`.
pub const MIN_LINUX_MEMORY_MIB: usize = 64;
/// Largest `memory_mib` of `template.build`.
pub const MAX_LINUX_MEMORY_MIB: usize = 65536;
/// Built-in templates `template.load` knows.
pub const BUILTIN_TEMPLATES: &[&str] = &["bare"];

/// What every call can see.
pub struct State {
    /// The engine, or why KVM could not be opened.
    pub engine: Result<Engine, String>,
    /// Largest accepted message body.
    pub max_message_bytes: usize,
    /// Largest file `sandbox.write_file` and `sandbox.read_file` move.
    pub max_file_bytes: usize,
    /// Set once a `shutdown` request arrives.
    pub shutting_down: AtomicBool,
    /// When the worker started.
    pub started: Instant,
}

impl State {
    fn engine(&self) -> Result<Engine, ErrorObjectOwned> {
        self.engine
            .clone()
            .map_err(|detail| errors::kvm_unavailable(&detail))
    }
}

/// Per-call context, put in the request's extensions by the server.
#[derive(Clone)]
pub struct Call {
    /// The id the peer gave the call.
    pub id: Id,
    /// Cancelled by `$/cancelRequest` for this id.
    pub cancel: CancelToken,
    /// Where notifications for the peer go.
    pub out: Outbox,
    /// The framing the peer speaks.
    pub framing: Framing,
}

impl Call {
    fn notify(&self, method: &str, params: impl Serialize) {
        self.out
            .send(self.framing, message::notification(method, params));
    }
}

/// Parses by-name params; absent params read as `{}`.
fn parse<T: DeserializeOwned>(params: &Params<'_>) -> Result<T, ErrorObjectOwned> {
    let text = params.as_str().unwrap_or("{}");
    serde_json::from_str(text).map_err(|e| errors::invalid_params(e.to_string()))
}

fn raw(v: impl Serialize) -> Result<Box<RawValue>, ErrorObjectOwned> {
    serde_json::value::to_raw_value(&v).map_err(|e| errors::internal(e.to_string()))
}

/// Registers a method that runs `f` with the engine on the blocking pool.
fn engine_method<P, R, F>(module: &mut RpcModule<State>, name: &'static str, f: F)
where
    P: DeserializeOwned + Send + 'static,
    R: Serialize + 'static,
    F: Fn(&Engine, P, &Call) -> Result<R, ErrorObjectOwned> + Clone + Send + Sync + 'static,
{
    module
        .register_async_method(name, move |params, state, ext| {
            let f = f.clone();
            async move {
                let p: P = parse(&params)?;
                let engine = state.engine()?;
                let call = ext
                    .get::<Call>()
                    .cloned()
                    .ok_or_else(|| errors::internal("call context missing"))?;
                if call.cancel.is_cancelled() {
                    return Err(errors::cancelled());
                }
                tokio::task::spawn_blocking(move || f(&engine, p, &call).and_then(raw))
                    .await
                    .map_err(|e| errors::internal(format!("{name} failed: {e}")))?
            }
        })
        .expect("method names are unique");
}

fn engine_err(e: crate::engine::EngineError) -> ErrorObjectOwned {
    errors::engine_error(&e)
}

/// `template.build {spec}`: relative host paths in the spec are the
/// worker's (its working directory); progress goes out as
/// `template.progress` notifications before the response.
fn build_from_spec(
    engine: &Engine,
    spec: &serde_json::Value,
    call: &Call,
) -> Result<Box<RawValue>, ErrorObjectOwned> {
    let cwd = std::env::current_dir().map_err(|e| errors::internal(e.to_string()))?;
    let spec = crate::spec::Spec::from_json(spec, &cwd)
        .map_err(|e| engine_err(crate::engine::EngineError::Spec(e)))?;
    let mut notify = |p: &crate::image::progress::Progress| {
        call.notify(
            "template.progress",
            BuildProgress {
                request: call.id.raw(),
                progress: p,
            },
        );
    };
    let built = engine
        .build_from_spec(&spec, &Default::default(), &mut notify, &call.cancel)
        .map_err(engine_err)?;
    raw(SpecBuilt {
        template: built.info,
        manifest: built.manifest,
    })
}

/// Builds the module with every method.
pub fn module(state: Arc<State>) -> RpcModule<State> {
    let mut m = RpcModule::from_arc(state);

    engine_method(
        &mut m,
        "template.load",
        |engine, p: TemplateLoad, call| match (p.builtin, p.path, p.memory_mib) {
            (Some(name), None, mib) => engine.load_builtin_sized(&name, mib).map_err(engine_err),
            (None, Some(path), None) => engine
                .load_file(Path::new(&path), &call.cancel)
                .map_err(engine_err),
            (None, Some(_), Some(_)) => Err(errors::invalid_params(
                "`memory_mib` is for built-in templates: a file says its own size",
            )),
            _ => Err(errors::invalid_params(
                "give exactly one of `builtin` or `path`",
            )),
        },
    );
    engine_method(
        &mut m,
        "template.build",
        |engine, p: TemplateBuild, call| {
            let (kernel, initramfs) = match (p.kernel, p.initramfs, p.spec) {
                (None, None, Some(spec)) if p.memory_mib.is_none() && p.cmdline.is_none() => {
                    return build_from_spec(engine, &spec, call);
                }
                (Some(k), Some(i), None) => (k, i),
                _ => {
                    return Err(errors::invalid_params(
                        "give `kernel` and `initramfs` (with `memory_mib`, `cmdline`), or `spec` alone",
                    ));
                }
            };
            let mib = p.memory_mib.unwrap_or(DEFAULT_LINUX_MEMORY_MIB);
            if !(MIN_LINUX_MEMORY_MIB..=MAX_LINUX_MEMORY_MIB).contains(&mib) {
                return Err(errors::invalid_params(format!(
                    "memory_mib must be between {MIN_LINUX_MEMORY_MIB} and {MAX_LINUX_MEMORY_MIB}"
                )));
            }
            engine
                .build_template(
                    Path::new(&kernel),
                    Path::new(&initramfs),
                    mib,
                    p.cmdline.as_deref(),
                    &call.cancel,
                )
                .map_err(engine_err)
                .and_then(raw)
        },
    );
    engine_method(&mut m, "template.list", |engine, _: Empty, _| {
        Ok(TemplateList {
            templates: engine.list_templates(),
        })
    });
    engine_method(&mut m, "template.unload", |engine, p: TemplateUnload, _| {
        let how = match (p.force, p.keep_sandboxes) {
            (false, false) => Unload::IfUnused,
            (true, false) => Unload::KillSandboxes,
            (false, true) => Unload::KeepSandboxes,
            (true, true) => {
                return Err(errors::invalid_params(
                    "give at most one of `force` or `keep_sandboxes`",
                ));
            }
        };
        let killed = engine
            .unload_template(&p.template, how)
            .map_err(engine_err)?;
        Ok(Unloaded {
            template: p.template,
            killed,
        })
    });
    engine_method(&mut m, "template.save", |engine, p: TemplateSave, call| {
        let bytes = engine
            .save_template(&p.template, Path::new(&p.path), &call.cancel)
            .map_err(engine_err)?;
        Ok(Saved {
            template: p.template,
            path: p.path,
            bytes,
        })
    });

    engine_method(&mut m, "sandbox.fork", |engine, p: SandboxFork, _| {
        let start = Instant::now();
        let opts = p.network.fork_options();
        match p.count {
            None => raw(engine.fork_with(&p.template, &opts).map_err(engine_err)?),
            Some(n) if n == 0 || n > MAX_FORK_COUNT => Err(errors::invalid_params(format!(
                "count must be between 1 and {MAX_FORK_COUNT}"
            ))),
            Some(n) => raw(ForkedMany {
                sandboxes: engine
                    .fork_many_with(&p.template, n, &opts)
                    .map_err(engine_err)?,
                total_us: start.elapsed().as_micros() as u64,
            }),
        }
    });
    engine_method(&mut m, "sandbox.exec", exec);
    engine_method(&mut m, "sandbox.kill", |engine, p: SandboxRef, _| {
        engine.kill(&p.sandbox).map_err(engine_err)?;
        Ok(serde_json::json!({}))
    });
    engine_method(&mut m, "sandbox.list", |engine, p: SandboxList, _| {
        let mut sandboxes = engine.list_sandboxes();
        if let Some(t) = &p.template {
            sandboxes.retain(|s| &s.template == t);
        }
        Ok(SandboxListResult { sandboxes })
    });
    engine_method(&mut m, "sandbox.stats", |engine, p: SandboxRef, _| {
        engine.stats(&p.sandbox).map_err(engine_err)
    });
    engine_method(
        &mut m,
        "sandbox.snapshot",
        |engine, p: SandboxSnapshot, call| {
            let how = if p.full_copy {
                Branching::FullCopy
            } else {
                Branching::Layer
            };
            engine
                .snapshot_sandbox(&p.sandbox, how, &call.cancel)
                .map_err(engine_err)
        },
    );
    engine_method(&mut m, "sandbox.write_file", write_file);
    engine_method(&mut m, "sandbox.read_file", read_file);

    m.register_async_method("worker.info", |params, state, ext| async move {
        let _: Empty = parse(&params)?;
        let framing = ext.get::<Call>().map(|c| c.framing.as_str());
        raw(worker_info(&state, framing))
    })
    .expect("method names are unique");

    m.register_method("rpc.discover", |params, _, _| {
        let _: Empty = parse(&params)?;
        Ok::<_, ErrorObjectOwned>(openrpc().to_owned())
    })
    .expect("method names are unique");

    m.register_async_method("shutdown", |params, state, _| async move {
        let _: Empty = parse(&params)?;
        state.shutting_down.store(true, Ordering::SeqCst);
        if let Ok(engine) = state.engine() {
            tokio::task::spawn_blocking(move || engine.shutdown())
                .await
                .map_err(|e| errors::internal(format!("shutdown failed: {e}")))?;
        }
        Ok::<_, ErrorObjectOwned>(RawValue::from_string("null".into()).expect("null is JSON"))
    })
    .expect("method names are unique");

    m
}

/// Bytes given as UTF-8 text in `name` or as base64 in `name_base64` (at most one; neither: empty).
fn bytes_param(
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

fn exec(engine: &Engine, p: SandboxExec, call: &Call) -> Result<ExecResult, ErrorObjectOwned> {
    let stdin = bytes_param(p.stdin, p.stdin_base64, "stdin")?;
    let config = engine.config();
    let timeout_ms = p.timeout_ms.unwrap_or(config.default_timeout_ms);
    if timeout_ms == 0 || timeout_ms > u64::from(u32::MAX) {
        return Err(errors::invalid_params(format!(
            "timeout_ms must be between 1 and {}",
            u32::MAX
        )));
    }
    let max_cap = MAX_OUTPUT_CAP.max(config.default_output_cap);
    if p.output_cap.is_some_and(|c| c > max_cap) {
        return Err(errors::invalid_params(format!(
            "output_cap must be at most {max_cap}"
        )));
    }
    let req = ExecRequest {
        argv: p.argv,
        env: p.env.into_iter().collect(),
        cwd: p.cwd,
        stdin,
        timeout_ms: timeout_ms as u32,
        program: Some(match p.program {
            ProgramKind::Argv => Program::Argv,
            ProgramKind::Python => Program::Python,
        }),
    };
    let opts = ExecOptions {
        timeout: Some(Duration::from_millis(timeout_ms + EXEC_HOST_GRACE_MS)),
        output_cap: p.output_cap,
        cancel: call.cancel.clone(),
    };
    let sandbox = p.sandbox;
    let mut encoders = [ChunkEncoder::new(p.encoding), ChunkEncoder::new(p.encoding)];
    let send = |stream: Stream, data: String| {
        if data.is_empty() {
            return;
        }
        call.notify(
            "sandbox.output",
            Output {
                sandbox: &sandbox,
                request: call.id.raw(),
                stream: stream_name(stream),
                data,
                encoding: p.encoding,
            },
        );
    };
    let mut on_output = |stream: Stream, data: &[u8]| {
        if p.stream {
            let text = encoders[stream_index(stream)].push(data);
            send(stream, text);
        }
    };
    let result = engine.exec(&sandbox, &req, &opts, &mut on_output);
    if p.stream {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = encoders[stream_index(stream)].finish();
            send(stream, rest);
        }
    }
    let r = result.map_err(engine_err)?;
    Ok(ExecResult {
        stdout: output::encode(&r.stdout, p.encoding),
        stderr: output::encode(&r.stderr, p.encoding),
        encoding: p.encoding,
        exit_code: r.exit_code,
        signal: r.signal,
        timed_out: r.timed_out,
        truncated: r.truncated,
        duration_us: r.duration.as_micros() as u64,
    })
}

fn write_file(
    engine: &Engine,
    p: SandboxWriteFile,
    call: &Call,
) -> Result<serde_json::Value, ErrorObjectOwned> {
    let data = bytes_param(p.data, p.data_base64, "data")?;
    if p.mode > 0o7777 {
        return Err(errors::invalid_params("mode must be at most 0o7777 (4095)"));
    }
    let bytes = data.len();
    engine
        .write_file(&p.sandbox, &p.path, data, p.mode, None, &call.cancel)
        .map_err(engine_err)?;
    Ok(serde_json::json!({ "bytes": bytes }))
}

fn read_file(
    engine: &Engine,
    p: SandboxReadFile,
    call: &Call,
) -> Result<FileContent, ErrorObjectOwned> {
    // The engine refuses a `max_bytes` over its limit.
    let max = p.max_bytes.unwrap_or(engine.config().max_file_bytes);
    let data = engine
        .read_file(&p.sandbox, &p.path, max, None, &call.cancel)
        .map_err(engine_err)?;
    Ok(FileContent {
        data: output::encode(&data, p.encoding),
        encoding: p.encoding,
        bytes: data.len(),
    })
}

fn stream_index(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

fn stream_name(s: Stream) -> &'static str {
    match s {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    }
}

#[derive(Serialize)]
struct WorkerInfo {
    name: &'static str,
    version: &'static str,
    protocol: &'static str,
    kvm: KvmInfo,
    limits: Limits,
    capabilities: Capabilities,
    templates: usize,
    sandboxes: usize,
    uptime_ms: u64,
}

#[derive(Serialize)]
struct KvmInfo {
    available: bool,
    flavor: Option<&'static str>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Limits {
    max_sandboxes: Option<usize>,
    pool_size: Option<usize>,
    default_timeout_ms: Option<u64>,
    default_output_cap: Option<usize>,
    max_output_cap: usize,
    exec_host_grace_ms: u64,
    max_fork_count: usize,
    max_read_bytes: usize,
    max_write_bytes: usize,
    max_message_bytes: usize,
}

#[derive(Serialize)]
struct Capabilities {
    framings: [&'static str; 2],
    framing: Option<&'static str>,
    batches: bool,
    cancel: bool,
    streaming: bool,
    encodings: [&'static str; 2],
    builtin_templates: &'static [&'static str],
}

fn worker_info(state: &State, framing: Option<&'static str>) -> WorkerInfo {
    let engine = state.engine.as_ref().ok();
    let config = engine.map(Engine::config);
    WorkerInfo {
        name: "zeroboot",
        version: env!("CARGO_PKG_VERSION"),
        protocol: "2.0",
        kvm: KvmInfo {
            available: engine.is_some(),
            flavor: engine.map(|e| e.flavor().as_str()),
            error: state.engine.as_ref().err().cloned(),
        },
        limits: Limits {
            max_sandboxes: config.map(|c| c.max_sandboxes),
            pool_size: config.map(|c| c.pool_size),
            default_timeout_ms: config.map(|c| c.default_timeout_ms),
            default_output_cap: config.map(|c| c.default_output_cap),
            max_output_cap: MAX_OUTPUT_CAP.max(config.map_or(0, |c| c.default_output_cap)),
            exec_host_grace_ms: EXEC_HOST_GRACE_MS,
            max_fork_count: MAX_FORK_COUNT,
            max_read_bytes: state.max_file_bytes,
            max_write_bytes: state.max_file_bytes,
            max_message_bytes: state.max_message_bytes,
        },
        capabilities: Capabilities {
            framings: ["lsp", "ndjson"],
            framing,
            batches: true,
            cancel: true,
            streaming: true,
            encodings: ["utf8", "base64"],
            builtin_templates: BUILTIN_TEMPLATES,
        },
        templates: engine.map_or(0, |e| e.list_templates().len()),
        sandboxes: engine.map_or(0, Engine::sandbox_count),
        uptime_ms: state.started.elapsed().as_millis() as u64,
    }
}
