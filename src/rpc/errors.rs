//! Every JSON-RPC error this worker sends, in one place: the standard codes
//! for protocol problems, -32800 for a cancelled call, and application codes
//! (1001 and up, outside the reserved -32768..-32000) for engine failures.
//! Each error's `data` is an object whose `kind` names the case in snake_case;
//! the other members depend on the kind and are listed in schema/openrpc.json.

use jsonrpsee::types::ErrorObjectOwned;
use serde_json::{Value, json};

use crate::engine::EngineError;

/// Invalid JSON or invalid UTF-8.
pub const PARSE_ERROR: i32 = -32700;
/// Not a valid request object (also: any request after `shutdown`).
pub const INVALID_REQUEST: i32 = -32600;
/// No such method.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// Params of the wrong shape or type, or rejected by the engine.
pub const INVALID_PARAMS: i32 = -32602;
/// A bug in the worker.
pub const INTERNAL_ERROR: i32 = -32603;
/// The call was cancelled by `$/cancelRequest` (the LSP code).
pub const REQUEST_CANCELLED: i32 = -32800;

/// /dev/kvm is missing or unusable.
pub const KVM_UNAVAILABLE: i32 = 1001;
/// No template has this id.
pub const TEMPLATE_NOT_FOUND: i32 = 1002;
/// The template still has live sandboxes (unload without `force`).
pub const TEMPLATE_IN_USE: i32 = 1003;
/// No sandbox has this id (never existed, or killed).
pub const SANDBOX_NOT_FOUND: i32 = 1004;
/// Another exec is running on the sandbox.
pub const SANDBOX_BUSY: i32 = 1005;
/// An earlier timeout, cancel, crash or protocol violation left the sandbox
/// unusable; only `sandbox.kill` works on it.
pub const SANDBOX_UNUSABLE: i32 = 1006;
/// The host deadline passed; the vCPU was stopped and the sandbox is unusable.
pub const EXEC_TIMEOUT: i32 = 1007;
/// The guest crashed (triple fault, shutdown, unhandled exit).
pub const GUEST_CRASHED: i32 = 1008;
/// The guest broke the agent protocol.
pub const GUEST_PROTOCOL: i32 = 1009;
/// The agent in the guest refused or failed the request.
pub const AGENT_FAILED: i32 = 1010;
/// A configured limit was reached.
pub const RESOURCE_LIMIT: i32 = 1011;
/// A template file could not be read or written.
pub const TEMPLATE_FILE: i32 = 1012;
/// The KVM layer failed.
pub const VMM_ERROR: i32 = 1013;
/// A Linux guest was asked of a host whose KVM (kvm-pvm) cannot run one.
pub const LINUX_NEEDS_HARDWARE_KVM: i32 = 1014;
/// A Linux guest did not boot to the agent's Ready.
pub const LINUX_BOOT_FAILED: i32 = 1015;
/// A file exceeds the host's, the call's or the guest's size limit.
pub const FILE_TOO_LARGE: i32 = 1016;
/// A template spec was refused: `data.field` names the field.
pub const SPEC_INVALID: i32 = 1017;
/// A spec's image could not be built; `data.kind` says why.
pub const IMAGE_BUILD_FAILED: i32 = 1018;
/// A spec's `python.preload` module raised when imported.
pub const PRELOAD_FAILED: i32 = 1019;
/// A spec's warm-up command failed.
pub const WARMUP_FAILED: i32 = 1020;
/// A template file was captured on a CPU this host cannot stand in for.
pub const TEMPLATE_INCOMPATIBLE: i32 = 1021;
/// A template's guest did not answer its probe (spun, crashed, broke the protocol).
pub const TEMPLATE_UNRESPONSIVE: i32 = 1022;

fn error(code: i32, message: impl Into<String>, data: Value) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(code, message.into(), Some(data))
}

/// The one mapping from engine errors to JSON-RPC errors.
pub fn engine_error(e: &EngineError) -> ErrorObjectOwned {
    let msg = crate::error_chain(e);
    match e {
        EngineError::KvmUnavailable(_) => error(
            KVM_UNAVAILABLE,
            msg.clone(),
            json!({"kind": "kvm_unavailable", "detail": msg}),
        ),
        EngineError::TemplateNotFound(t) => error(
            TEMPLATE_NOT_FOUND,
            msg,
            json!({"kind": "template_not_found", "template": t}),
        ),
        EngineError::TemplateInUse {
            template,
            sandboxes,
        } => error(
            TEMPLATE_IN_USE,
            msg,
            json!({"kind": "template_in_use", "template": template, "sandboxes": sandboxes}),
        ),
        EngineError::SandboxNotFound(s) => error(
            SANDBOX_NOT_FOUND,
            msg,
            json!({"kind": "sandbox_not_found", "sandbox": s}),
        ),
        EngineError::SandboxBusy(s) => error(
            SANDBOX_BUSY,
            msg,
            json!({"kind": "sandbox_busy", "sandbox": s}),
        ),
        EngineError::SandboxUnusable { id, reason } => error(
            SANDBOX_UNUSABLE,
            msg,
            json!({"kind": "sandbox_unusable", "sandbox": id, "reason": reason}),
        ),
        EngineError::ExecTimeout { timeout_ms } => error(
            EXEC_TIMEOUT,
            msg,
            json!({"kind": "exec_timeout", "timeout_ms": timeout_ms}),
        ),
        EngineError::Cancelled => cancelled(),
        EngineError::GuestCrashed { reason } => error(
            GUEST_CRASHED,
            msg,
            json!({"kind": "guest_crashed", "reason": reason}),
        ),
        EngineError::GuestProtocol { detail } => error(
            GUEST_PROTOCOL,
            msg,
            json!({"kind": "guest_protocol", "detail": detail}),
        ),
        EngineError::AgentFailed { message } => error(
            AGENT_FAILED,
            msg,
            json!({"kind": "agent_failed", "message": message}),
        ),
        EngineError::FileTooLarge { detail } => error(
            FILE_TOO_LARGE,
            msg,
            json!({"kind": "file_too_large", "detail": detail}),
        ),
        EngineError::ResourceLimit(detail) => error(
            RESOURCE_LIMIT,
            msg,
            json!({"kind": "resource_limit", "detail": detail}),
        ),
        EngineError::OverBudget {
            what,
            requested,
            available,
            limit,
        } => error(
            RESOURCE_LIMIT,
            msg.clone(),
            json!({
                "kind": "memory_budget",
                "detail": msg,
                "charge": what,
                "limit_bytes": limit,
                "requested_bytes": requested,
                "available_bytes": available,
                "over_by_bytes": requested.saturating_sub(*available),
            }),
        ),
        EngineError::SandboxMemoryLimit { limit, dirty } => error(
            RESOURCE_LIMIT,
            msg.clone(),
            json!({
                "kind": "memory_limit",
                "detail": msg,
                "limit_bytes": limit,
                "used_bytes": dirty,
                "over_by_bytes": dirty.saturating_sub(*limit),
            }),
        ),
        EngineError::InvalidRequest(detail) => error(
            INVALID_PARAMS,
            msg,
            json!({"kind": "invalid_request", "detail": detail}),
        ),
        EngineError::NetworkPolicy(e) => error(
            INVALID_PARAMS,
            msg,
            json!({"kind": "network_policy", "detail": e.to_string()}),
        ),
        EngineError::TemplateFile { path, detail } => error(
            TEMPLATE_FILE,
            msg,
            json!({"kind": "template_file", "path": path, "detail": detail}),
        ),
        EngineError::TemplateIncompatible { path, detail } => error(
            TEMPLATE_INCOMPATIBLE,
            msg,
            json!({"kind": "template_incompatible", "path": path, "detail": detail}),
        ),
        EngineError::TemplateUnresponsive { detail } => error(
            TEMPLATE_UNRESPONSIVE,
            msg,
            json!({"kind": "template_unresponsive", "detail": detail}),
        ),
        EngineError::Vmm(_) => error(
            VMM_ERROR,
            msg.clone(),
            json!({"kind": "vmm", "detail": msg}),
        ),
        EngineError::LinuxNeedsHardwareKvm => error(
            LINUX_NEEDS_HARDWARE_KVM,
            msg,
            json!({"kind": "linux_needs_hardware_kvm"}),
        ),
        EngineError::LinuxBoot { reason, console } => error(
            LINUX_BOOT_FAILED,
            msg,
            json!({"kind": "linux_boot_failed", "reason": reason, "console": console}),
        ),
        EngineError::Spec(s) => error(SPEC_INVALID, msg.clone(), spec_data(s)),
        EngineError::Image(i) => error(IMAGE_BUILD_FAILED, msg.clone(), image_data(i)),
        EngineError::PreloadFailed { traceback } => error(
            PRELOAD_FAILED,
            msg,
            json!({"kind": "preload_failed", "traceback": traceback}),
        ),
        EngineError::WarmupFailed {
            command,
            exit_code,
            stderr,
        } => error(
            WARMUP_FAILED,
            msg,
            json!({"kind": "warmup_failed", "command": command, "exit_code": exit_code, "stderr": stderr}),
        ),
    }
}

/// `data` of a refused spec: the field and what was expected.
fn spec_data(e: &crate::spec::SpecError) -> Value {
    use crate::spec::SpecError;
    match e {
        SpecError::Field { field, detail } => {
            json!({"kind": "spec_invalid", "field": field, "detail": detail})
        }
        other => json!({"kind": "spec_invalid", "field": ".", "detail": other.to_string()}),
    }
}

/// `data` of a failed image build: `kind` names the case.
pub(super) fn image_data(e: &crate::image::ImageError) -> Value {
    use crate::image::ImageError as I;
    use crate::image::layers::LayerError;
    let detail = crate::error_chain(e);
    match e {
        I::Helper { data, .. } => data.clone(),
        I::PythonNoWheel { requirement, .. } => {
            json!({"kind": "python_no_wheel", "requirement": requirement, "detail": detail})
        }
        I::PythonUnresolvable { requirement, .. } => {
            json!({"kind": "python_unresolvable", "requirement": requirement, "detail": detail})
        }
        I::DebianUnresolvable { packages, .. } => {
            json!({"kind": "debian_unresolvable", "packages": packages, "detail": detail})
        }
        I::Missing { path, .. } => {
            json!({"kind": "host_file_missing", "path": path, "detail": detail})
        }
        I::OciInvalid { path, .. } => {
            json!({"kind": "oci_invalid", "path": path, "detail": detail})
        }
        I::Layer {
            layer,
            source: LayerError::Escape(_) | LayerError::BadLink { .. },
        } => json!({"kind": "layer_path_escape", "layer": layer, "detail": detail}),
        I::Layer { layer, .. } => {
            json!({"kind": "layer_invalid", "layer": layer, "detail": detail})
        }
        I::ImageTooLarge {
            image_mib,
            memory_mib,
            needed_mib,
        } => json!({"kind": "image_too_large", "image_mib": image_mib, "memory_mib": memory_mib,
                    "needed_mib": needed_mib, "detail": detail}),
        I::UnknownUser { user } => json!({"kind": "unknown_user", "user": user, "detail": detail}),
        I::NoPython => json!({"kind": "no_python", "detail": detail}),
        _ => json!({"kind": "build_environment", "detail": detail}),
    }
}

/// The engine could not be started (KVM unusable); every engine method
/// answers with this.
pub fn kvm_unavailable(detail: &str) -> ErrorObjectOwned {
    error(
        KVM_UNAVAILABLE,
        format!("KVM is unavailable: {detail}"),
        json!({"kind": "kvm_unavailable", "detail": detail}),
    )
}

/// A call cancelled by `$/cancelRequest`.
pub fn cancelled() -> ErrorObjectOwned {
    error(
        REQUEST_CANCELLED,
        "request cancelled",
        json!({"kind": "cancelled"}),
    )
}

/// Invalid JSON (`kind` "parse_error") or invalid UTF-8 ("invalid_utf8"), or
/// a framing error the worker exits on ("framing").
pub fn parse_error(kind: &str, detail: impl Into<String>) -> ErrorObjectOwned {
    let detail = detail.into();
    error(
        PARSE_ERROR,
        format!("parse error: {detail}"),
        json!({"kind": kind, "detail": detail}),
    )
}

/// Not a valid request.
pub fn invalid_request(detail: impl Into<String>) -> ErrorObjectOwned {
    let detail = detail.into();
    error(
        INVALID_REQUEST,
        format!("invalid request: {detail}"),
        json!({"kind": "invalid_request", "detail": detail}),
    )
}

/// A request whose id is the id of a request still running: refused, so
/// that every answer and every cancel names one call.
pub fn duplicate_id(id: &serde_json::value::RawValue) -> ErrorObjectOwned {
    error(
        INVALID_REQUEST,
        format!(
            "invalid request: a request with id {} is still running",
            id.get()
        ),
        json!({"kind": "duplicate_id", "id": id}),
    )
}

/// The slow-work pool is full.
pub fn busy(threads: usize, queue: usize) -> ErrorObjectOwned {
    let detail =
        format!("{threads} slow calls are running and {queue} more are waiting; try again later");
    error(
        RESOURCE_LIMIT,
        format!("resource limit: {detail}"),
        json!({"kind": "resource_limit", "detail": detail}),
    )
}

/// A message over `max_message_bytes`, skipped unread.
pub fn message_too_large(length: u64, limit: usize) -> ErrorObjectOwned {
    error(
        INVALID_REQUEST,
        format!("message of {length} bytes exceeds the limit of {limit} bytes"),
        json!({"kind": "message_too_large", "length": length, "limit": limit}),
    )
}

/// A request after `shutdown`.
pub fn shutting_down() -> ErrorObjectOwned {
    error(
        INVALID_REQUEST,
        "the worker is shutting down",
        json!({"kind": "shutting_down"}),
    )
}

/// No such method.
pub fn method_not_found(method: &str) -> ErrorObjectOwned {
    error(
        METHOD_NOT_FOUND,
        format!("method not found: {method}"),
        json!({"kind": "method_not_found", "method": method}),
    )
}

/// Params of the wrong shape or type.
pub fn invalid_params(detail: impl Into<String>) -> ErrorObjectOwned {
    let detail = detail.into();
    error(
        INVALID_PARAMS,
        format!("invalid params: {detail}"),
        json!({"kind": "invalid_params", "detail": detail}),
    )
}

/// A bug in the worker (a panicked task, an unreadable reply).
pub fn internal(detail: impl Into<String>) -> ErrorObjectOwned {
    let detail = detail.into();
    error(
        INTERNAL_ERROR,
        format!("internal error: {detail}"),
        json!({"kind": "internal", "detail": detail}),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vmm::VmmError;

    /// One value of every engine error variant (the match keeps it complete).
    pub(crate) fn every_engine_error() -> Vec<EngineError> {
        let all = vec![
            EngineError::KvmUnavailable(VmmError::OpenKvm(kvm_ioctls::Error::new(libc::ENOENT))),
            EngineError::TemplateNotFound("tpl-9".into()),
            EngineError::TemplateInUse {
                template: "tpl-1".into(),
                sandboxes: 2,
            },
            EngineError::SandboxNotFound("sb-9".into()),
            EngineError::SandboxBusy("sb-1".into()),
            EngineError::SandboxUnusable {
                id: "sb-1".into(),
                reason: "timed out".into(),
            },
            EngineError::ExecTimeout { timeout_ms: 5 },
            EngineError::Cancelled,
            EngineError::GuestCrashed {
                reason: "triple fault".into(),
            },
            EngineError::GuestProtocol {
                detail: "garbage".into(),
            },
            EngineError::AgentFailed {
                message: "unsupported".into(),
            },
            EngineError::FileTooLarge {
                detail: "over the limit".into(),
            },
            EngineError::ResourceLimit("too many".into()),
            EngineError::OverBudget {
                what: "sandbox",
                requested: 40 << 20,
                available: 1 << 20,
                limit: 1 << 30,
            },
            EngineError::SandboxMemoryLimit {
                limit: 4 << 20,
                dirty: 5 << 20,
            },
            EngineError::InvalidRequest("empty argv".into()),
            EngineError::TemplateFile {
                path: "/x".into(),
                detail: "bad magic".into(),
            },
            EngineError::TemplateIncompatible {
                path: "/x".into(),
                detail: "AuthenticAMD".into(),
            },
            EngineError::TemplateUnresponsive {
                detail: "spun".into(),
            },
            EngineError::Vmm(VmmError::OpenKvm(kvm_ioctls::Error::new(libc::EIO))),
            EngineError::NetworkPolicy(crate::net::Policy::parse(&["300.0.0.1"], &[]).unwrap_err()),
            EngineError::LinuxNeedsHardwareKvm,
            EngineError::LinuxBoot {
                reason: "triple fault".into(),
                console: "Kernel panic".into(),
            },
            EngineError::Spec(crate::spec::SpecError::Field {
                field: "memory_mib".into(),
                detail: "expected 128 to 3072".into(),
            }),
            EngineError::Image(crate::image::ImageError::PythonNoWheel {
                requirement: "numpy==1.21.0".into(),
                detail: "no cp311 wheel".into(),
            }),
            EngineError::PreloadFailed {
                traceback: "Traceback ...".into(),
            },
            EngineError::WarmupFailed {
                command: "false".into(),
                exit_code: Some(1),
                stderr: "".into(),
            },
        ];
        for e in &all {
            // Adding a variant breaks this match: add it above and to the schema.
            match e {
                EngineError::KvmUnavailable(_)
                | EngineError::TemplateNotFound(_)
                | EngineError::TemplateInUse { .. }
                | EngineError::SandboxNotFound(_)
                | EngineError::SandboxBusy(_)
                | EngineError::SandboxUnusable { .. }
                | EngineError::ExecTimeout { .. }
                | EngineError::Cancelled
                | EngineError::GuestCrashed { .. }
                | EngineError::GuestProtocol { .. }
                | EngineError::AgentFailed { .. }
                | EngineError::FileTooLarge { .. }
                | EngineError::ResourceLimit(_)
                | EngineError::OverBudget { .. }
                | EngineError::SandboxMemoryLimit { .. }
                | EngineError::InvalidRequest(_)
                | EngineError::TemplateFile { .. }
                | EngineError::TemplateIncompatible { .. }
                | EngineError::TemplateUnresponsive { .. }
                | EngineError::Vmm(_)
                | EngineError::NetworkPolicy(_)
                | EngineError::LinuxNeedsHardwareKvm
                | EngineError::LinuxBoot { .. }
                | EngineError::Spec(_)
                | EngineError::Image(_)
                | EngineError::PreloadFailed { .. }
                | EngineError::WarmupFailed { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_engine_error_has_a_distinct_kind_and_a_code_outside_the_reserved_range() {
        let mut kinds = std::collections::HashSet::new();
        for e in every_engine_error() {
            let obj = engine_error(&e);
            let data: Value = serde_json::from_str(obj.data().unwrap().get()).unwrap();
            let kind = data["kind"].as_str().unwrap().to_string();
            assert!(kinds.insert(kind.clone()), "{kind} twice");
            let code = obj.code();
            let standard = [INVALID_PARAMS, REQUEST_CANCELLED];
            assert!(
                !(-32768..=-32000).contains(&code) || standard.contains(&code),
                "{kind}: {code}"
            );
            assert!(!obj.message().is_empty());
        }
    }

    #[test]
    fn messages_carry_the_cause_once() {
        let e =
            EngineError::KvmUnavailable(VmmError::OpenKvm(kvm_ioctls::Error::new(libc::ENOENT)));
        let obj = engine_error(&e);
        assert!(
            obj.message().starts_with("KVM is unavailable: "),
            "{}",
            obj.message()
        );
    }
}
