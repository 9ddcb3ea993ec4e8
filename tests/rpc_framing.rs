//! Bad input and the end of a session, against the real binary: malformed
//! headers, wrong lengths, truncated bodies, invalid UTF-8, non-objects, a
//! 100 MB message, unknown methods, ids of every type, batches, and every way
//! a session ends (shutdown/exit, exit alone, end of input, SIGTERM).
//! Most of it needs no KVM: the worker answers without it.

#[path = "common/rpc_client.rs"]
mod rpc_client;
#[path = "common/rpc_schema.rs"]
mod rpc_schema;

use std::io::Write;

use rpc_client::{BOTH, Framing, Worker, frame, kvm_or_skip};
use serde_json::{Value, json};

fn error_reply(w: &mut Worker) -> Value {
    w.wait_for(|m| m.get("error").is_some())
}

#[test]
fn invalid_json_utf8_and_non_objects_get_errors_and_the_session_goes_on() {
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        for (body, code, kind) in [
            (&b"{\"jsonrpc\": \"2.0\", "[..], -32700, "parse_error"),
            (
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"worker.info\",\"x\":\"\xff\xfe\"}",
                -32700,
                "invalid_utf8",
            ),
            (b"42", -32600, "invalid_request"),
            (b"\"a string\"", -32600, "invalid_request"),
            (b"null", -32600, "invalid_request"),
            (b"[]", -32600, "invalid_request"),
            (
                b"{\"id\":1,\"method\":\"worker.info\"}",
                -32600,
                "invalid_request",
            ),
            (
                b"{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"worker.info\"}",
                -32600,
                "invalid_request",
            ),
            (
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"worker.info\",\"params\":\"x\"}",
                -32600,
                "invalid_request",
            ),
        ] {
            w.send_raw(&frame(framing, body));
            let r = error_reply(&mut w);
            assert_eq!(
                r["error"]["code"],
                code,
                "{:?}: {r}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(r["error"]["data"]["kind"], kind);
        }
        // Still in step: a normal call works.
        w.ok("worker.info", json!({}));
        w.shutdown();
    }
}

#[test]
fn ids_of_every_legal_type_come_back_verbatim() {
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        for id in [
            json!(0),
            json!(-7),
            json!(1.5),
            json!(9007199254740993u64),
            json!("abc"),
            json!(""),
            json!("é\u{1F980}\"\\"),
            Value::Null,
        ] {
            w.request_with_id(id.clone(), "worker.info", json!({}));
            let r = w.wait_for(|m| m.get("result").is_some());
            assert_eq!(r["id"], id);
        }
        // The exact text of the id is echoed, not a re-rendering of it.
        w.send_raw(&frame(
            framing,
            br#"{"jsonrpc":"2.0","id":1.50,"method":"worker.info"}"#,
        ));
        let r = w.wait_for(|m| m.get("result").is_some());
        assert_eq!(r["id"], json!(1.5));
        w.shutdown();
    }
}

#[test]
fn unknown_methods_wrong_params_and_notifications() {
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        let e = w.err_unchecked("sandbox.frobnicate", json!({}));
        assert_eq!(e["code"], -32601);
        assert_eq!(
            e["data"],
            json!({"kind": "method_not_found", "method": "sandbox.frobnicate"})
        );
        let e = w.err_unchecked("worker.info", json!({"unexpected": 1}));
        assert_eq!(e["code"], -32602);
        let e = w.err_unchecked("sandbox.exec", json!({"sandbox": 1, "argv": [2]}));
        assert_eq!(e["code"], -32602);
        let e = w.err_unchecked("sandbox.kill", json!(["sb-1"]));
        assert_eq!(e["code"], -32602);
        // Notifications get no reply, known or not; a response is ignored.
        w.notify("no.such.method", json!({}));
        w.notify("$/setTrace", json!({"value": "off"}));
        w.notify("worker.info", json!({}));
        w.send_value(&json!({"jsonrpc": "2.0", "id": 99, "result": null}));
        let before = w.messages_read();
        w.ok("worker.info", json!({}));
        assert_eq!(
            w.messages_read(),
            before + 1,
            "only the request was answered"
        );
        w.shutdown();
    }
}

#[test]
fn batches_answer_in_one_array() {
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        w.expect_reply(&json!("b1"), "worker.info");
        w.expect_reply(&json!("b2"), "nope");
        w.send_value(&json!([
            {"jsonrpc": "2.0", "id": "b1", "method": "worker.info"},
            {"jsonrpc": "2.0", "method": "worker.info"},
            {"jsonrpc": "2.0", "id": "b2", "method": "nope"},
            7
        ]));
        let batch = w.wait_for(|m| m.is_array());
        let batch = batch.as_array().unwrap();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[0]["id"], "b1");
        assert!(batch[0]["result"].is_object());
        assert_eq!(batch[1]["error"]["code"], -32601);
        assert_eq!(batch[2]["error"]["code"], -32600);
        // A batch of notifications only gets nothing back.
        w.send_value(&json!([{"jsonrpc": "2.0", "method": "worker.info"}]));
        let before = w.messages_read();
        w.ok("worker.info", json!({}));
        assert_eq!(w.messages_read(), before + 1);
        w.shutdown();
    }
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn a_100_mb_message_is_refused_without_being_read_into_memory() {
    const SIZE: usize = 100 << 20;
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        w.ok("worker.info", json!({}));
        let pad = vec![b'x'; 1 << 20];
        match framing {
            Framing::Lsp => {
                w.send_raw(format!("Content-Length: {SIZE}\r\n\r\n").as_bytes());
                for _ in 0..SIZE / pad.len() {
                    w.send_raw(&pad);
                }
            }
            Framing::Ndjson => {
                w.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"worker.info\",\"pad\":\"");
                for _ in 0..SIZE / pad.len() {
                    w.send_raw(&pad);
                }
                w.send_raw(b"\"}\n");
            }
        }
        let r = error_reply(&mut w);
        assert_eq!(r["id"], Value::Null);
        assert_eq!(r["error"]["code"], -32600);
        assert_eq!(r["error"]["data"]["kind"], "message_too_large");
        assert_eq!(r["error"]["data"]["limit"], 32 << 20);
        assert!(r["error"]["data"]["length"].as_u64().unwrap() >= SIZE as u64);
        let peak = peak_rss_kib(w.pid());
        assert!(
            peak < 64 << 10,
            "peak RSS {peak} KiB: the message was buffered"
        );
        // The stream is still in step.
        w.ok("worker.info", json!({}));
        w.shutdown();
    }
}

#[test]
fn max_message_bytes_is_configurable() {
    let mut w = Worker::spawn(Framing::Ndjson, &["--max-message-bytes", "200"]);
    let info = w.ok("worker.info", json!({}));
    assert_eq!(info["limits"]["max_message_bytes"], 200);
    w.send_value(&json!({"jsonrpc": "2.0", "id": 5, "method": "worker.info", "params": {"x": "y".repeat(300)}}));
    let r = error_reply(&mut w);
    assert_eq!(r["error"]["data"]["kind"], "message_too_large");
    w.shutdown();
}

/// Sends raw input, closes stdin, and returns the messages and exit code.
fn unrecoverable(input: &[u8]) -> (Vec<Value>, Option<i32>) {
    let mut w = Worker::spawn(Framing::Lsp, &[]);
    w.send_raw(input);
    w.close_stdin();
    let status = w.wait_exit();
    w.assert_clean();
    let mut msgs = Vec::new();
    while w.messages_read() > msgs.len() {
        msgs.push(w.wait_for(|_| true));
    }
    (msgs, status.code())
}

#[test]
fn malformed_headers_end_the_session_with_a_logged_error_and_code_1() {
    let good = br#"{"jsonrpc":"2.0","id":1,"method":"worker.info"}"#;
    for (input, what) in [
        (b"Content-Length 2\r\n\r\n{}".to_vec(), "no colon"),
        (
            b"Content-Length: abc\r\n\r\n{}".to_vec(),
            "non-numeric length",
        ),
        (
            b"Content-Type: application/json\r\n\r\n{}".to_vec(),
            "missing length",
        ),
        (
            b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
            "two lengths",
        ),
        (
            [b"X".repeat(10_000), b"\r\n\r\n".to_vec()].concat(),
            "header too long",
        ),
    ] {
        let (msgs, code) = unrecoverable(&input);
        assert_eq!(code, Some(1), "{what}");
        assert_eq!(msgs.len(), 1, "{what}: {msgs:?}");
        assert_eq!(msgs[0]["error"]["code"], -32700, "{what}");
        assert_eq!(msgs[0]["error"]["data"]["kind"], "framing", "{what}");
    }
    // A length too short cuts the body (parse error), then the rest of it is
    // read as a header: unrecoverable.
    let mut input = format!("Content-Length: {}\r\n\r\n", good.len() - 10).into_bytes();
    input.extend_from_slice(good);
    let (msgs, code) = unrecoverable(&input);
    assert_eq!(code, Some(1));
    assert_eq!(msgs[0]["error"]["data"]["kind"], "parse_error");
    assert_eq!(msgs[1]["error"]["data"]["kind"], "framing");
}

#[test]
fn a_truncated_body_ends_the_session_with_code_1() {
    let mut w = Worker::spawn(Framing::Lsp, &[]);
    w.ok("worker.info", json!({}));
    w.send_raw(b"Content-Length: 100\r\n\r\n{\"jsonrpc\":");
    w.close_stdin();
    assert_eq!(w.wait_exit().code(), Some(1));
    let r = error_reply(&mut w);
    assert_eq!(r["error"]["data"]["kind"], "framing");
    w.assert_clean();
    assert!(
        w.stderr().contains("cannot be resynchronised"),
        "{}",
        w.stderr()
    );
}

#[test]
fn end_of_input_exits_0() {
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        w.ok("worker.info", json!({}));
        w.close_stdin();
        assert_eq!(w.wait_exit().code(), Some(0));
        w.assert_clean();
    }
}

#[test]
fn exit_without_shutdown_exits_1_and_requests_after_shutdown_are_refused() {
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    w.notify("exit", Value::Null);
    assert_eq!(w.wait_exit().code(), Some(1));
    w.assert_clean();

    let mut w = Worker::spawn(Framing::Lsp, &[]);
    assert_eq!(w.ok("shutdown", json!({})), Value::Null);
    let e = w.err("worker.info", json!({}));
    assert_eq!(e["code"], -32600);
    assert_eq!(e["data"]["kind"], "shutting_down");
    w.notify("exit", Value::Null);
    assert_eq!(w.wait_exit().code(), Some(0));
    w.assert_clean();
}

#[test]
fn a_piped_script_is_answered_before_end_of_input_ends_the_session() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_zeroboot"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let script = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "worker.info"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "rpc.discover"}),
    ];
    let mut stdin = child.stdin.take().unwrap();
    for line in &script {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut ids: Vec<i64> = lines.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2]);
}

#[test]
fn sigterm_kills_every_sandbox_answers_running_calls_and_exits_0() {
    if !kvm_or_skip() {
        return;
    }
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        let tpl = w.load_bare();
        let sb = w.fork(&tpl);
        w.fork(&tpl);
        let spin = w.request(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["spin"], "timeout_ms": 600_000}),
        );
        // Wait until the spin runs, then terminate.
        loop {
            let list = w.ok("sandbox.list", json!({}));
            if list["sandboxes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["state"] == "busy")
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        w.signal(libc::SIGTERM);
        let r = w.response(&spin);
        assert_eq!(
            r["error"]["code"], 1004,
            "killed under the running exec: {r}"
        );
        assert_eq!(w.wait_exit().code(), Some(0));
        w.assert_clean();
    }
}

#[test]
fn shutdown_kills_running_execs() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = w.load_bare();
    let sb = w.fork(&tpl);
    let spin = w.request(
        "sandbox.exec",
        json!({"sandbox": sb, "argv": ["spin"], "timeout_ms": 600_000}),
    );
    let id = w.request("shutdown", json!({}));
    assert_eq!(w.response(&id)["result"], Value::Null);
    let r = w.response(&spin);
    assert!(r.get("error").is_some(), "{r}");
    w.notify("exit", Value::Null);
    assert_eq!(w.wait_exit().code(), Some(0));
    w.assert_clean();
}

#[test]
fn a_peer_that_closes_stdout_ends_the_session_with_code_0() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_zeroboot"))
        .arg("serve")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().unwrap();
    let deadline = std::time::Instant::now() + rpc_client::WAIT;
    // Replies now fail to write (EPIPE): the worker must notice and exit.
    let status = loop {
        let line = json!({"jsonrpc": "2.0", "id": 1, "method": "worker.info"});
        // The worker may already be gone; a failed write is expected then.
        let _ = writeln!(stdin, "{line}");
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}
