//! 1000 sandboxes in one worker with mixed, pipelined, concurrent calls: forks
//! (single and batched), execs (plain and streaming), stats, lists, kills.
//! Every reply must be right, and stdout must hold nothing but well-formed,
//! schema-valid frames throughout (the client reads it strictly).

#[path = "common/rpc_client.rs"]
mod rpc_client;
#[path = "common/rpc_schema.rs"]
mod rpc_schema;

use std::collections::HashMap;

use rpc_client::{Framing, Worker, kvm_or_skip};
use serde_json::{Value, json};

const SANDBOXES: usize = 1000;

fn run(framing: Framing) {
    let started = std::time::Instant::now();
    let mut w = Worker::spawn(framing, &["--pool", "32", "--max-sandboxes", "1100"]);
    let tpl = w.load_bare();

    // Forks: 8 batches of 100 and 200 single forks, all in flight at once.
    // Each may dirty 2 MiB: 1000 sandboxes allowed their whole 32 MiB would
    // not fit the default memory budget of a 24 GiB host.
    let mut fork_calls = Vec::new();
    for i in 0..SANDBOXES - 800 {
        fork_calls.push(w.request(
            "sandbox.fork",
            json!({"template": tpl, "memory_limit_mib": 2}),
        ));
        if i % 25 == 0 {
            fork_calls.push(w.request(
                "sandbox.fork",
                json!({"template": tpl, "count": 100, "memory_limit_mib": 2}),
            ));
        }
    }
    let mut sandboxes = Vec::new();
    for id in &fork_calls {
        let r = w.response(id);
        let result = &r["result"];
        match result.get("sandboxes") {
            Some(list) => sandboxes.extend(
                list.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["sandbox"].as_str().unwrap().to_string()),
            ),
            None => sandboxes.push(result["sandbox"].as_str().expect("forked").to_string()),
        }
    }
    assert_eq!(sandboxes.len(), SANDBOXES);
    eprintln!("{framing:?}: {SANDBOXES} forks in {:?}", started.elapsed());

    // Execs on every sandbox, a third of them streaming, with stats, lists and
    // info calls mixed in, all pipelined.
    let mut execs: HashMap<String, (Value, bool)> = HashMap::new();
    let mut others = Vec::new();
    for (i, sb) in sandboxes.iter().enumerate() {
        let stream = i % 3 == 0;
        let id = if stream {
            w.request(
                "sandbox.exec",
                json!({"sandbox": sb, "argv": ["flood", "5000"], "stream": true}),
            )
        } else {
            w.request("sandbox.exec", json!({"sandbox": sb, "argv": ["echo", sb]}))
        };
        execs.insert(sb.clone(), (id, stream));
        if i % 10 == 0 {
            others.push(w.request("sandbox.stats", json!({"sandbox": sb})));
        }
        if i % 250 == 0 {
            others.push(w.request("sandbox.list", json!({})));
            others.push(w.request("worker.info", json!({})));
            others.push(w.request("template.list", json!({})));
        }
    }
    for (sb, (id, stream)) in &execs {
        let r = w.response(id);
        let result = r
            .get("result")
            .unwrap_or_else(|| panic!("exec on {sb}: {r}"));
        if *stream {
            assert_eq!(result["stdout"].as_str().unwrap().len(), 5000);
            let streamed: usize = w
                .notifications_for(id)
                .iter()
                .map(|n| {
                    assert_eq!(n["params"]["sandbox"], sb.as_str());
                    n["params"]["data"].as_str().unwrap().len()
                })
                .sum();
            assert_eq!(streamed, 5000);
        } else {
            assert_eq!(result["stdout"], format!("{sb}\n"));
        }
    }
    for id in &others {
        let r = w.response(id);
        assert!(r.get("result").is_some(), "{r}");
    }
    let info = w.ok("worker.info", json!({}));
    assert_eq!(info["sandboxes"], SANDBOXES);
    eprintln!("{framing:?}: execs done at {:?}", started.elapsed());

    // Kill half while execing on the other half; then the killed are gone.
    let mut calls = Vec::new();
    for (i, sb) in sandboxes.iter().enumerate() {
        if i % 2 == 0 {
            calls.push((w.request("sandbox.kill", json!({"sandbox": sb})), true));
        } else {
            calls.push((
                w.request(
                    "sandbox.exec",
                    json!({"sandbox": sb, "argv": ["exit", "3"]}),
                ),
                false,
            ));
        }
    }
    for (id, kill) in &calls {
        let r = w.response(id);
        if *kill {
            assert_eq!(r["result"], json!({}), "{r}");
        } else {
            assert_eq!(r["result"]["exit_code"], 3, "{r}");
        }
    }
    let e = w.err(
        "sandbox.exec",
        json!({"sandbox": sandboxes[0], "argv": ["echo"]}),
    );
    assert_eq!(e["code"], 1004);
    let list = w.ok("sandbox.list", json!({}));
    assert_eq!(list["sandboxes"].as_array().unwrap().len(), SANDBOXES / 2);

    let read = w.messages_read();
    assert!(read > 2 * SANDBOXES, "{read} messages");
    w.shutdown();
    eprintln!("{framing:?}: done in {:?}", started.elapsed());
}

#[test]
fn a_thousand_sandboxes_with_mixed_concurrent_calls_lsp() {
    if !kvm_or_skip() {
        return;
    }
    run(Framing::Lsp);
}

#[test]
fn a_thousand_sandboxes_with_mixed_concurrent_calls_ndjson() {
    if !kvm_or_skip() {
        return;
    }
    run(Framing::Ndjson);
}
