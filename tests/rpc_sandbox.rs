//! The worker end to end against the bare template, in both framings: fork,
//! exec, streaming, cancel, kill, concurrency, and every error code the bare
//! guest can trigger. Every message read is checked against the schema by the
//! client (tests/common/rpc_client.rs).

#[path = "common/rpc_client.rs"]
mod rpc_client;
#[path = "common/rpc_schema.rs"]
mod rpc_schema;

use rpc_client::{BOTH, Framing, Worker, kvm_or_skip};
use serde_json::{Value, json};

fn exec(w: &mut Worker, sandbox: &str, argv: &[&str]) -> Value {
    w.ok("sandbox.exec", json!({"sandbox": sandbox, "argv": argv}))
}

fn state_of(w: &mut Worker, sandbox: &str) -> String {
    let list = w.ok("sandbox.list", json!({}));
    list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sandbox"] == sandbox)
        .map_or("gone".into(), |s| s["state"].as_str().unwrap().to_string())
}

/// Polls until an exec is running in `sandbox` (bounded by the client's wait).
fn wait_until_busy(w: &mut Worker, sandbox: &str) {
    let deadline = std::time::Instant::now() + rpc_client::WAIT;
    while state_of(w, sandbox) != "busy" {
        assert!(
            std::time::Instant::now() < deadline,
            "the exec never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn code(err: &Value) -> i64 {
    err["code"].as_i64().unwrap()
}

#[test]
fn fork_exec_and_kill_in_both_framings() {
    if !kvm_or_skip() {
        return;
    }
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        let tpl = w.load_bare();
        let forked = w.ok("sandbox.fork", json!({"template": tpl}));
        let sb = forked["sandbox"].as_str().unwrap().to_string();
        assert!(forked["fork_us"].as_u64().is_some());

        let r = exec(&mut w, &sb, &["echo", "hello", "world"]);
        assert_eq!(r["stdout"], "hello world\n");
        assert_eq!(r["stderr"], "");
        assert_eq!(r["exit_code"], 0);
        assert_eq!(r["signal"], Value::Null);
        assert_eq!(r["timed_out"], false);
        assert_eq!(r["truncated"], false);
        assert!(r["duration_us"].as_u64().unwrap() > 0);

        let r = exec(&mut w, &sb, &["exit", "7"]);
        assert_eq!(r["exit_code"], 7);
        let r = exec(&mut w, &sb, &["stderr", "oops"]);
        assert_eq!(
            (r["stdout"].as_str(), r["stderr"].as_str()),
            (Some(""), Some("oops\n"))
        );

        let r = w.ok(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["cat"], "stdin": "héllo €"}),
        );
        assert_eq!(r["stdout"], "héllo €");
        let r = w.ok(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["cat"], "stdin_base64": "AP8KgA==", "encoding": "base64"}),
        );
        assert_eq!(r["stdout"], "AP8KgA==");
        assert_eq!(r["encoding"], "base64");
        let r = w.ok(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["cat"], "stdin_base64": "AP8KgA=="}),
        );
        assert_eq!(
            r["stdout"], "\u{0}\u{fffd}\n\u{fffd}",
            "lossy UTF-8 by default"
        );
        let r = w.ok(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["env"], "env": {"A": "1", "B": "two"}}),
        );
        assert_eq!(r["stdout"], "A=1\nB=two\n");
        let r = w.ok(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["pwd"], "cwd": "/work"}),
        );
        assert_eq!(r["stdout"], "/work\n");

        let stats = w.ok("sandbox.stats", json!({"sandbox": sb}));
        assert_eq!(stats["sandbox"], sb.as_str());
        assert!(stats["execs"].as_u64().unwrap() >= 8);
        assert!(stats["exits"].as_u64().unwrap() > 0);

        let list = w.ok("sandbox.list", json!({}));
        assert_eq!(list["sandboxes"][0]["sandbox"], sb.as_str());
        assert_eq!(list["sandboxes"][0]["state"], "ready");
        let none = w.ok("sandbox.list", json!({"template": "tpl-none"}));
        assert_eq!(none["sandboxes"], json!([]));

        assert_eq!(w.ok("sandbox.kill", json!({"sandbox": sb})), json!({}));
        let e = w.err("sandbox.exec", json!({"sandbox": sb, "argv": ["echo"]}));
        assert_eq!(code(&e), 1004);
        assert_eq!(e["data"]["sandbox"], sb.as_str());
        assert_eq!(code(&w.err("sandbox.kill", json!({"sandbox": sb}))), 1004);
        w.shutdown();
    }
}

#[test]
fn streamed_output_arrives_before_the_response_and_is_capped() {
    if !kvm_or_skip() {
        return;
    }
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        let tpl = w.load_bare();
        let sb = w.fork(&tpl);
        let id = w.request(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["flood", "300000"], "stream": true}),
        );
        let r = w.response(&id);
        let chunks = w.notifications_for(&id);
        assert!(chunks.len() >= 2, "300000 bytes come in several chunks");
        let streamed: String = chunks
            .iter()
            .map(|c| {
                assert_eq!(c["params"]["sandbox"], sb.as_str());
                assert_eq!(c["params"]["stream"], "stdout");
                c["params"]["data"].as_str().unwrap()
            })
            .collect();
        assert_eq!(streamed.len(), 300000);
        assert_eq!(r["result"]["stdout"].as_str().unwrap(), streamed);

        // Capped: output beyond output_cap is cut and flagged.
        let id = w.request(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["flood", "100000"], "stream": true, "output_cap": 5000}),
        );
        let r = w.response(&id);
        let streamed: usize = w
            .notifications_for(&id)
            .iter()
            .map(|c| c["params"]["data"].as_str().unwrap().len())
            .sum();
        assert_eq!(streamed, 5000);
        assert_eq!(r["result"]["stdout"].as_str().unwrap().len(), 5000);
        assert_eq!(r["result"]["truncated"], true);

        // base64 chunks decode to the same bytes; stderr is its own stream.
        let id = w.request(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["stderr", "x"], "stream": true, "encoding": "base64"}),
        );
        let r = w.response(&id);
        let chunks = w.notifications_for(&id);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0]["params"]["stream"], "stderr");
        assert_eq!(chunks[0]["params"]["data"], "eAo=");
        assert_eq!(chunks[0]["params"]["encoding"], "base64");
        assert_eq!(r["result"]["stderr"], "eAo=");

        // Without stream, no notifications.
        let id = w.request(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["flood", "9000"]}),
        );
        w.response(&id);
        assert!(w.notifications_for(&id).is_empty());
        w.shutdown();
    }
}

#[test]
fn cancel_stops_a_spinning_exec_and_leaves_the_worker_healthy() {
    if !kvm_or_skip() {
        return;
    }
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        let tpl = w.load_bare();
        let sb = w.fork(&tpl);
        // Cancelled before it starts: answered -32800, nothing ran.
        let id = w.request("sandbox.exec", json!({"sandbox": sb, "argv": ["spin"]}));
        w.cancel(&id);
        let r = w.response(&id);
        assert_eq!(r["error"]["code"], -32800, "{r}");
        let sb = w.fork(&tpl);

        // Cancelled while it runs.
        let id = w.request(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["spin"], "timeout_ms": 600_000}),
        );
        wait_until_busy(&mut w, &sb);
        w.cancel(&id);
        let r = w.response(&id);
        assert_eq!(r["error"]["code"], -32800, "{r}");
        assert_eq!(r["error"]["data"]["kind"], "cancelled");
        // The vCPU was stopped mid-program: only kill is left.
        let e = w.err("sandbox.exec", json!({"sandbox": sb, "argv": ["echo"]}));
        assert_eq!(code(&e), 1006);
        assert_eq!(state_of(&mut w, &sb), "broken");
        w.ok("sandbox.kill", json!({"sandbox": sb}));
        // A cancel for an id that is not running is ignored.
        w.cancel(&json!("no-such-call"));
        let sb = w.fork(&tpl);
        assert_eq!(exec(&mut w, &sb, &["echo", "ok"])["stdout"], "ok\n");
        w.shutdown();
    }
}

#[test]
fn a_long_exec_delays_no_other_call_and_a_second_exec_is_busy() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = w.load_bare();
    let a = w.fork(&tpl);
    let spin = w.request(
        "sandbox.exec",
        json!({"sandbox": a, "argv": ["spin"], "timeout_ms": 600_000}),
    );
    // While A spins: a fork, an exec on another sandbox, stats of A, a busy A.
    let b = w.fork(&tpl);
    assert_eq!(exec(&mut w, &b, &["echo", "b"])["stdout"], "b\n");
    w.ok("sandbox.stats", json!({"sandbox": a}));
    let e = w.err("sandbox.exec", json!({"sandbox": a, "argv": ["echo"]}));
    assert_eq!(code(&e), 1005);
    assert_eq!(e["data"], json!({"kind": "sandbox_busy", "sandbox": a}));
    let e = w.err("sandbox.snapshot", json!({"sandbox": a}));
    assert_eq!(code(&e), 1005);
    assert_eq!(state_of(&mut w, &a), "busy");
    // Everything above was answered while the spin still ran.
    assert!(!w.has_response(&spin));
    w.cancel(&spin);
    assert_eq!(w.response(&spin)["error"]["code"], -32800);
    w.shutdown();
}

#[test]
fn guest_faults_map_to_their_codes() {
    if !kvm_or_skip() {
        return;
    }
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        let tpl = w.load_bare();

        let sb = w.fork(&tpl);
        let e = w.err("sandbox.exec", json!({"sandbox": sb, "argv": ["crash"]}));
        assert_eq!(code(&e), 1008, "{e}");
        assert_eq!(e["data"]["kind"], "guest_crashed");
        assert_eq!(
            code(&w.err("sandbox.exec", json!({"sandbox": sb, "argv": ["echo"]}))),
            1006
        );

        let sb = w.fork(&tpl);
        let e = w.err("sandbox.exec", json!({"sandbox": sb, "argv": ["garbage"]}));
        assert_eq!(code(&e), 1009, "{e}");
        assert_eq!(e["data"]["kind"], "guest_protocol");

        // The bare guest ignores the in-guest deadline, so the host stops it.
        let sb = w.fork(&tpl);
        let e = w.err(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["spin"], "timeout_ms": 100}),
        );
        assert_eq!(code(&e), 1007, "{e}");
        let info = w.ok("worker.info", json!({}));
        let grace = info["limits"]["exec_host_grace_ms"].as_u64().unwrap();
        assert_eq!(
            e["data"],
            json!({"kind": "exec_timeout", "timeout_ms": 100 + grace})
        );
        let e = w.err("sandbox.exec", json!({"sandbox": sb, "argv": ["echo"]}));
        assert_eq!(code(&e), 1006);
        assert_eq!(e["data"]["sandbox"], sb.as_str());

        // Stray I/O is answered like bare hardware and counted.
        let sb = w.fork(&tpl);
        let r = exec(&mut w, &sb, &["badio"]);
        assert_eq!(r["exit_code"], 0);
        let stats = w.ok("sandbox.stats", json!({"sandbox": sb}));
        assert!(stats["stray_pio"].as_u64().unwrap() > 0);

        // After all that the worker still forks and runs.
        let sb = w.fork(&tpl);
        assert_eq!(exec(&mut w, &sb, &["echo", "fine"])["stdout"], "fine\n");
        w.shutdown();
    }
}

#[test]
fn files_move_in_chunks_over_json_rpc() {
    use base64::Engine as _;
    if !kvm_or_skip() {
        return;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let info = w.ok("worker.info", json!({}));
    assert_eq!(info["limits"]["max_write_bytes"], 16 << 20);
    assert_eq!(info["limits"]["max_read_bytes"], 16 << 20);
    let tpl = w.load_bare();
    let a = w.fork(&tpl);
    let b = w.fork(&tpl);

    // An empty file, text, and 5 MiB of binary as base64.
    let r = w.ok("sandbox.write_file", json!({"sandbox": a, "path": "/e"}));
    assert_eq!(r, json!({"bytes": 0}));
    let r = w.ok("sandbox.read_file", json!({"sandbox": a, "path": "/e"}));
    assert_eq!(r, json!({"data": "", "encoding": "utf8", "bytes": 0}));
    let r = w.ok(
        "sandbox.write_file",
        json!({"sandbox": a, "path": "/t", "data": "h\u{e9}llo\n", "mode": 0o600}),
    );
    assert_eq!(r, json!({"bytes": 7}));
    let r = w.ok("sandbox.read_file", json!({"sandbox": a, "path": "/t"}));
    assert_eq!(r["data"], "h\u{e9}llo\n");
    let big: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    let r = w.ok(
        "sandbox.write_file",
        json!({"sandbox": a, "path": "/big", "data_base64": b64.encode(&big)}),
    );
    assert_eq!(r, json!({"bytes": 5 << 20}));
    let r = w.ok(
        "sandbox.read_file",
        json!({"sandbox": a, "path": "/big", "encoding": "base64"}),
    );
    assert_eq!(r["bytes"], 5 << 20);
    let back = b64.decode(r["data"].as_str().unwrap()).unwrap();
    assert!(back == big, "5 MiB came back different");

    // Forks do not share files; a missing file is the agent's refusal.
    let e = w.err("sandbox.read_file", json!({"sandbox": b, "path": "/t"}));
    assert_eq!(code(&e), 1010, "{e}");

    // Over a limit: the guest's (the bare store holds 6 MiB), the call's, the worker's.
    let e = w.err(
        "sandbox.write_file",
        json!({"sandbox": b, "path": "/x", "data_base64": b64.encode(vec![0u8; 7 << 20])}),
    );
    assert_eq!(code(&e), 1016, "{e}");
    assert_eq!(e["data"]["kind"], "file_too_large");
    let e = w.err(
        "sandbox.read_file",
        json!({"sandbox": a, "path": "/big", "max_bytes": 100}),
    );
    assert_eq!(code(&e), 1016, "{e}");
    let e = w.err(
        "sandbox.read_file",
        json!({"sandbox": a, "path": "/big", "max_bytes": (16 << 20) + 1}),
    );
    assert_eq!(code(&e), -32602, "{e}");
    // Refusals leave both sandboxes usable.
    assert_eq!(exec(&mut w, &a, &["echo", "a"])["stdout"], "a\n");
    assert_eq!(exec(&mut w, &b, &["echo", "b"])["stdout"], "b\n");
    w.shutdown();

    let mut w = Worker::spawn(Framing::Lsp, &["--max-file-bytes", "1000"]);
    let info = w.ok("worker.info", json!({}));
    assert_eq!(info["limits"]["max_write_bytes"], 1000);
    let tpl = w.load_bare();
    let sb = w.fork(&tpl);
    let e = w.err(
        "sandbox.write_file",
        json!({"sandbox": sb, "path": "/x", "data": "y".repeat(1001)}),
    );
    assert_eq!(code(&e), 1016, "{e}");
    w.ok(
        "sandbox.write_file",
        json!({"sandbox": sb, "path": "/x", "data": "y".repeat(1000)}),
    );
    w.shutdown();
}

#[test]
fn unknown_ids_and_bad_params() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Lsp, &[]);
    let tpl = w.load_bare();
    let sb = w.fork(&tpl);
    let e = w.err("sandbox.fork", json!({"template": "tpl-404"}));
    assert_eq!(
        e["data"],
        json!({"kind": "template_not_found", "template": "tpl-404"})
    );
    assert_eq!(code(&e), 1002);
    for method in ["sandbox.stats", "sandbox.kill", "sandbox.snapshot"] {
        let e = w.err(method, json!({"sandbox": "sb-404"}));
        assert_eq!(code(&e), 1004, "{method}");
    }
    assert_eq!(
        code(&w.err("template.unload", json!({"template": "tpl-404"}))),
        1002
    );
    assert_eq!(
        code(&w.err(
            "template.save",
            json!({"template": "tpl-404", "path": "/tmp/x"})
        )),
        1002
    );
    let e = w.err(
        "template.load",
        json!({"path": "/nonexistent/template.zbt"}),
    );
    assert_eq!(code(&e), 1012);
    assert_eq!(e["data"]["path"], "/nonexistent/template.zbt");

    // Params the schema forbids.
    for (method, params) in [
        ("sandbox.exec", json!({"sandbox": sb, "argv": []})),
        ("sandbox.exec", json!({"sandbox": sb, "argv": "echo"})),
        (
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["echo"], "timeout_ms": 0}),
        ),
        (
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["echo"], "timeout_ms": -1}),
        ),
        (
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["echo"], "timeout": 5}),
        ),
        (
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["echo"], "stdin_base64": "!!"}),
        ),
        (
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["cat"], "stdin": "a", "stdin_base64": "YQ=="}),
        ),
        (
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["echo"], "encoding": "latin1"}),
        ),
        (
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["echo"], "output_cap": 1u64 << 40}),
        ),
        ("sandbox.exec", json!({"argv": ["echo"]})),
        ("sandbox.fork", json!({"template": tpl, "count": 0})),
        ("sandbox.fork", json!({"template": 5})),
        ("template.load", json!({})),
        ("template.load", json!({"builtin": "bare", "path": "/x"})),
        ("template.load", json!({"builtin": "linux"})),
        ("sandbox.kill", json!(["sb-1"])),
        ("template.list", json!({"verbose": true})),
    ] {
        let e = w.err_unchecked(method, params.clone());
        assert_eq!(code(&e), -32602, "{method} {params}: {e}");
    }
    // Params of the right shape that the engine refuses: too large for the mailbox.
    let big = "x".repeat(1 << 20);
    let e = w.err(
        "sandbox.exec",
        json!({"sandbox": sb, "argv": ["cat"], "stdin": big}),
    );
    assert_eq!(code(&e), -32602);
    assert_eq!(e["data"]["kind"], "invalid_request");
    // The sandbox is still fine.
    assert_eq!(exec(&mut w, &sb, &["echo", "ok"])["stdout"], "ok\n");
    w.shutdown();
}

#[test]
fn templates_load_save_unload_and_snapshot() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = w.load_bare();
    let sb = w.fork(&tpl);
    exec(&mut w, &sb, &["poke", "42"]);

    // A live sandbox becomes a template; its forks see its memory, the
    // original template's forks do not.
    let branch = w.ok("sandbox.snapshot", json!({"sandbox": sb}));
    let branch_id = branch["template"].as_str().unwrap().to_string();
    assert!(branch["source"].as_str().unwrap().contains(&sb));
    let child = w.fork(&branch_id);
    assert_eq!(
        exec(&mut w, &child, &["peek"])["stdout"],
        "0x000000000000002a\n"
    );
    let fresh = w.fork(&tpl);
    assert_ne!(
        exec(&mut w, &fresh, &["peek"])["stdout"],
        "0x000000000000002a\n"
    );
    assert_eq!(exec(&mut w, &sb, &["echo", "still"])["stdout"], "still\n");

    // Save and load back.
    let dir = std::env::temp_dir().join(format!("zeroboot-rpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("branch.zbt");
    let path_s = path.to_str().unwrap();
    let saved = w.ok(
        "template.save",
        json!({"template": branch_id, "path": path_s}),
    );
    assert!(saved["bytes"].as_u64().unwrap() > 0);
    let loaded = w.ok("template.load", json!({"path": path_s}));
    let loaded_id = loaded["template"].as_str().unwrap().to_string();
    let c = w.fork(&loaded_id);
    assert_eq!(
        exec(&mut w, &c, &["peek"])["stdout"],
        "0x000000000000002a\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let list = w.ok("template.list", json!({}));
    assert_eq!(list["templates"].as_array().unwrap().len(), 3);

    // Unload is refused while sandboxes live, unless forced.
    let e = w.err("template.unload", json!({"template": loaded_id}));
    assert_eq!(code(&e), 1003);
    assert_eq!(e["data"]["sandboxes"], 1);
    let r = w.ok(
        "template.unload",
        json!({"template": loaded_id, "force": true}),
    );
    assert_eq!(r, json!({"template": loaded_id, "killed": 1}));
    assert_eq!(code(&w.err("sandbox.stats", json!({"sandbox": c}))), 1004);
    w.ok("sandbox.kill", json!({"sandbox": child}));
    let r = w.ok("template.unload", json!({"template": branch_id}));
    assert_eq!(r["killed"], 0);
    w.shutdown();
}

#[test]
fn max_sandboxes_is_a_resource_limit() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Lsp, &["--max-sandboxes", "2"]);
    let tpl = w.load_bare();
    let info = w.ok("worker.info", json!({}));
    assert_eq!(info["limits"]["max_sandboxes"], 2);
    let a = w.fork(&tpl);
    w.fork(&tpl);
    let e = w.err("sandbox.fork", json!({"template": tpl}));
    assert_eq!(code(&e), 1011, "{e}");
    assert_eq!(e["data"]["kind"], "resource_limit");
    w.ok("sandbox.kill", json!({"sandbox": a}));
    w.fork(&tpl);
    let e = w.err("sandbox.fork", json!({"template": tpl, "count": 2}));
    assert_eq!(code(&e), 1011);
    // All or none: the failed batch left nothing behind.
    assert_eq!(
        w.ok("sandbox.list", json!({}))["sandboxes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    w.shutdown();
}

#[test]
fn fork_with_count_returns_a_list() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = w.load_bare();
    let r = w.ok("sandbox.fork", json!({"template": tpl, "count": 5}));
    let ids: Vec<&str> = r["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sandbox"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5);
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 5);
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    for id in &ids {
        assert_eq!(exec(&mut w, id, &["echo", id])["stdout"], format!("{id}\n"));
    }
    w.shutdown();
}

#[test]
fn without_kvm_the_worker_still_answers() {
    // Hide /dev/kvm in a private mount namespace (needs root and unshare).
    let probe = std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        eprintln!("skipping: cannot create a mount namespace");
        return;
    }
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"if [ -e /dev/kvm ]; then mount --bind /dev/null /dev/kvm || exit 99; fi; exec "$0" serve"#)
        .arg(env!("CARGO_BIN_EXE_zeroboot"));
    let mut w = Worker::spawn_command(Framing::Ndjson, cmd);
    let info = w.ok("worker.info", json!({}));
    assert_eq!(info["kvm"]["available"], false, "{info}");
    assert_eq!(info["kvm"]["flavor"], Value::Null);
    assert!(info["kvm"]["error"].as_str().is_some());
    let e = w.err("template.load", json!({"builtin": "bare"}));
    assert_eq!(code(&e), 1001);
    assert_eq!(e["data"]["kind"], "kvm_unavailable");
    assert_eq!(code(&w.err("sandbox.list", json!({}))), 1001);
    w.ok("rpc.discover", json!({}));
    w.shutdown();
}

#[test]
fn template_build_needs_hardware_kvm_and_real_files() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let info = w.ok("worker.info", json!({}));
    let e = w.err(
        "template.build",
        json!({"kernel": "/nonexistent/bzImage", "initramfs": "/nonexistent/initramfs"}),
    );
    if info["kvm"]["flavor"] == "pvm" {
        // kvm-pvm cannot boot a stock kernel: refused at once.
        assert_eq!(e["code"], 1014, "{e}");
        assert_eq!(e["data"], json!({"kind": "linux_needs_hardware_kvm"}));
    } else {
        assert_eq!(e["code"], -32602, "{e}");
        assert_eq!(e["data"]["kind"], "invalid_request");
    }
    let e = w.err_unchecked(
        "template.build",
        json!({"kernel": "k", "initramfs": "i", "memory_mib": 1}),
    );
    assert_eq!(e["code"], -32602);
    w.shutdown();
}

#[test]
fn template_build_from_a_spec_names_the_bad_field_and_needs_hardware_kvm() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let info = w.ok("worker.info", json!({}));
    // The spec is checked before anything is built, whatever the host.
    let e = w.err_unchecked(
        "template.build",
        json!({"spec": {"python": {"packages": ["numpy", 3]}}}),
    );
    assert_eq!(e["code"], 1017, "{e}");
    assert_eq!(e["data"]["kind"], "spec_invalid");
    assert_eq!(e["data"]["field"], "python.packages[1]");
    let e = w.err_unchecked("template.build", json!({"spec": {"memroy_mib": 512}}));
    assert_eq!(
        (e["code"].clone(), e["data"]["field"].clone()),
        (json!(1017), json!("memroy_mib"))
    );
    // A spec with a kernel is ambiguous.
    let e = w.err_unchecked("template.build", json!({"spec": {}, "kernel": "k"}));
    assert_eq!(e["code"], -32602);
    if info["kvm"]["flavor"] == "pvm" {
        let e = w.err("template.build", json!({"spec": {"memory_mib": 256}}));
        assert_eq!(e["code"], 1014, "{e}");
    }
    w.shutdown();
}

/// Private pages of a sandbox after a write and its undoing, right after
/// (unless an idle trim was quicker) and once it has been idle for 200 ms,
/// in a worker started with `serve ARGS`.
fn pages_after_idle(args: &[&str]) -> (u64, u64) {
    let mut w = Worker::spawn(Framing::Ndjson, args);
    let t = w.load_bare();
    let sb = w.fork(&t);
    exec(&mut w, &sb, &["poke", "0x1234"]);
    exec(&mut w, &sb, &["poke", "0x7e57000000000001"]); // the template's value
    let stats = |w: &mut Worker| {
        w.ok("sandbox.stats", json!({"sandbox": sb}))["dirty_pages"]
            .as_u64()
            .unwrap()
    };
    let busy = stats(&mut w);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let idle = stats(&mut w);
    w.shutdown();
    (busy, idle)
}

#[test]
fn an_idle_sandbox_gives_back_unchanged_pages_unless_the_worker_is_told_not_to() {
    if !kvm_or_skip() {
        return;
    }
    let (busy, idle) = pages_after_idle(&["--trim-idle-ms", "off"]);
    assert_eq!(idle, busy, "--trim-idle-ms off");
    // Compared with the untrimmed worker's count, not with this worker's own
    // count after the call: on a slow host (the emulated lane) the 5 ms idle
    // trim can run before that count is taken.
    let (_, trimmed) = pages_after_idle(&[]);
    assert!(
        trimmed < idle,
        "default worker: {trimmed} private pages once idle, {idle} without trims"
    );
}
