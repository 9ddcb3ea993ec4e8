//! The same fork and exec measured through a spawned `zeroboot serve` over
//! newline-delimited JSON-RPC, so the protocol's cost can be read against the
//! in-process figures of the same run.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zeroboot::engine::EngineError;

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

fn failed(what: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidRequest(format!("bench worker: {what}"))
}

impl Worker {
    fn spawn(pool: usize) -> Result<Worker, EngineError> {
        let exe = std::env::current_exe().map_err(failed)?;
        let mut child = Command::new(exe)
            .args(["serve", "--pool", &pool.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(failed)?;
        let stdin = child.stdin.take().ok_or_else(|| failed("no stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| failed("no stdout"))?);
        Ok(Worker {
            child,
            stdin,
            stdout,
            next_id: 1,
        })
    }

    /// One request, one response; returns the result and the round-trip time.
    fn call(&mut self, method: &str, params: Value) -> Result<(Value, Duration), EngineError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )
        .map_err(failed)?;
        line.push(b'\n');
        let start = Instant::now();
        self.stdin.write_all(&line).map_err(failed)?;
        self.stdin.flush().map_err(failed)?;
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).map_err(failed)?;
        let took = start.elapsed();
        let v: Value = serde_json::from_str(&reply).map_err(failed)?;
        if v["id"] != json!(id) {
            return Err(failed(format!("reply to the wrong id: {reply}")));
        }
        match v.get("result") {
            Some(r) => Ok((r.clone(), took)),
            None => Err(failed(format!("{method} failed: {}", v["error"]))),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // EOF on stdin is the worker's signal to kill its sandboxes and exit.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Round trips of `sandbox.fork` (each followed by an untimed kill) and of
/// `sandbox.exec echo` on one sandbox.
pub fn measure(samples: usize, pool: usize) -> Result<(Vec<Duration>, Vec<Duration>), EngineError> {
    let mut w = Worker::spawn(pool)?;
    let (tpl, _) = w.call("template.load", json!({"builtin": "bare"}))?;
    let t = tpl["template"].clone();
    std::thread::sleep(Duration::from_millis(200));
    let mut fork = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (r, d) = w.call("sandbox.fork", json!({"template": t}))?;
        fork.push(d);
        w.call("sandbox.kill", json!({"sandbox": r["sandbox"]}))?;
    }
    let (sb, _) = w.call("sandbox.fork", json!({"template": t}))?;
    let mut exec = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (r, d) = w.call(
            "sandbox.exec",
            json!({"sandbox": sb["sandbox"], "argv": ["echo", "hello"]}),
        )?;
        if r["exit_code"] != json!(0) {
            return Err(failed(format!("exec returned {r}")));
        }
        exec.push(d);
    }
    Ok((fork, exec))
}
