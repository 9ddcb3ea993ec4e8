//! The same fork and exec measured through a spawned `zeroboot serve` over
//! newline-delimited JSON-RPC, so the protocol's cost can be read against the
//! in-process figures of the same run, and against the stdio floor: the same
//! round trip, by the same code, to a child that only echoes lines (`cat`).
//! Floor and worker samples are taken alternately, so a noisy moment of the
//! machine touches both alike.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zeroboot::engine::EngineError;

/// A child that answers each line with a line.
struct LinePeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    line: String,
}

fn failed(what: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidRequest(format!("bench worker: {what}"))
}

impl LinePeer {
    fn spawn(mut cmd: Command) -> Result<LinePeer, EngineError> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(failed)?;
        let stdin = child.stdin.take().ok_or_else(|| failed("no stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| failed("no stdout"))?);
        Ok(LinePeer {
            child,
            stdin,
            stdout,
            line: String::new(),
        })
    }

    /// Writes `line` (newline included) and reads one line back: the
    /// round trip, timed, and the answer.
    fn round_trip(&mut self, line: &[u8]) -> Result<(&str, Duration), EngineError> {
        self.line.clear();
        let start = Instant::now();
        self.stdin.write_all(line).map_err(failed)?;
        self.stdin.flush().map_err(failed)?;
        self.stdout.read_line(&mut self.line).map_err(failed)?;
        Ok((&self.line, start.elapsed()))
    }
}

impl Drop for LinePeer {
    fn drop(&mut self) {
        // EOF on stdin is the worker's signal to kill its sandboxes and exit.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `zeroboot serve` child.
struct Worker {
    peer: LinePeer,
    next_id: u64,
}

impl Worker {
    fn spawn(pool: usize) -> Result<Worker, EngineError> {
        let mut cmd = Command::new(std::env::current_exe().map_err(failed)?);
        cmd.args(["serve", "--pool", &pool.to_string()]);
        Ok(Worker {
            peer: LinePeer::spawn(cmd)?,
            next_id: 1,
        })
    }

    fn line(&mut self, method: &str, params: &Value) -> Result<(u64, Vec<u8>), EngineError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )
        .map_err(failed)?;
        line.push(b'\n');
        Ok((id, line))
    }

    /// One request, one response; returns the result and the round-trip time.
    fn call(&mut self, method: &str, params: Value) -> Result<(Value, Duration), EngineError> {
        let (id, line) = self.line(method, &params)?;
        let (reply, took) = self.peer.round_trip(&line)?;
        let v: Value = serde_json::from_str(reply).map_err(failed)?;
        if v["id"] != json!(id) {
            return Err(failed(format!("reply to the wrong id: {reply}")));
        }
        match v.get("result") {
            Some(r) => Ok((r.clone(), took)),
            None => Err(failed(format!("{method} failed: {}", v["error"]))),
        }
    }
}

/// What one bench run measures through the worker, in microseconds per sample.
pub struct RpcFigures {
    /// Round trip to `cat`, alternating with `ping`.
    pub floor: Vec<Duration>,
    /// `worker.ping`.
    pub ping: Vec<Duration>,
    /// `sandbox.fork` (each followed by an untimed kill).
    pub fork: Vec<Duration>,
    /// `sandbox.exec echo` on one sandbox.
    pub exec: Vec<Duration>,
    /// `sandbox.run echo`: fork, exec, kill.
    pub run: Vec<Duration>,
    /// `sandbox.kill` of a sandbox that ran `echo` (its VM is recycled).
    pub kill: Vec<Duration>,
    /// `worker.ping` right after that kill.
    pub ping_after_kill: Vec<Duration>,
}

/// Runs every RPC figure with `samples` samples each.
pub fn measure(samples: usize, pool: usize) -> Result<RpcFigures, EngineError> {
    let mut w = Worker::spawn(pool)?;
    let mut cat = LinePeer::spawn(Command::new("cat"))?;
    let (tpl, _) = w.call("template.load", json!({"builtin": "bare"}))?;
    let t = tpl["template"].clone();
    std::thread::sleep(Duration::from_millis(200));

    let (mut floor, mut ping) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for _ in 0..samples {
        // The very bytes of the ping request, echoed.
        let (_, line) = w.line("worker.ping", &json!({}))?;
        floor.push(cat.round_trip(&line)?.1);
        ping.push(w.call("worker.ping", json!({}))?.1);
    }

    let mut fork = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (r, d) = w.call("sandbox.fork", json!({"template": t}))?;
        fork.push(d);
        w.call("sandbox.kill", json!({"sandbox": r["sandbox"]}))?;
    }

    let echo = json!(["echo", "hello"]);
    let (sb, _) = w.call("sandbox.fork", json!({"template": t}))?;
    let mut exec = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (r, d) = w.call(
            "sandbox.exec",
            json!({"sandbox": sb["sandbox"], "argv": echo}),
        )?;
        check_echo(&r)?;
        exec.push(d);
    }
    w.call("sandbox.kill", json!({"sandbox": sb["sandbox"]}))?;

    let mut run = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (r, d) = w.call("sandbox.run", json!({"template": t, "argv": echo}))?;
        check_echo(&r)?;
        run.push(d);
    }

    let (mut kill, mut ping_after_kill) =
        (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for _ in 0..samples {
        let (f, _) = w.call("sandbox.fork", json!({"template": t}))?;
        let (r, _) = w.call(
            "sandbox.exec",
            json!({"sandbox": f["sandbox"], "argv": echo}),
        )?;
        check_echo(&r)?;
        kill.push(w.call("sandbox.kill", json!({"sandbox": f["sandbox"]}))?.1);
        ping_after_kill.push(w.call("worker.ping", json!({}))?.1);
    }
    Ok(RpcFigures {
        floor,
        ping,
        fork,
        exec,
        run,
        kill,
        ping_after_kill,
    })
}

fn check_echo(r: &Value) -> Result<(), EngineError> {
    if r["exit_code"] != json!(0) || r["stdout"] != "hello\n" {
        return Err(failed(format!("exec returned {r}")));
    }
    Ok(())
}
