//! What the worker says about itself: `worker.info` and `rpc.discover`.
//! Both work without KVM.

use serde::Serialize;
use serde_json::value::RawValue;

use super::framing::Framing;
use super::session::Session;
use super::{pool, writer};
use crate::engine::Engine;

/// The OpenRPC document returned by `rpc.discover`.
pub const OPENRPC: &str = include_str!("../../schema/openrpc.json");

/// The OpenRPC document, compacted once (a reply must fit on one NDJSON line).
pub fn openrpc() -> &'static RawValue {
    static DOC: std::sync::LazyLock<Box<RawValue>> = std::sync::LazyLock::new(|| {
        let doc: serde_json::Value =
            serde_json::from_str(OPENRPC).expect("schema/openrpc.json is JSON");
        serde_json::value::to_raw_value(&doc).expect("a JSON value serialises")
    });
    &DOC
}

/// Built-in templates `template.load` knows.
pub const BUILTIN_TEMPLATES: &[&str] = &["bare"];

/// The result of `worker.info`.
#[derive(Serialize)]
pub struct WorkerInfo {
    name: &'static str,
    version: &'static str,
    protocol: &'static str,
    kvm: KvmInfo,
    limits: Limits,
    capabilities: Capabilities,
    templates: usize,
    sandboxes: usize,
    memory_charged_bytes: Option<u64>,
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
    output_backlog_bytes: usize,
    slow_threads: usize,
    slow_queue: usize,
    max_memory_bytes: Option<u64>,
    dirty_check_pages: Option<u32>,
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

/// Describes the worker as the peer sees it over `framing`.
pub fn worker_info(s: &Session, framing: Framing) -> WorkerInfo {
    let engine = s.engine.as_ref().ok();
    let with_engine = |v| engine.map(|_| v);
    let config = &s.config;
    WorkerInfo {
        name: "zeroboot",
        version: env!("CARGO_PKG_VERSION"),
        protocol: "2.0",
        kvm: KvmInfo {
            available: engine.is_some(),
            flavor: engine.map(|e| e.flavor().as_str()),
            error: s.engine.as_ref().err().cloned(),
        },
        limits: Limits {
            max_sandboxes: with_engine(config.max_sandboxes),
            pool_size: with_engine(config.pool_size),
            default_timeout_ms: engine.map(|_| config.default_timeout_ms),
            default_output_cap: with_engine(config.default_output_cap),
            max_output_cap: config.output_cap_limit(),
            exec_host_grace_ms: config.exec_host_grace_ms,
            max_fork_count: config.max_fork_count,
            max_read_bytes: config.max_file_bytes,
            max_write_bytes: config.max_file_bytes,
            max_message_bytes: s.max_message_bytes,
            output_backlog_bytes: writer::BACKLOG_LIMIT,
            slow_threads: pool::THREADS,
            slow_queue: pool::QUEUE,
            max_memory_bytes: engine.map(|e| e.memory_budget().0),
            dirty_check_pages: engine.map(Engine::dirty_check_pages),
        },
        capabilities: Capabilities {
            framings: ["lsp", "ndjson"],
            framing: Some(framing.as_str()),
            batches: true,
            cancel: true,
            streaming: true,
            encodings: ["utf8", "base64"],
            builtin_templates: BUILTIN_TEMPLATES,
        },
        templates: engine.map_or(0, |e| e.list_templates().len()),
        sandboxes: engine.map_or(0, Engine::sandbox_count),
        memory_charged_bytes: engine.map(|e| e.memory_budget().1),
        uptime_ms: s.started.elapsed().as_millis() as u64,
    }
}
