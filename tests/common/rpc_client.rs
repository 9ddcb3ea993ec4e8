//! A test client for `zeroboot serve`: spawns the real binary, speaks either
//! framing, reads stdout strictly (anything that is not a well-formed frame
//! of the session's framing is a violation), checks every message against
//! schema/openrpc.json, and checks that every `sandbox.output` notification
//! of a call arrives before the call's response. Needs `mod rpc_schema;`
//! (tests/common/rpc_schema.rs) beside it.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::rpc_schema::RpcSchema;

/// How long any single wait may take before the test fails (generous: a
/// loaded 2-core box).
pub const WAIT: Duration = Duration::from_secs(120);

/// Which framing the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Content-Length headers.
    Lsp,
    /// One JSON text per line.
    Ndjson,
}

/// Both framings, for tests that run twice.
pub const BOTH: [Framing; 2] = [Framing::Lsp, Framing::Ndjson];

/// True when /dev/kvm exists; otherwise prints why the test is skipped, or
/// fails when ZEROBOOT_REQUIRE_KVM=1.
pub fn kvm_or_skip() -> bool {
    if std::path::Path::new("/dev/kvm").exists() {
        return true;
    }
    if std::env::var("ZEROBOOT_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("ZEROBOOT_REQUIRE_KVM=1 but there is no /dev/kvm");
    }
    eprintln!("skipping: no /dev/kvm");
    false
}

/// Frames a body in the given framing.
pub fn frame(framing: Framing, body: &[u8]) -> Vec<u8> {
    match framing {
        Framing::Lsp => {
            let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
            out.extend_from_slice(body);
            out
        }
        Framing::Ndjson => {
            let mut out = body.to_vec();
            out.push(b'\n');
            out
        }
    }
}

#[derive(Default)]
struct Tracking {
    /// Request id (canonical JSON) -> method, for schema checks.
    methods: HashMap<String, String>,
    /// Ids already answered.
    answered: HashSet<String>,
    /// Everything wrong seen on stdout.
    violations: Vec<String>,
    /// Messages read.
    messages: usize,
}

/// A running worker.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Value>,
    backlog: Vec<Value>,
    next_id: i64,
    framing: Framing,
    tracking: Arc<Mutex<Tracking>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    schema: Arc<RpcSchema>,
}

fn key(id: &Value) -> String {
    id.to_string()
}

impl Worker {
    /// Spawns `zeroboot serve ARGS` (pool of 2 unless ARGS set one).
    pub fn spawn(framing: Framing, args: &[&str]) -> Worker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zeroboot"));
        cmd.arg("serve");
        if !args.iter().any(|a| a.starts_with("--pool")) {
            cmd.args(["--pool", "2"]);
        }
        cmd.args(args);
        Self::spawn_command(framing, cmd)
    }

    /// Spawns a prepared command whose stdio the client takes over.
    pub fn spawn_command(framing: Framing, mut cmd: Command) -> Worker {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env(
                "ZEROBOOT_LOG",
                std::env::var("ZEROBOOT_LOG").unwrap_or("info".into()),
            )
            .spawn()
            .expect("zeroboot starts");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut r = stderr_pipe;
            let mut buf = [0u8; 8192];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let tracking = Arc::new(Mutex::new(Tracking::default()));
        let schema = Arc::new(RpcSchema::load());
        let (tx, rx) = channel();
        {
            let tracking = Arc::clone(&tracking);
            let schema = Arc::clone(&schema);
            std::thread::spawn(move || {
                let mut input = BufReader::new(stdout);
                loop {
                    match read_frame(&mut input, framing) {
                        Ok(None) => break,
                        Ok(Some(body)) => {
                            let msg: Value = match serde_json::from_slice(&body) {
                                Ok(v) => v,
                                Err(e) => {
                                    tracking.lock().unwrap().violations.push(format!(
                                        "frame is not JSON ({e}): {:?}",
                                        String::from_utf8_lossy(&body)
                                    ));
                                    break;
                                }
                            };
                            check(&schema, &tracking, &msg);
                            if tx.send(msg).is_err() {
                                // The test is done listening; keep checking.
                            }
                        }
                        Err(e) => {
                            tracking.lock().unwrap().violations.push(e);
                            break;
                        }
                    }
                }
            });
        }
        Worker {
            child,
            stdin,
            rx,
            backlog: Vec::new(),
            next_id: 0,
            framing,
            tracking,
            stderr,
            schema,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes raw bytes to the worker's stdin.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(bytes).expect("write to the worker");
        stdin.flush().expect("flush to the worker");
    }

    /// Frames and sends one JSON value.
    pub fn send_value(&mut self, v: &Value) {
        let body = serde_json::to_vec(v).unwrap();
        self.send_raw(&frame(self.framing, &body));
    }

    /// Records that the request with `id` is for `method` (schema checks).
    pub fn expect_reply(&self, id: &Value, method: &str) {
        self.tracking
            .lock()
            .unwrap()
            .methods
            .insert(key(id), method.to_string());
    }

    /// Sends a request with a fresh numeric id; returns the id.
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = json!(self.next_id);
        self.request_with_id(id.clone(), method, params);
        id
    }

    /// Sends a request with the given id (its params are checked against the schema first).
    pub fn request_with_id(&mut self, id: Value, method: &str, params: Value) {
        if let Err(e) = self.schema.check_params(method, &params) {
            panic!("the test sends params outside the schema: {e}");
        }
        self.expect_reply(&id, method);
        self.send_value(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
    }

    /// Sends a request whose params deliberately break the schema; returns its id.
    pub fn request_unchecked(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = json!(self.next_id);
        self.expect_reply(&id, method);
        self.send_value(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// A call with params outside the schema that must fail; returns its error.
    pub fn err_unchecked(&mut self, method: &str, params: Value) -> Value {
        let id = self.request_unchecked(method, params);
        let r = self.response(&id);
        match r.get("error") {
            Some(e) => e.clone(),
            None => panic!("{method} should have failed: {r}"),
        }
    }

    /// Sends a notification.
    pub fn notify(&mut self, method: &str, params: Value) {
        if params.is_null() {
            self.send_value(&json!({"jsonrpc": "2.0", "method": method}));
        } else {
            self.send_value(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
        }
    }

    /// Cancels a call.
    pub fn cancel(&mut self, id: &Value) {
        self.notify("$/cancelRequest", json!({"id": id}));
    }

    fn next_message(&mut self, deadline: Instant) -> Value {
        match self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => panic!(
                "no message from the worker in time; stderr:\n{}",
                self.stderr()
            ),
            Err(RecvTimeoutError::Disconnected) => panic!(
                "the worker closed stdout; violations: {:?}; stderr:\n{}",
                self.violations(),
                self.stderr()
            ),
        }
    }

    /// Waits for the response to `id`; messages received meanwhile are kept.
    pub fn response(&mut self, id: &Value) -> Value {
        if let Some(i) = self.backlog.iter().position(|m| m.get("id") == Some(id)) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let msg = self.next_message(deadline);
            if msg.get("id") == Some(id) && msg.get("method").is_none() {
                return msg;
            }
            self.backlog.push(msg);
        }
    }

    /// True if the response to `id` has already been read (does not wait).
    pub fn has_response(&mut self, id: &Value) -> bool {
        while let Ok(msg) = self.rx.try_recv() {
            self.backlog.push(msg);
        }
        self.backlog
            .iter()
            .any(|m| m.get("id") == Some(id) && m.get("method").is_none())
    }

    /// Waits for the next message matching `pred`.
    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let msg = self.next_message(deadline);
            if pred(&msg) {
                return msg;
            }
            self.backlog.push(msg);
        }
    }

    /// Sends a request and waits for its response.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.request(method, params);
        self.response(&id)
    }

    /// A call that must succeed; returns its result.
    pub fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params);
        match r.get("result") {
            Some(v) => v.clone(),
            None => panic!("{method} failed: {r}"),
        }
    }

    /// A call that must fail; returns its error object.
    pub fn err(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params);
        match r.get("error") {
            Some(e) => e.clone(),
            None => panic!("{method} should have failed: {r}"),
        }
    }

    /// Loads the bare template; returns its id.
    pub fn load_bare(&mut self) -> String {
        let t = self.ok("template.load", json!({"builtin": "bare"}));
        t["template"].as_str().unwrap().to_string()
    }

    /// Forks one sandbox; returns its id.
    pub fn fork(&mut self, template: &str) -> String {
        let f = self.ok("sandbox.fork", json!({"template": template}));
        f["sandbox"].as_str().unwrap().to_string()
    }

    /// Removes and returns the notifications received so far for call `id`.
    pub fn notifications_for(&mut self, id: &Value) -> Vec<Value> {
        let (mine, rest): (Vec<Value>, Vec<Value>) = std::mem::take(&mut self.backlog)
            .into_iter()
            .partition(|m| m.get("method").is_some() && m["params"]["request"] == *id);
        self.backlog = rest;
        mine
    }

    /// Closes stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the worker to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the worker did not exit in time; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends shutdown then exit and checks the worker exits 0 with a clean stdout.
    pub fn shutdown(mut self) {
        let r = self.ok("shutdown", json!({}));
        assert_eq!(r, Value::Null);
        self.notify("exit", json!(null));
        let status = self.wait_exit();
        assert_eq!(status.code(), Some(0), "stderr:\n{}", self.stderr());
        self.assert_clean();
    }

    /// Everything wrong seen on stdout so far.
    pub fn violations(&self) -> Vec<String> {
        self.tracking.lock().unwrap().violations.clone()
    }

    /// Messages read from stdout so far.
    pub fn messages_read(&self) -> usize {
        self.tracking.lock().unwrap().messages
    }

    /// Fails the test if stdout held anything but well-formed, schema-valid frames.
    pub fn assert_clean(&self) {
        // Let the reader thread finish the last frames after an exit.
        std::thread::sleep(Duration::from_millis(50));
        let v = self.violations();
        assert!(
            v.is_empty(),
            "protocol violations: {v:#?}\nstderr:\n{}",
            self.stderr()
        );
    }

    /// What the worker logged.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Sends a signal to the worker.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn check(schema: &RpcSchema, tracking: &Mutex<Tracking>, msg: &Value) {
    let mut t = tracking.lock().unwrap();
    t.messages += 1;
    let single = |t: &mut Tracking, m: &Value| {
        if m.get("method").is_some() {
            if let Err(e) = schema.check_notification(m) {
                t.violations.push(e);
            }
            let request = key(&m["params"]["request"]);
            if t.answered.contains(&request) {
                t.violations
                    .push(format!("notification after the response of {request}: {m}"));
            }
        } else {
            let id = m.get("id").map(key).unwrap_or_default();
            let method = t.methods.get(&id).cloned();
            if let Err(e) = schema.check_response(method.as_deref(), m) {
                t.violations.push(e);
            }
            if m["id"] != Value::Null {
                t.answered.insert(id);
            }
        }
    };
    match msg {
        Value::Array(items) => {
            if items.is_empty() {
                t.violations.push("empty batch response".into());
            }
            for m in items {
                if m.get("method").is_some() {
                    t.violations
                        .push(format!("notification inside a batch: {m}"));
                }
                single(&mut t, m);
            }
        }
        m => single(&mut t, m),
    }
}

/// Reads one frame strictly: exactly what the worker is meant to write.
fn read_frame(input: &mut impl BufRead, framing: Framing) -> Result<Option<Vec<u8>>, String> {
    match framing {
        Framing::Ndjson => {
            let mut line = Vec::new();
            let n = input
                .read_until(b'\n', &mut line)
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(None);
            }
            if line.pop() != Some(b'\n') {
                return Err(format!(
                    "stdout ended inside a line: {:?}",
                    String::from_utf8_lossy(&line)
                ));
            }
            Ok(Some(line))
        }
        Framing::Lsp => {
            let mut header = Vec::new();
            let n = input
                .read_until(b'\n', &mut header)
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(None);
            }
            let text = String::from_utf8_lossy(&header).into_owned();
            let len: usize = text
                .strip_prefix("Content-Length: ")
                .and_then(|r| r.strip_suffix("\r\n"))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad header line on stdout: {text:?}"))?;
            let mut blank = Vec::new();
            input
                .read_until(b'\n', &mut blank)
                .map_err(|e| e.to_string())?;
            if blank != b"\r\n" {
                return Err(format!(
                    "expected a blank line after the header, got {:?}",
                    String::from_utf8_lossy(&blank)
                ));
            }
            let mut body = vec![0u8; len];
            input
                .read_exact(&mut body)
                .map_err(|e| format!("stdout ended inside a body: {e}"))?;
            Ok(Some(body))
        }
    }
}
