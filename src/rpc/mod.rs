//! The stdio JSON-RPC worker: `zeroboot serve`.
//!
//! Layers, outside in: [`framing`] finds message bodies in the byte stream
//! (LSP base protocol or NDJSON); [`message`] parses each body once into a
//! typed call from the [`methods`] table (or says exactly what is wrong with
//! it); `session` reads, dispatches and ends the session; `dispatch` maps
//! each call to one engine call and decides which thread runs it; `params`
//! holds every wire shape and its translation to the engine's types;
//! `reply` and `writer` carry answers out, written by the thread that
//! finished the work; [`errors`] maps every failure to a JSON-RPC error in
//! one place. Nothing here touches KVM; nothing below this module knows
//! JSON-RPC exists. The contract — every method, param, result,
//! notification and error — is schema/openrpc.json, returned by
//! `rpc.discover`. docs/rpc-path.md explains the design and its figures.

pub mod build_helper;
mod code;
mod dispatch;
pub mod errors;
pub mod framing;
mod info;
pub mod message;
pub mod methods;
mod output;
mod params;
mod pool;
mod process;
mod reply;
mod session;
mod writer;

use std::io;
use std::process::ExitCode;

use crate::engine::{Engine, EngineConfig};
pub use info::OPENRPC;

/// Options of `zeroboot serve`.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Engine limits and sizes.
    pub engine: EngineConfig,
    /// Largest accepted message body in bytes.
    pub max_message_bytes: usize,
    /// Whether threads run under seccomp filters (see [`crate::confine`]).
    pub seccomp: bool,
}

/// Serves JSON-RPC on stdin/stdout until shutdown or EOF; returns the exit code.
///
/// The worker starts even when KVM is unusable: `worker.info`,
/// `worker.ping` and `rpc.discover` answer, every engine method fails with
/// the KVM-unavailable error.
pub fn serve(opts: ServeOptions) -> ExitCode {
    // Before any thread exists, so every thread inherits the mask.
    let signals = match process::Signals::block() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot block SIGTERM and SIGINT");
            return ExitCode::FAILURE;
        }
    };
    let output = match crate::stdio::protocol_stdout() {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot take over stdout");
            return ExitCode::FAILURE;
        }
    };
    let engine = Engine::new(opts.engine.clone()).map_err(|e| {
        let detail = crate::error_chain(&e);
        tracing::warn!(error = %detail, "engine unavailable; only worker.info, worker.ping and rpc.discover will work");
        detail
    });
    // Under the filter the worker can start no program: spec images are
    // built by a helper process started now (crate::image::helper).
    if opts.seccomp
        && let Err(e) = std::env::current_exe().and_then(|exe| crate::image::helper::start(&exe))
    {
        tracing::warn!(error = %e, "cannot start the build helper; template.build {{spec}} will take images from the cache only");
    }
    // /dev/kvm is open and no thread has started: give up what is not needed.
    if let Err(e) = confine(opts.seccomp) {
        tracing::error!(error = %crate::error_chain(&e), "cannot confine the worker");
        return ExitCode::FAILURE;
    }
    if let Ok(engine) = &engine {
        tracing::info!(flavor = engine.flavor().as_str(), "zeroboot worker ready");
    }
    let code = session::run(
        Box::new(io::stdin()),
        Box::new(output),
        engine,
        opts.engine,
        opts.max_message_bytes,
        Some(signals),
    );
    ExitCode::from(code)
}

/// Drops every capability and, with `seccomp`, puts every thread under the
/// worker's filter (vCPU threads add theirs).
fn confine(seccomp: bool) -> Result<(), crate::confine::ConfineError> {
    use crate::confine::{Filter, drop_privileges, install_all_threads, set_seccomp};
    if drop_privileges()? {
        tracing::info!("capabilities dropped");
    }
    set_seccomp(seccomp);
    if seccomp {
        install_all_threads(Filter::Worker)?;
    }
    Ok(())
}

/// Runs one session over in-memory input with no engine (every engine method
/// fails with the KVM-unavailable error) and returns what was written and the
/// exit code. This is the fuzzing entry point for framing and dispatch.
#[doc(hidden)]
pub fn run_session(input: Vec<u8>, max_message_bytes: usize) -> (Vec<u8>, u8) {
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let out = Shared::default();
    let code = session::run(
        Box::new(io::Cursor::new(input)),
        Box::new(out.clone()),
        Err("no engine in this session".into()),
        EngineConfig::default(),
        max_message_bytes,
        None,
    );
    let bytes = std::mem::take(&mut *out.0.lock().unwrap_or_else(|e| e.into_inner()));
    (bytes, code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Runs a session and returns its replies, decoded, with the exit code.
    fn session(input: &[u8]) -> (Vec<Value>, u8) {
        let (out, code) = run_session(input.to_vec(), 1 << 20);
        let mut frames = framing::FrameReader::new(io::Cursor::new(out), usize::MAX);
        let mut replies = Vec::new();
        while let Some(body) = frames.read().expect("the worker writes well-formed frames") {
            replies.push(serde_json::from_slice(&body).expect("every frame is JSON"));
        }
        (replies, code)
    }

    fn ndjson(lines: &[Value]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|l| format!("{l}\n").into_bytes())
            .collect()
    }

    #[test]
    fn every_method_in_the_table_is_documented_and_every_documented_method_exists() {
        let doc: Value = serde_json::from_str(OPENRPC).unwrap();
        let documented: std::collections::BTreeSet<&str> = doc["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        let table: std::collections::BTreeSet<&str> = methods::METHODS.iter().copied().collect();
        assert_eq!(documented, table);
        assert_eq!(
            table.len(),
            methods::METHODS.len(),
            "a method is listed twice"
        );
    }

    #[test]
    fn worker_info_answers_without_kvm_in_both_framings() {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "worker.info"});
        let (replies, code) = session(&ndjson(std::slice::from_ref(&req)));
        assert_eq!(code, 0);
        assert_eq!(replies[0]["result"]["kvm"]["available"], false);
        assert_eq!(replies[0]["result"]["capabilities"]["framing"], "ndjson");
        let body = req.to_string();
        let lsp = format!("Content-Length: {}\r\n\r\n{body}", body.len());
        let (replies, _) = session(lsp.as_bytes());
        assert_eq!(replies[0]["result"]["capabilities"]["framing"], "lsp");
    }

    #[test]
    fn engine_methods_answer_kvm_unavailable() {
        let (replies, _) = session(&ndjson(&[json!({
            "jsonrpc": "2.0", "id": "a", "method": "template.load", "params": {"builtin": "bare"}
        })]));
        assert_eq!(replies[0]["id"], "a");
        assert_eq!(replies[0]["error"]["code"], errors::KVM_UNAVAILABLE);
    }

    #[test]
    fn bad_params_are_invalid_params_before_kvm_is_needed() {
        let (replies, _) = session(&ndjson(&[
            json!({"jsonrpc": "2.0", "id": 1, "method": "sandbox.exec", "params": {"sandbox": 5}}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "sandbox.kill", "params": ["sb-1"]}),
            json!({"jsonrpc": "2.0", "id": 3, "method": "worker.info", "params": {"x": 1}}),
        ]));
        assert_eq!(replies.len(), 3);
        for r in replies {
            assert_eq!(r["error"]["code"], errors::INVALID_PARAMS, "{r}");
        }
    }

    #[test]
    fn batches_answer_requests_only_and_in_order() {
        let (replies, _) = session(&ndjson(&[
            json!([
                {"jsonrpc": "2.0", "id": 1, "method": "worker.info"},
                {"jsonrpc": "2.0", "method": "worker.info"},
                {"jsonrpc": "2.0", "id": 2, "method": "nope"},
                5
            ]),
            json!([{"jsonrpc": "2.0", "method": "worker.info"}]),
        ]));
        assert_eq!(replies.len(), 1, "{replies:?}");
        let batch = replies[0].as_array().unwrap();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[0]["id"], 1);
        assert_eq!(batch[1]["error"]["code"], errors::METHOD_NOT_FOUND);
        assert_eq!(batch[2]["error"]["code"], errors::INVALID_REQUEST);
    }

    #[test]
    fn exit_codes_follow_lsp() {
        let shutdown = json!({"jsonrpc": "2.0", "id": 1, "method": "shutdown"});
        let exit = json!({"jsonrpc": "2.0", "method": "exit"});
        let after = json!({"jsonrpc": "2.0", "id": 2, "method": "worker.info"});
        let (replies, code) = session(&ndjson(&[shutdown.clone(), after, exit.clone()]));
        assert_eq!(code, 0);
        let by_id = |id: i64| replies.iter().find(|r| r["id"] == id).unwrap();
        assert_eq!(by_id(1)["result"], Value::Null);
        assert_eq!(by_id(2)["error"]["data"]["kind"], "shutting_down");
        let (_, code) = session(&ndjson(&[exit]));
        assert_eq!(code, 1);
    }

    #[test]
    fn unrecoverable_framing_ends_the_session_with_a_final_error() {
        let (replies, code) = session(b"Content-Length: 5\r\nBroken header\r\n\r\n{}");
        assert_eq!(code, 1);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0]["error"]["data"]["kind"], "framing");
    }

    #[test]
    fn oversized_messages_are_refused_and_the_session_goes_on() {
        let big = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(2 << 20));
        let mut input = big.into_bytes();
        input.extend(ndjson(&[
            json!({"jsonrpc": "2.0", "id": 7, "method": "worker.info"}),
        ]));
        let (replies, code) = session(&input);
        assert_eq!(code, 0);
        assert_eq!(replies[0]["error"]["data"]["kind"], "message_too_large");
        assert_eq!(replies[1]["id"], 7);
    }
}

#[cfg(test)]
mod schema_tests {
    use super::*;
    use serde_json::Value;

    /// The `kind`s the schema allows for each error code.
    fn kinds_by_code() -> std::collections::HashMap<i64, Vec<String>> {
        let doc: Value = serde_json::from_str(OPENRPC).unwrap();
        let schemas = &doc["components"]["schemas"];
        let mut out = std::collections::HashMap::new();
        for shape in schemas["ErrorObject"]["anyOf"].as_array().unwrap() {
            let code = shape["properties"]["code"]["const"].as_i64().unwrap();
            let name = shape["properties"]["data"]["$ref"]
                .as_str()
                .unwrap()
                .trim_start_matches("#/components/schemas/");
            let data = &schemas[name];
            let alternatives = match data["anyOf"].as_array() {
                Some(a) => a.clone(),
                None => vec![data.clone()],
            };
            let mut kinds = Vec::new();
            for alt in alternatives {
                let kind = &alt["properties"]["kind"];
                if let Some(k) = kind["const"].as_str() {
                    kinds.push(k.to_string());
                }
                for k in kind["enum"].as_array().into_iter().flatten() {
                    kinds.push(k.as_str().unwrap().to_string());
                }
            }
            out.insert(code, kinds);
        }
        out
    }

    #[test]
    fn every_engine_error_is_in_the_schema_with_its_kind() {
        let kinds = kinds_by_code();
        for e in errors::tests::every_engine_error() {
            let obj = errors::engine_error(&e);
            let data: Value = serde_json::from_str(obj.data().unwrap().get()).unwrap();
            let kind = data["kind"].as_str().unwrap();
            let allowed = kinds
                .get(&i64::from(obj.code()))
                .unwrap_or_else(|| panic!("code {} of {e:?} is not in the schema", obj.code()));
            assert!(
                allowed.iter().any(|k| k == kind),
                "{kind} under {}",
                obj.code()
            );
        }
    }

    /// `template.build` answers a TemplateInfo (plus a manifest): its schema
    /// must list every field TemplateInfo does, or a Linux build's reply
    /// fails validation (only the hardware-KVM lane builds one).
    #[test]
    fn a_built_template_has_every_field_of_a_template() {
        let doc: Value = serde_json::from_str(OPENRPC).unwrap();
        let schemas = &doc["components"]["schemas"];
        let fields = |name: &str| -> (Vec<String>, Vec<String>) {
            let s = &schemas[name];
            let props = s["properties"].as_object().unwrap().keys().cloned();
            let required = s["required"].as_array().unwrap().iter();
            (
                props.collect(),
                required.map(|r| r.as_str().unwrap().to_string()).collect(),
            )
        };
        let (info, info_required) = fields("TemplateInfo");
        let (built, built_required) = fields("TemplateBuilt");
        for f in &info {
            assert!(built.contains(f), "TemplateBuilt lacks {f}");
        }
        assert_eq!(info_required, built_required);
    }
}
