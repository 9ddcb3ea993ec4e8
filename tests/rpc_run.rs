//! `sandbox.run` (fork, exec, kill in one call) and `worker.ping` against the
//! real binary, in both framings; and the mailbox-size error, which counts
//! everything a request sends.

#[path = "common/rpc_client.rs"]
mod rpc_client;
#[path = "common/rpc_schema.rs"]
mod rpc_schema;

use rpc_client::{BOTH, Framing, Worker, kvm_or_skip};
use serde_json::{Value, json};

fn live_sandboxes(w: &mut Worker) -> usize {
    w.ok("sandbox.list", json!({}))["sandboxes"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn ping_answers_an_empty_object_without_kvm_too() {
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        assert_eq!(w.ok("worker.ping", json!({})), json!({}));
        let id = w.request_unchecked("worker.ping", Value::Null);
        assert_eq!(w.response(&id)["result"], json!({}));
        let e = w.err_unchecked("worker.ping", json!({"x": 1}));
        assert_eq!(e["code"], -32602);
        w.shutdown();
    }
}

#[test]
fn run_forks_execs_and_kills_in_one_call() {
    if !kvm_or_skip() {
        return;
    }
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        let tpl = w.load_bare();
        let r = w.ok(
            "sandbox.run",
            json!({"template": tpl, "argv": ["echo", "hello"]}),
        );
        assert_eq!(r["stdout"], "hello\n");
        assert_eq!(r["exit_code"], 0);
        assert!(r["sandbox"].as_str().unwrap().starts_with("sb-"));
        assert!(r["fork_us"].as_u64().is_some());
        // Killed before the answer.
        assert_eq!(live_sandboxes(&mut w), 0);
        let e = w.err("sandbox.kill", json!({"sandbox": r["sandbox"]}));
        assert_eq!(e["code"], 1004);

        // Every exec param works as in sandbox.exec.
        let r = w.ok(
            "sandbox.run",
            json!({"template": tpl, "argv": ["cat"], "stdin_base64": "AP8=", "encoding": "base64"}),
        );
        assert_eq!(r["stdout"], "AP8=");
        let r = w.ok(
            "sandbox.run",
            json!({"template": tpl, "argv": ["env"], "env": {"K": "v"}, "cwd": "/w"}),
        );
        assert_eq!(r["stdout"], "K=v\n");
        let r = w.ok(
            "sandbox.run",
            json!({"template": tpl, "argv": ["stderr", "e"]}),
        );
        assert_eq!(
            (r["stdout"].as_str(), r["stderr"].as_str()),
            (Some(""), Some("e\n"))
        );

        // Streamed output names the run's sandbox and comes before the answer.
        let id = w.request(
            "sandbox.run",
            json!({"template": tpl, "argv": ["flood", "100000"], "stream": true}),
        );
        let r = w.response(&id);
        let chunks = w.notifications_for(&id);
        let streamed: usize = chunks
            .iter()
            .map(|c| {
                assert_eq!(c["params"]["sandbox"], r["result"]["sandbox"]);
                c["params"]["data"].as_str().unwrap().len()
            })
            .sum();
        assert_eq!(streamed, 100_000);
        assert_eq!(live_sandboxes(&mut w), 0);
        w.shutdown();
    }
}

#[test]
fn run_failures_are_the_calls_errors_and_the_sandbox_is_killed_anyway() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = w.load_bare();
    let e = w.err(
        "sandbox.run",
        json!({"template": tpl, "argv": ["spin"], "timeout_ms": 50}),
    );
    assert_eq!(e["code"], 1007, "{e}");
    let e = w.err("sandbox.run", json!({"template": tpl, "argv": ["crash"]}));
    assert_eq!(e["code"], 1008, "{e}");
    let e = w.err(
        "sandbox.run",
        json!({"template": "tpl-404", "argv": ["echo"]}),
    );
    assert_eq!(e["code"], 1002);
    // Refused by the engine before anything ran.
    let e = w.err_unchecked("sandbox.run", json!({"template": tpl, "argv": []}));
    assert_eq!(e["code"], -32602);
    assert_eq!(live_sandboxes(&mut w), 0);
    // Cancelled while it runs.
    let id = w.request(
        "sandbox.run",
        json!({"template": tpl, "argv": ["spin"], "timeout_ms": 600_000}),
    );
    while live_sandboxes(&mut w) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    w.cancel(&id);
    assert_eq!(w.response(&id)["error"]["code"], -32800);
    assert_eq!(live_sandboxes(&mut w), 0);
    for (params, what) in [
        (
            json!({"template": tpl, "argv": ["echo"], "sandbox": "sb-1"}),
            "sandbox",
        ),
        (
            json!({"template": tpl, "argv": ["echo"], "count": 0}),
            "count 0",
        ),
        (
            json!({"template": tpl, "argv": ["echo"], "count": 4097}),
            "count over the limit",
        ),
        (json!({"argv": ["echo"]}), "no template"),
    ] {
        let e = w.err_unchecked("sandbox.run", params);
        assert_eq!(e["code"], -32602, "{what}: {e}");
    }
    w.shutdown();
}

#[test]
fn run_with_count_runs_each_in_its_own_fork() {
    if !kvm_or_skip() {
        return;
    }
    // No pool: every fork is created on the slow-work pool.
    let mut w = Worker::spawn(Framing::Lsp, &["--pool", "0"]);
    let tpl = w.load_bare();
    let r = w.ok(
        "sandbox.run",
        json!({"template": tpl, "argv": ["poke", "7"], "count": 5}),
    );
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    let sandboxes: std::collections::HashSet<&str> = results
        .iter()
        .map(|x| {
            assert_eq!(x["exit_code"], 0, "{x}");
            x["sandbox"].as_str().unwrap()
        })
        .collect();
    assert_eq!(sandboxes.len(), 5);
    assert!(r["total_us"].as_u64().is_some());
    // Failures are outcomes, not the call's error.
    let r = w.ok(
        "sandbox.run",
        json!({"template": tpl, "argv": ["crash"], "count": 2}),
    );
    for x in r["results"].as_array().unwrap() {
        assert_eq!(x["error"]["code"], 1008, "{x}");
    }
    // A single run without a pooled VM forks on the slow-work pool.
    let r = w.ok(
        "sandbox.run",
        json!({"template": tpl, "argv": ["echo", "cold"]}),
    );
    assert_eq!(r["stdout"], "cold\n");
    assert_eq!(live_sandboxes(&mut w), 0);
    w.shutdown();
}

/// The mailbox-size error counts everything an exec sends: a 10 MB `env`
/// value was once reported as "3 bytes" over.
#[test]
fn an_oversized_request_is_refused_with_its_whole_size() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = w.load_bare();
    let sb = w.fork(&tpl);
    let big = "v".repeat(10_000_000);
    for params in [
        json!({"sandbox": sb, "argv": ["env"], "env": {"K": big}}),
        json!({"sandbox": sb, "argv": ["pwd"], "cwd": big}),
    ] {
        let e = w.err("sandbox.exec", params);
        assert_eq!(e["code"], -32602, "{e}");
        let detail = e["data"]["detail"].as_str().unwrap();
        let bytes: u64 = detail
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no size in {detail:?}"));
        assert!(bytes > 10_000_000, "{detail}");
        assert!(detail.ends_with("bytes"), "{detail}");
    }
    assert_eq!(
        w.ok(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["echo", "ok"]})
        )["stdout"],
        "ok\n"
    );
    w.shutdown();
}
