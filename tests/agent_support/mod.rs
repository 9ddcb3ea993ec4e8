//! A minimal host side of the agent protocol over a byte stream, for the
//! tests that talk to the Linux agent (as a process over pipes, or in a guest
//! under QEMU over a serial port). It checks every frame the agent sends.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};
use zeroboot_proto::{
    AgentError, AgentErrorCode, Exec, ExecParts, ExitStatus, HEADER_LEN, Header, Kind,
    MAILBOX_SIZE, MAX_PAYLOAD, Output, Program, RESUME_STOP_OUTPUT, Ready, Stream, encode_frame,
};

/// The static agent the guest image packs, built once per test binary.
pub fn agent_binary() -> &'static PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT.get_or_init(|| {
        let source = zeroboot::image::source_tree().expect("tests run from the source tree");
        zeroboot::image::build_agent(&source).expect("building the static agent")
    })
}

/// The Node.js module that reseeds OpenSSL, built once per test binary.
pub fn node_addon() -> &'static PathBuf {
    static ADDON: OnceLock<PathBuf> = OnceLock::new();
    ADDON.get_or_init(|| {
        let source = zeroboot::image::source_tree().expect("tests run from the source tree");
        zeroboot::image::build_node_addon(&source).expect("building the Node.js reseed module")
    })
}

/// The Linux agent running as a host process over pipes, with the host's
/// real python3; killed on drop.
pub struct Agent {
    child: Child,
    pub client: Client<ChildStdout, ChildStdin>,
}

impl Agent {
    /// Starts the agent with the host's python3 (and Node.js, if on PATH).
    pub fn start() -> Agent {
        Agent::start_with(&[])
    }

    /// Starts the agent with extra arguments (`--node none`, ...).
    pub fn start_with(args: &[&str]) -> Agent {
        let python = PathBuf::from("/usr/bin/python3");
        assert!(
            python.is_file(),
            "these tests need the host's python3 (3.11)"
        );
        let mut child = Command::new(agent_binary())
            .args(["--transport", "stdio", "--python"])
            .arg(&python)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning the agent");
        let mut client = Client::new(child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let ready = client.ready();
        assert_eq!(
            (ready.version, ready.agent),
            (zeroboot_proto::VERSION, zeroboot_proto::AgentKind::Linux)
        );
        Agent { child, client }
    }

    pub fn exec(&mut self, spec: &ExecSpec) -> Run {
        self.client.exec(spec)
    }

    pub fn run_code(&mut self, spec: &CodeSpec) -> CodeRun {
        self.client.run_code(spec)
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _reaped = self.child.kill().and_then(|()| self.child.wait());
    }
}

/// What an exec asks for.
#[derive(Clone, Debug)]
pub struct ExecSpec {
    pub program: Program,
    pub argv: Vec<Vec<u8>>,
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    pub cwd: Vec<u8>,
    pub stdin: Vec<u8>,
    pub timeout_ms: u32,
    /// Answer the first Output with RESUME_STOP_OUTPUT once this many bytes arrived.
    pub stop_after: Option<usize>,
}

impl ExecSpec {
    pub fn argv(args: &[&str]) -> Self {
        ExecSpec {
            program: Program::Argv,
            argv: args.iter().map(|a| a.as_bytes().to_vec()).collect(),
            env: Vec::new(),
            cwd: Vec::new(),
            stdin: Vec::new(),
            timeout_ms: 0,
            stop_after: None,
        }
    }

    pub fn python(code: &str) -> Self {
        ExecSpec {
            program: Program::Python,
            ..ExecSpec::argv(&[code])
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn cwd(mut self, cwd: &str) -> Self {
        self.cwd = cwd.into();
        self
    }

    pub fn stdin(mut self, data: &[u8]) -> Self {
        self.stdin = data.to_vec();
        self
    }

    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = ms;
        self
    }

    pub fn stop_after(mut self, bytes: usize) -> Self {
        self.stop_after = Some(bytes);
        self
    }
}

/// How an exec ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Exit(ExitStatus),
    Error(AgentErrorCode, String),
}

/// Everything an exec sent back.
#[derive(Debug)]
pub struct Run {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub end: End,
    /// Output frames (the last chunk may instead ride in the Exit frame).
    pub output_frames: usize,
}

impl Run {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The exit status; panics (showing stderr) if the exec failed in the agent.
    pub fn status(&self) -> ExitStatus {
        match &self.end {
            End::Exit(s) => *s,
            End::Error(code, msg) => {
                panic!("agent error {code:?}: {msg}; stderr: {}", self.stderr_str())
            }
        }
    }
}

/// What a run of code asks for.
#[derive(Clone, Debug)]
pub struct CodeSpec {
    pub request: zeroboot::agent::CodeRequest,
    /// The VM identity the host claims (a new one makes a context reseed).
    pub vm_id: u64,
}

impl CodeSpec {
    fn new(language: zeroboot::agent::Language, code: &str) -> Self {
        CodeSpec {
            request: zeroboot::agent::CodeRequest {
                language,
                code: code.into(),
                context: None,
                env: Vec::new(),
                cwd: String::new(),
                timeout_ms: 0,
            },
            vm_id: 1,
        }
    }

    pub fn python(code: &str) -> Self {
        Self::new(zeroboot::agent::Language::Python, code)
    }

    pub fn javascript(code: &str) -> Self {
        Self::new(zeroboot::agent::Language::JavaScript, code)
    }

    pub fn bash(code: &str) -> Self {
        Self::new(zeroboot::agent::Language::Bash, code)
    }

    pub fn context(mut self, name: &str) -> Self {
        self.request.context = Some(name.into());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.request.env.push((k.into(), v.into()));
        self
    }

    pub fn cwd(mut self, cwd: &str) -> Self {
        self.request.cwd = cwd.into();
        self
    }

    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.request.timeout_ms = ms;
        self
    }

    pub fn vm(mut self, vm_id: u64) -> Self {
        self.vm_id = vm_id;
        self
    }
}

/// Everything a run of code sent back.
#[derive(Debug)]
pub struct CodeRun {
    /// Output chunks in the order they arrived.
    pub chunks: Vec<(Stream, Vec<u8>)>,
    pub end: Result<zeroboot::agent::RunEnd, End>,
}

impl CodeRun {
    fn text(&self, stream: Stream) -> String {
        let bytes: Vec<u8> = self
            .chunks
            .iter()
            .filter(|(s, _)| *s == stream)
            .flat_map(|(_, d)| d.iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn stdout(&self) -> String {
        self.text(Stream::Stdout)
    }

    pub fn stderr(&self) -> String {
        self.text(Stream::Stderr)
    }

    /// How it ended; panics (showing stderr) if the agent failed the request.
    pub fn ended(&self) -> &zeroboot::agent::RunEnd {
        match &self.end {
            Ok(end) => end,
            Err(e) => panic!("agent error {e:?}; stderr: {}", self.stderr()),
        }
    }

    /// The exit code (panics on a signal or an agent error).
    pub fn code(&self) -> i32 {
        let end = &self.ended().end;
        assert_eq!(
            end.signal,
            0,
            "killed by a signal; stderr: {}",
            self.stderr()
        );
        end.code
    }

    pub fn result(&self) -> Option<&str> {
        self.ended().result.as_deref()
    }

    pub fn error(&self) -> &zeroboot::agent::CodeFailure {
        self.ended()
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("no error; stderr: {}", self.stderr()))
    }
}

/// The host end of a conversation.
pub struct Client<R, W> {
    r: R,
    w: W,
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    getrandom::fill(&mut s).unwrap();
    s
}

impl<R: Read, W: Write> Client<R, W> {
    pub fn new(r: R, w: W) -> Self {
        Client { r, w }
    }

    pub fn send(
        &mut self,
        kind: Kind,
        flags: u32,
        body: impl FnOnce(&mut zeroboot_proto::Writer<'_>) -> Result<(), zeroboot_proto::WireError>,
    ) {
        let mut buf = vec![0u8; HEADER_LEN + MAX_PAYLOAD];
        let n = encode_frame(&mut buf, kind, flags, body).unwrap();
        self.w.write_all(&buf[..n]).unwrap();
        self.w.flush().unwrap();
    }

    /// Reads one frame; it must come from the guest.
    pub fn recv(&mut self) -> (Header, Vec<u8>) {
        let mut head = [0u8; HEADER_LEN];
        self.r
            .read_exact(&mut head)
            .expect("agent closed the channel");
        let h = Header::decode(&head).unwrap();
        assert!(h.kind.is_from_guest(), "agent sent host kind {:?}", h.kind);
        let mut payload = vec![0u8; h.len as usize];
        self.r.read_exact(&mut payload).unwrap();
        (h, payload)
    }

    pub fn ready(&mut self) -> Ready {
        let (h, p) = self.recv();
        assert_eq!(h.kind, Kind::Ready);
        Ready::decode(&p).unwrap()
    }

    fn error_of(p: &[u8]) -> End {
        let e = AgentError::decode(p).unwrap();
        End::Error(e.code, String::from_utf8_lossy(e.message).into_owned())
    }

    pub fn exec(&mut self, spec: &ExecSpec) -> Run {
        let s = spec.clone();
        self.send(Kind::Exec, 0, |w| {
            Exec::encode(
                w,
                ExecParts {
                    clock_ns: now_ns(),
                    seed: seed(),
                    timeout_ms: s.timeout_ms,
                    program: s.program,
                    argv: s.argv.iter().map(Vec::as_slice),
                    env: s.env.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
                    cwd: &s.cwd,
                    stdin: &s.stdin,
                },
            )
        });
        let mut run = Run {
            stdout: Vec::new(),
            stderr: Vec::new(),
            end: End::Exit(ExitStatus {
                code: -1,
                signal: 0,
                flags: 0,
            }),
            output_frames: 0,
        };
        loop {
            let (h, p) = self.recv();
            match h.kind {
                Kind::Output => {
                    let o = Output::decode(&p).unwrap();
                    match o.stream {
                        Stream::Stdout => run.stdout.extend(o.data),
                        Stream::Stderr => run.stderr.extend(o.data),
                    }
                    run.output_frames += 1;
                    let total = run.stdout.len() + run.stderr.len();
                    let stop = spec.stop_after.is_some_and(|n| total >= n);
                    self.send(
                        Kind::Resume,
                        if stop { RESUME_STOP_OUTPUT } else { 0 },
                        |_| Ok(()),
                    );
                }
                Kind::Exit => {
                    let (status, tail) = ExitStatus::decode(&p).unwrap();
                    if let Some(o) = tail {
                        match o.stream {
                            Stream::Stdout => run.stdout.extend(o.data),
                            Stream::Stderr => run.stderr.extend(o.data),
                        }
                    }
                    run.end = End::Exit(status);
                    return run;
                }
                Kind::Error => {
                    run.end = Self::error_of(&p);
                    return run;
                }
                other => panic!("unexpected {other:?} during an exec"),
            }
        }
    }

    /// Runs code through the host's own conversation code.
    pub fn run_code(&mut self, spec: &CodeSpec) -> CodeRun {
        let frame =
            zeroboot::agent::encode_run_code(&spec.request, spec.vm_id, now_ns(), seed()).unwrap();
        let mut chunks: Vec<(Stream, Vec<u8>)> = Vec::new();
        let end = zeroboot::agent::run_code(
            self,
            &frame,
            usize::MAX,
            &mut |s, d| chunks.push((s, d.to_vec())),
            None,
        );
        CodeRun {
            chunks,
            end: end.map_err(agent_end),
        }
    }

    /// The guest's contexts, through the host's own conversation code.
    pub fn contexts(&mut self) -> Vec<zeroboot::agent::ContextInfo> {
        zeroboot::agent::list_contexts(self).unwrap()
    }

    /// Writes a file through the host's own chunked transfer code.
    pub fn write_file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), End> {
        zeroboot::agent::write_file(self, path, mode, data).map_err(agent_end)
    }

    /// Reads a file through the host's own chunked transfer code.
    pub fn read_file(&mut self, path: &str, max_bytes: u32) -> Result<Vec<u8>, End> {
        zeroboot::agent::read_file(self, path, max_bytes).map_err(agent_end)
    }
}

/// An agent's refusal as an [`End`]; anything else is a broken conversation.
fn agent_end(e: zeroboot::agent::AgentError) -> End {
    match e {
        zeroboot::agent::AgentError::Agent { code, message } => End::Error(code, message),
        other => panic!("the conversation failed: {other}"),
    }
}

impl<R: Read, W: Write> zeroboot::agent::FrameLink for Client<R, W> {
    fn capacity(&self) -> usize {
        MAILBOX_SIZE
    }

    fn round_trip(
        &mut self,
        frame: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<Header, zeroboot::agent::AgentError> {
        self.w.write_all(frame).unwrap();
        self.w.flush().unwrap();
        let (header, payload) = self.recv();
        *reply = payload;
        Ok(header)
    }
}
