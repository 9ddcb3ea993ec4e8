//! The session under a client that misbehaves, against the real binary:
//! one that never reads (memory stays bounded, the worker answers normally
//! once it reads), one that floods slow calls (kill, list, info and
//! shutdown still answer at once; SIGTERM and end of input still end the
//! worker within their documented bounds), one that reuses the id of a
//! running request (refused).

#[path = "common/rpc_client.rs"]
mod rpc_client;
#[path = "common/rpc_schema.rs"]
mod rpc_schema;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rpc_client::{Framing, Worker, kvm_or_skip};
use serde_json::{Value, json};

/// A worker on bare pipes: nothing reads its output until the test does.
struct Raw {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Raw {
    fn spawn(args: &[&str]) -> Raw {
        let mut child = Command::new(env!("CARGO_BIN_EXE_zeroboot"))
            .arg("serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Raw {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, v: &Value) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        assert!(
            self.stdout.read_line(&mut line).unwrap() > 0,
            "output ended"
        );
        serde_json::from_str(&line).unwrap()
    }

    /// Resident and peak resident memory, in KiB.
    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn finish(mut self) {
        self.stdin = None;
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), Some(0));
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 20,000 pipelined `rpc.discover` (about 1 GB of answers) from a client
/// that reads nothing: the worker stops reading, its memory stays small, and
/// every answer arrives once the client reads.
#[test]
fn a_client_that_never_reads_cannot_grow_the_worker() {
    const CALLS: usize = 20_000;
    let mut w = Raw::spawn(&[]);
    let mut stdin = w.stdin.take().unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&written);
    let writer = std::thread::spawn(move || {
        for id in 0..CALLS {
            let line = json!({"jsonrpc": "2.0", "id": id, "method": "rpc.discover"});
            writeln!(stdin, "{line}").unwrap();
            count.fetch_add(1, Ordering::SeqCst);
        }
        stdin
    });
    std::thread::sleep(Duration::from_secs(2));
    let stalled_at = written.load(Ordering::SeqCst);
    let (_, peak) = w.rss_kib();
    assert!(
        stalled_at < CALLS,
        "the worker read every request without anyone reading its answers"
    );
    assert!(
        peak < 64 << 10,
        "peak RSS {peak} KiB with {stalled_at} requests read"
    );
    for id in 0..CALLS {
        let r = w.read();
        assert_eq!(r["id"], id);
        assert_eq!(r["result"]["openrpc"], "1.3.2");
    }
    w.stdin = Some(writer.join().unwrap());
    w.send(&json!({"jsonrpc": "2.0", "id": "after", "method": "worker.info"}));
    assert_eq!(w.read()["id"], "after");
    let (_, peak) = w.rss_kib();
    assert!(peak < 64 << 10, "peak RSS {peak} KiB");
    eprintln!("stalled after {stalled_at} requests; peak RSS {peak} KiB");
    w.finish();
}

/// Twenty sandboxes stream 4 MB each to a client that reads nothing: their
/// guests stop running until the output can go, so the worker does not hold
/// their output (160 MB if it queued it all); then everything arrives.
#[test]
fn streaming_guests_wait_while_their_output_has_nowhere_to_go() {
    if !kvm_or_skip() {
        return;
    }
    const SANDBOXES: usize = 20;
    const BYTES: usize = 4_000_000;
    let mut w = Raw::spawn(&[]);
    w.send(&json!({"jsonrpc": "2.0", "id": 0, "method": "template.load", "params": {"builtin": "bare"}}));
    let tpl = w.read()["result"]["template"].clone();
    let mut sandboxes = Vec::new();
    for i in 0..SANDBOXES {
        w.send(&json!({"jsonrpc": "2.0", "id": i + 1, "method": "sandbox.fork", "params": {"template": tpl}}));
        sandboxes.push(w.read()["result"]["sandbox"].clone());
    }
    let (before, _) = w.rss_kib();
    for (i, sb) in sandboxes.iter().enumerate() {
        w.send(&json!({"jsonrpc": "2.0", "id": format!("x{i}"), "method": "sandbox.exec",
            "params": {"sandbox": sb, "argv": ["flood", BYTES.to_string()], "stream": true, "output_cap": BYTES}}));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (during, _) = w.rss_kib();
    assert!(
        during < before + (48 << 10),
        "RSS grew from {before} to {during} KiB while nobody read"
    );
    let mut streamed = [0usize; SANDBOXES];
    let mut done = 0;
    while done < SANDBOXES {
        let m = w.read();
        if m["method"] == "sandbox.output" {
            let i: usize = m["params"]["request"].as_str().unwrap()[1..]
                .parse()
                .unwrap();
            streamed[i] += m["params"]["data"].as_str().unwrap().len();
        } else {
            let i: usize = m["id"].as_str().unwrap()[1..].parse().unwrap();
            assert_eq!(m["result"]["stdout"].as_str().unwrap().len(), BYTES, "x{i}");
            assert_eq!(streamed[i], BYTES, "x{i}: notifications before the answer");
            done += 1;
        }
    }
    eprintln!("RSS {before} KiB before, {during} KiB while nobody read");
    w.finish();
}

/// A FIFO nobody writes to, removed when dropped.
struct Fifo(std::path::PathBuf);

impl Fifo {
    fn new(name: &str) -> Fifo {
        let path =
            std::env::temp_dir().join(format!("zeroboot-{name}-{}.fifo", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let status = Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(status.success());
        Fifo(path)
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Fills the slow-work pool: 600 loads of a FIFO (which block in `open` on
/// a worker that does not refuse FIFOs: more than tokio's 512 blocking
/// threads, which the worker once ran them on) and 20 loads of the bare
/// template.
fn flood_slow_calls(w: &mut Worker, fifo: &Fifo) -> Vec<Value> {
    let fifo = &fifo.0;
    let mut ids = Vec::new();
    for _ in 0..600 {
        ids.push(w.request("template.load", json!({"path": fifo.to_str().unwrap()})));
    }
    for _ in 0..20 {
        ids.push(w.request("template.load", json!({"builtin": "bare"})));
    }
    ids
}

/// How long the answer to `id` takes to arrive.
fn answered_in(w: &mut Worker, id: &Value) -> (Value, Duration) {
    let start = Instant::now();
    let r = w.response(id);
    (r, start.elapsed())
}

#[test]
fn slow_calls_never_delay_kill_list_info_and_shutdown() {
    if !kvm_or_skip() {
        return;
    }
    let fifo = Fifo::new("slow");
    let mut w = Worker::spawn(Framing::Ndjson, &["--pool", "0"]);
    let threads = w.ok("worker.info", json!({}))["limits"]["slow_threads"]
        .as_u64()
        .unwrap() as usize;
    let tpl = w.load_bare();
    let sb = w.fork(&tpl);
    let slow = flood_slow_calls(&mut w, &fifo);
    let prompt = Duration::from_secs(2);
    for (method, params) in [
        ("worker.ping", json!({})),
        ("worker.info", json!({})),
        ("sandbox.list", json!({})),
        ("sandbox.kill", json!({"sandbox": sb})),
        ("template.list", json!({})),
    ] {
        let id = w.request(method, params);
        let (r, took) = answered_in(&mut w, &id);
        assert!(r.get("result").is_some(), "{method}: {r}");
        assert!(took < prompt, "{method} took {took:?} behind slow calls");
    }
    let id = w.request("shutdown", json!({}));
    let (r, took) = answered_in(&mut w, &id);
    assert_eq!(r["result"], Value::Null);
    assert!(took < prompt, "shutdown took {took:?} behind slow calls");
    // Every slow call is answered, except those still blocked in the kernel
    // (at most one per pool thread).
    std::thread::sleep(Duration::from_millis(500));
    let unanswered = slow.iter().filter(|id| !w.has_response(id)).count();
    assert!(unanswered <= threads, "{unanswered} slow calls unanswered");
    w.notify("exit", Value::Null);
    let start = Instant::now();
    assert_eq!(w.wait_exit().code(), Some(0));
    assert!(start.elapsed() < Duration::from_secs(10 + 5));
}

/// SIGTERM and end of input end the worker within their documented bounds
/// (10 s and 12 s) while slow calls are blocked, a guest spins and more
/// calls wait.
#[test]
fn sigterm_and_end_of_input_end_the_worker_whatever_runs() {
    if !kvm_or_skip() {
        return;
    }
    let fifo = Fifo::new("ending");
    for (how, bound) in [("SIGTERM", 10), ("end of input", 12)] {
        let mut w = Worker::spawn(Framing::Ndjson, &["--pool", "0"]);
        let tpl = w.load_bare();
        let sb = w.fork(&tpl);
        let spin = w.request(
            "sandbox.exec",
            json!({"sandbox": sb, "argv": ["spin"], "timeout_ms": 600_000}),
        );
        flood_slow_calls(&mut w, &fifo);
        w.ok("worker.ping", json!({}));
        let start = Instant::now();
        if how == "SIGTERM" {
            w.signal(libc::SIGTERM);
        } else {
            w.close_stdin();
        }
        assert_eq!(w.wait_exit().code(), Some(0), "{how}");
        let took = start.elapsed();
        // A second of slack for a loaded machine.
        assert!(
            took < Duration::from_secs(bound + 1),
            "{how}: exited after {took:?}"
        );
        assert_eq!(
            w.response(&spin)["error"]["code"],
            1004,
            "{how}: killed under the spin"
        );
        eprintln!("{how}: exited after {took:?}");
    }
}

/// A request with the id of one still running is refused with that id; the
/// running one goes on, and a cancel stops it alone. Once answered, the id
/// is free again.
#[test]
fn a_second_request_with_a_running_id_is_refused() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Lsp, &[]);
    let tpl = w.load_bare();
    let sb = w.fork(&tpl);
    let id = json!("same");
    w.request_with_id(
        id.clone(),
        "sandbox.exec",
        json!({"sandbox": sb, "argv": ["spin"], "timeout_ms": 600_000}),
    );
    w.request_with_id(id.clone(), "worker.info", json!({}));
    let refused = w.response(&id);
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert_eq!(
        refused["error"]["data"],
        json!({"kind": "duplicate_id", "id": "same"})
    );
    // The exec still runs; the cancel stops it.
    assert!(!w.has_response(&id));
    w.cancel(&id);
    assert_eq!(w.response(&id)["error"]["code"], -32800);
    // The id is free again.
    w.request_with_id(id.clone(), "worker.ping", json!({}));
    assert_eq!(w.response(&id)["result"], json!({}));
    // Inside one batch too: the second is refused while the first runs.
    let sb = w.fork(&tpl);
    w.expect_reply(&json!(9), "sandbox.exec");
    w.send_value(&json!([
        {"jsonrpc": "2.0", "id": 9, "method": "sandbox.exec",
         "params": {"sandbox": sb, "argv": ["spin"], "timeout_ms": 600_000}},
        {"jsonrpc": "2.0", "id": 9, "method": "worker.ping"}
    ]));
    w.cancel(&json!(9));
    let batch = w.wait_for(|m| m.is_array());
    let kinds: Vec<&Value> = batch
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["error"]["data"]["kind"])
        .collect();
    assert_eq!(
        kinds,
        [&json!("cancelled"), &json!("duplicate_id")],
        "{batch}"
    );
    w.shutdown();
}
