//! `sandbox.run_code` and `sandbox.contexts` end to end against the bare
//! template (whose `bash` code is one of its exec command lines, `result`
//! and `raise` set a result or an error, and a context is a remembered name):
//! the wire shapes, streaming, the one-shot form, contexts through a
//! snapshot, and the errors. Every message is checked against the schema by
//! the client. Languages themselves are tested on Linux guests
//! (tests/run_code.rs, in the lane) and on the agent over pipes
//! (tests/agent_code.rs).

#[path = "common/rpc_client.rs"]
mod rpc_client;
#[path = "common/rpc_schema.rs"]
mod rpc_schema;

use rpc_client::{BOTH, Framing, Worker, kvm_or_skip};
use serde_json::{Value, json};

fn run(w: &mut Worker, sandbox: &str, code: &str) -> Value {
    w.ok(
        "sandbox.run_code",
        json!({"sandbox": sandbox, "language": "bash", "code": code}),
    )
}

fn code_of(err: &Value) -> i64 {
    err["code"].as_i64().unwrap()
}

#[test]
fn results_errors_and_output_in_both_framings() {
    if !kvm_or_skip() {
        return;
    }
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        let tpl = w.load_bare();
        let sb = w.fork(&tpl);
        let r = run(&mut w, &sb, "echo hello   world");
        assert_eq!(
            (r["stdout"].as_str(), r["exit_code"].as_i64()),
            (Some("hello world\n"), Some(0))
        );
        assert!(r.get("result").is_none() && r.get("error").is_none(), "{r}");
        let r = run(&mut w, &sb, "  result 6 * 7 ");
        assert_eq!(r["result"], "6 * 7");
        let r = run(&mut w, &sb, "raise ValueError boom");
        assert_eq!(r["exit_code"], 1);
        assert_eq!(r["error"]["name"], "ValueError");
        assert_eq!(r["error"]["value"], "boom");
        assert!(r["error"]["traceback"].as_str().is_some());
        let r = w.ok(
            "sandbox.run_code",
            json!({"sandbox": sb, "language": "bash", "code": "env", "env": {"K": "v"}, "cwd": "/w"}),
        );
        assert_eq!(r["stdout"], "K=v\n");
        // The bare guest has no Python: the agent says so.
        let e = w.err(
            "sandbox.run_code",
            json!({"sandbox": sb, "language": "python", "code": "1"}),
        );
        assert_eq!(code_of(&e), 1010);
        assert!(
            e["data"]["message"].as_str().unwrap().contains("bash"),
            "{e}"
        );
        assert_eq!(run(&mut w, &sb, "exit 5")["exit_code"], 5, "still usable");
        w.shutdown();
    }
}

#[test]
fn streamed_code_output_names_its_sandbox_even_in_the_one_shot_form() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = w.load_bare();
    let sb = w.fork(&tpl);
    let id = w.request(
        "sandbox.run_code",
        json!({"sandbox": sb, "language": "bash", "code": "flood 100000", "stream": true}),
    );
    let r = w.response(&id);
    let chunks = w.notifications_for(&id);
    assert!(chunks.len() >= 2);
    let streamed: String = chunks
        .iter()
        .map(|c| {
            assert_eq!(c["params"]["sandbox"], sb.as_str());
            c["params"]["data"].as_str().unwrap()
        })
        .collect();
    assert_eq!(r["result"]["stdout"].as_str().unwrap(), streamed);

    let id = w.request(
        "sandbox.run_code",
        json!({"template": tpl, "language": "bash", "code": "flood 70000", "stream": true}),
    );
    let r = w.response(&id);
    let chunks = w.notifications_for(&id);
    let temp = chunks[0]["params"]["sandbox"].as_str().unwrap().to_string();
    assert_ne!(temp, sb);
    assert!(
        chunks
            .iter()
            .all(|c| c["params"]["sandbox"] == temp.as_str())
    );
    assert_eq!(r["result"]["stdout"].as_str().unwrap().len(), 70000);
    w.shutdown();
}

#[test]
fn the_one_shot_form_forks_runs_and_kills() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = w.load_bare();
    for _ in 0..3 {
        let r = w.ok(
            "sandbox.run_code",
            json!({"template": tpl, "language": "bash", "code": "result 1"}),
        );
        assert_eq!(r["result"], "1");
    }
    let list = w.ok("sandbox.list", json!({}));
    assert_eq!(
        list["sandboxes"],
        json!([]),
        "every temporary sandbox is gone"
    );
    // A failing run kills its sandbox too.
    let e = w.err(
        "sandbox.run_code",
        json!({"template": tpl, "language": "bash", "code": "spin", "timeout_ms": 50}),
    );
    assert_eq!(code_of(&e), 1007);
    assert_eq!(w.ok("sandbox.list", json!({}))["sandboxes"], json!([]));
    let e = w.err(
        "sandbox.run_code",
        json!({"template": "tpl-none", "language": "bash", "code": "true"}),
    );
    assert_eq!(code_of(&e), 1002);
    w.shutdown();
}

#[test]
fn the_one_shot_form_forks_with_a_memory_limit_and_network_choice() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = w.load_bare();
    let r = w.ok(
        "sandbox.run_code",
        json!({"template": tpl, "language": "bash", "code": "dirty 16",
               "memory_limit_mib": 1, "network": false}),
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    // 4 MiB of writes in a fork limited to 1 MiB: stopped, and killed.
    let e = w.err(
        "sandbox.run_code",
        json!({"template": tpl, "language": "bash", "code": "dirty 1024", "memory_limit_mib": 1}),
    );
    assert_eq!(
        (code_of(&e), &e["data"]["kind"]),
        (1011, &json!("memory_limit")),
        "{e}"
    );
    assert_eq!(w.ok("sandbox.list", json!({}))["sandboxes"], json!([]));
    // Without the limit the same code runs.
    let r = w.ok(
        "sandbox.run_code",
        json!({"template": tpl, "language": "bash", "code": "dirty 1024"}),
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    w.shutdown();
}

#[test]
fn contexts_are_listed_and_branch_with_their_sandbox() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = w.load_bare();
    let sb = w.fork(&tpl);
    assert_eq!(
        w.ok("sandbox.contexts", json!({"sandbox": sb})),
        json!({"contexts": []})
    );
    for name in ["nb", "b.2", "nb"] {
        w.ok(
            "sandbox.run_code",
            json!({"sandbox": sb, "language": "bash", "code": "poke 7", "context": name}),
        );
    }
    let listed = json!({"contexts": [
        {"name": "nb", "language": "bash"},
        {"name": "b.2", "language": "bash"}
    ]});
    assert_eq!(w.ok("sandbox.contexts", json!({"sandbox": sb})), listed);
    let branch = w.ok("sandbox.snapshot", json!({"sandbox": sb}));
    let child = w.fork(branch["template"].as_str().unwrap());
    assert_eq!(w.ok("sandbox.contexts", json!({"sandbox": child})), listed);
    let fresh = w.fork(&tpl);
    assert_eq!(
        w.ok("sandbox.contexts", json!({"sandbox": fresh})),
        json!({"contexts": []})
    );
    let e = w.err("sandbox.contexts", json!({"sandbox": "sb-none"}));
    assert_eq!(code_of(&e), 1004);
    w.shutdown();
}

#[test]
fn bad_run_code_params_are_refused_before_the_guest_sees_them() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = w.load_bare();
    let sb = w.fork(&tpl);
    for params in [
        json!({"language": "bash", "code": "true"}),
        json!({"sandbox": sb, "template": tpl, "language": "bash", "code": "true"}),
        json!({"sandbox": sb, "language": "cobol", "code": "true"}),
        json!({"sandbox": sb, "language": "bash"}),
        json!({"sandbox": sb, "language": "bash", "code": "true", "timeout_ms": 0}),
        json!({"sandbox": sb, "language": "bash", "code": "true", "context": "a b"}),
        json!({"sandbox": sb, "language": "bash", "code": "true", "context": ""}),
        json!({"template": tpl, "language": "bash", "code": "true", "context": "nb"}),
        json!({"sandbox": sb, "language": "bash", "code": "true", "shell": true}),
        json!({"sandbox": sb, "language": "bash", "code": "true", "memory_limit_mib": 4}),
        json!({"sandbox": sb, "language": "bash", "code": "true", "network": false}),
    ] {
        let e = w.err_unchecked("sandbox.run_code", params.clone());
        assert_eq!(code_of(&e), -32602, "{params}: {e}");
    }
    let e = w.err(
        "sandbox.run_code",
        json!({"sandbox": sb, "language": "bash", "code": "x".repeat(70_000)}),
    );
    assert_eq!(code_of(&e), -32602, "code larger than the mailbox: {e}");
    assert_eq!(run(&mut w, &sb, "echo ok")["stdout"], "ok\n");
    w.shutdown();
}
