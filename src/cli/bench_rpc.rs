//! The same fork and exec measured through a spawned `zeroboot serve` over
//! newline-delimited JSON-RPC, so the protocol's cost can be read against the
//! in-process figures of the same run, and against the stdio floor: the same
//! round trip, by the same code, to a child that only echoes lines (`cat`).
//! Floor and worker samples are taken alternately, so a noisy moment of the
//! machine touches both alike. The soak runs thousands of pipelined
//! fork/exec/kill cycles and reports what the worker process kept.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zeroboot::affinity::CpuSet;
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
        let start = Instant::now();
        self.send(line)?;
        let reply = self.read()?;
        Ok((reply, start.elapsed()))
    }

    /// Writes `line` (newline included) without waiting for an answer.
    fn send(&mut self, line: &[u8]) -> Result<(), EngineError> {
        self.stdin.write_all(line).map_err(failed)?;
        self.stdin.flush().map_err(failed)
    }

    /// Reads the next line.
    fn read(&mut self) -> Result<&str, EngineError> {
        self.line.clear();
        if self.stdout.read_line(&mut self.line).map_err(failed)? == 0 {
            return Err(failed("the peer closed stdout"));
        }
        Ok(&self.line)
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
    fn spawn(pool: usize, extra: &[&str]) -> Result<Worker, EngineError> {
        let mut cmd = Command::new(std::env::current_exe().map_err(failed)?);
        cmd.args(["serve", "--pool", &pool.to_string()]).args(extra);
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

    /// Sends a request without waiting; returns its id.
    fn send(&mut self, method: &str, params: Value) -> Result<u64, EngineError> {
        let (id, line) = self.line(method, &params)?;
        self.peer.send(&line)?;
        Ok(id)
    }

    /// The next reply: (id, result or error).
    fn reply(&mut self) -> Result<(u64, Result<Value, Value>), EngineError> {
        let line = self.peer.read()?;
        let v: Value = serde_json::from_str(line).map_err(failed)?;
        let id = v["id"]
            .as_u64()
            .ok_or_else(|| failed(format!("no id: {line}")))?;
        Ok(match v.get("result") {
            Some(r) => (id, Ok(r.clone())),
            None => (id, Err(v["error"].clone())),
        })
    }

    /// Descriptors, RSS (KiB) and threads of the worker process.
    fn footprint(&self) -> (i64, i64, i64) {
        let pid = self.peer.child.id();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()) as i64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (fds, field("VmRSS:"), field("Threads:"))
    }

    /// Waits until no sandbox lives and the template's pool is full.
    fn settle(&mut self, pool: usize) -> Result<(), EngineError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (list, _) = self.call("template.list", json!({}))?;
            let (info, _) = self.call("worker.info", json!({}))?;
            let full = list["templates"]
                .as_array()
                .is_some_and(|t| t.iter().all(|t| t["pooled"] == json!(pool)));
            if full && info["sandboxes"] == json!(0) {
                // Teardown of the last VMs finishes on their own threads.
                std::thread::sleep(Duration::from_millis(500));
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(failed("the worker did not settle"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What one bench run measures through the worker, in microseconds per sample.
pub struct RpcFigures {
    /// Round trip to `cat`, alternating with `ping`.
    pub floor: Vec<Duration>,
    /// Round trip to `cat` with both ends on one CPU.
    pub floor_same_cpu: Vec<Duration>,
    /// Round trip to `cat` on another CPU (none on a one-CPU host).
    pub floor_cross_cpu: Option<Vec<Duration>>,
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

/// Round trips of `line` to `cat` with this thread and `cat` on one CPU, and
/// (when there are two) with `cat` on another: what a wake-up across CPUs
/// costs on this host, beside figures whose threads the scheduler places.
fn pinned_floors(
    samples: usize,
    line: &[u8],
) -> Result<(Vec<Duration>, Option<Vec<Duration>>), EngineError> {
    let all = CpuSet::current().map_err(failed)?;
    let cpus = all.cpus();
    let measured = (|| {
        let mut other = match cpus.get(1) {
            Some(&b) => {
                CpuSet::one(b).apply().map_err(failed)?;
                Some(LinePeer::spawn(Command::new("cat"))?)
            }
            None => None,
        };
        CpuSet::one(cpus[0]).apply().map_err(failed)?;
        let mut same = LinePeer::spawn(Command::new("cat"))?;
        let (mut on_one, mut across) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
        for _ in 0..samples {
            on_one.push(same.round_trip(line)?.1);
            if let Some(other) = &mut other {
                across.push(other.round_trip(line)?.1);
            }
        }
        Ok((on_one, other.map(|_| across)))
    })();
    all.apply().map_err(failed)?;
    measured
}

/// Runs every RPC figure with `samples` samples each, through a worker with
/// its seccomp filters on, or off (`--no-seccomp`) to measure their cost.
pub fn measure(samples: usize, pool: usize, seccomp: bool) -> Result<RpcFigures, EngineError> {
    let extra: &[&str] = if seccomp { &[] } else { &["--no-seccomp"] };
    let mut w = Worker::spawn(pool, extra)?;
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
    let (_, line) = w.line("worker.ping", &json!({}))?;
    let (floor_same_cpu, floor_cross_cpu) = pinned_floors(samples, &line)?;

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
        floor_same_cpu,
        floor_cross_cpu,
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

/// `cycles` fork/exec/kill cycles through the worker with `in_flight` under
/// way at once, pipelined; what the worker process holds before and after
/// (both once its pool is full and no sandbox lives).
pub fn soak(cycles: usize, in_flight: usize, pool: usize) -> Result<Value, EngineError> {
    let mut w = Worker::spawn(pool, &[])?;
    let (tpl, _) = w.call("template.load", json!({"builtin": "bare"}))?;
    let t = tpl["template"].clone();
    // Warm up with the same load (allocators, the pool, the threads calls
    // run on), then measure from a settled state.
    run_cycles(&mut w, &t, cycles.min(500), in_flight)?;
    w.settle(pool)?;
    let before = w.footprint();
    let start = Instant::now();
    let errors = run_cycles(&mut w, &t, cycles, in_flight)?;
    let wall = start.elapsed();
    w.settle(pool)?;
    // Idle threads of the blocking pool that calls ran on end after 10 s
    // without work (tokio's keep-alive).
    let deadline = Instant::now() + Duration::from_secs(15);
    while w.footprint().2 > before.2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = w.footprint();
    Ok(json!({
        "cycles": cycles,
        "in_flight": in_flight,
        "errors": errors,
        "fd_delta": after.0 - before.0,
        "rss_delta_kib": after.1 - before.1,
        "threads_delta": after.2 - before.2,
        "wall_ms": (wall.as_secs_f64() * 1e4).round() / 10.0,
    }))
}

/// `cycles` pipelined fork/exec/kill cycles of template `t`, `in_flight` at
/// once; returns how many failed.
fn run_cycles(
    w: &mut Worker,
    t: &Value,
    cycles: usize,
    in_flight: usize,
) -> Result<usize, EngineError> {
    enum Step {
        Fork,
        Exec(Value),
        Kill,
    }
    let mut pending: std::collections::HashMap<u64, Step> = std::collections::HashMap::new();
    let (mut started, mut done, mut errors) = (0usize, 0usize, 0usize);
    while done < cycles {
        while started < cycles && pending.len() < in_flight {
            let id = w.send("sandbox.fork", json!({"template": t}))?;
            pending.insert(id, Step::Fork);
            started += 1;
        }
        let (id, r) = w.reply()?;
        let step = pending
            .remove(&id)
            .ok_or_else(|| failed(format!("reply to unknown id {id}")))?;
        match (step, r) {
            (Step::Fork, Ok(f)) => {
                let sb = f["sandbox"].clone();
                let id = w.send(
                    "sandbox.exec",
                    json!({"sandbox": sb, "argv": ["echo", "soak"]}),
                )?;
                pending.insert(id, Step::Exec(sb));
            }
            (Step::Exec(sb), r) => {
                if !r.is_ok_and(|r| r["stdout"] == json!("soak\n")) {
                    errors += 1;
                }
                let id = w.send("sandbox.kill", json!({"sandbox": sb}))?;
                pending.insert(id, Step::Kill);
            }
            (Step::Kill, r) => {
                errors += usize::from(r.is_err());
                done += 1;
            }
            (Step::Fork, Err(_)) => {
                errors += 1;
                done += 1;
            }
        }
    }
    Ok(errors)
}
