//! Workers: warm interpreter processes that run code for the agent over a
//! control socket (fd 3 in the worker), with their standard streams on pipes
//! the agent holds for the worker's whole life. A worker runs one program or
//! cell, or, as a persistent context, cell after cell.
//!
//! A worker that has finished its one run reports its exit code (`X`) and
//! lingers until the agent dismisses it at its next request: a sandbox killed
//! after one run never has the guest tear the process down.
//!
//! The control protocol (both directions a u32 length, then the body) is
//! documented where the other side lives: `zygote.py` (Python), `worker.js`
//! (Node) and `shell.rs` (the shell's line-based variant).

use super::{Running, Stdio, python::ZygoteLink};
use crate::sys;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::Duration;
use zeroboot_proto::Language;

/// Largest message a worker may send (a cell's result and error are cut to
/// well below this by the worker).
const MAX_MESSAGE: usize = 256 << 10;
/// How long a context interrupted at its deadline has to stop its cell
/// before its process group is killed (and the context with it).
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// How long a request may wait for an idle worker to read it.
const SEND_TIMEOUT_MS: i32 = 10_000;

/// How a run ended inside the worker, as it reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Done {
    /// The cell's exit code (0, 1 for an error, or what SystemExit said).
    pub code: i32,
    /// The last expression's value as text.
    pub result: Option<Vec<u8>>,
    /// The uncaught exception: name, value, traceback.
    pub error: Option<[Vec<u8>; 3]>,
}

/// Where a worker's exit status comes from.
pub enum Parent {
    /// The Python zygote forked it and reports its end.
    Zygote(ZygoteLink),
    /// The agent started it.
    Agent(Child),
}

/// A running worker.
pub struct Worker {
    /// The process and its channel.
    process: Process,
    /// The agent ends of its standard streams.
    pub stdio: Stdio,
    /// The VM identity of its last run (see `RunCode::vm_id`); `None` before
    /// the first, which always reseeds.
    pub last_vm: Option<u64>,
}

/// A worker's process and control channel.
struct Process {
    language: Language,
    pid: u32,
    /// Readable once the process has exited.
    pidfd: OwnedFd,
    parent: Parent,
    /// Non-blocking control socket; `None` once the worker closed it.
    ctl: Option<File>,
    /// Bytes received on `ctl` that do not make a whole message yet.
    inbox: Vec<u8>,
    /// What the current run reported, once it has.
    done: Option<Done>,
    /// The exit code it reported for its finished run (`X`): it lingers.
    finished: Option<i32>,
    /// Its exit status, once known.
    status: Option<ExitStatus>,
}

/// How a worker runs a request's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// As `python -c` would (Python only).
    Program,
    /// As a notebook cell.
    Cell,
    /// A throwaway cell that warms the worker's paths (Python only).
    WarmUp,
}

/// What a worker is asked to run.
pub struct WorkRequest<'a> {
    /// How to run it.
    pub mode: Mode,
    /// Keep serving after this run (a persistent context).
    pub keep: bool,
    /// Reseed the userspace random generators first.
    pub reseed: bool,
    /// The source.
    pub code: &'a [u8],
    /// Program arguments after the source (programs only).
    pub args: &'a [&'a [u8]],
    /// Environment set first.
    pub env: &'a [(&'a [u8], &'a [u8])],
    /// Directory entered first (empty: stay).
    pub cwd: &'a [u8],
    /// (uid, gid) the worker becomes first, if it is not that user yet
    /// (`None`: stays root).
    pub user: Option<(u32, u32)>,
}

/// Encodes a request as the Python and Node workers parse it.
pub fn encode_request(req: &WorkRequest<'_>) -> Vec<u8> {
    fn blob(out: &mut Vec<u8>, b: &[u8]) {
        out.extend((b.len() as u32).to_le_bytes());
        out.extend(b);
    }
    let mode = match req.mode {
        Mode::Program => b'S',
        Mode::Cell => b'C',
        Mode::WarmUp => b'W',
    };
    let mut body = vec![b'R', mode, u8::from(req.keep), u8::from(req.reseed)];
    blob(&mut body, req.code);
    body.extend((req.args.len() as u32).to_le_bytes());
    for a in req.args {
        blob(&mut body, a);
    }
    body.extend((req.env.len() as u32).to_le_bytes());
    for (k, v) in req.env {
        blob(&mut body, k);
        blob(&mut body, v);
    }
    blob(&mut body, req.cwd);
    let (uid, gid) = req.user.unwrap_or((u32::MAX, u32::MAX));
    body.extend(uid.to_le_bytes());
    body.extend(gid.to_le_bytes());
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend(body);
    out
}

/// Parses a worker's `D` message body.
fn parse_done(body: &[u8]) -> Option<Done> {
    let mut r = zeroboot_proto::Reader::new(body.get(1..)?);
    let code = r.i32().ok()?;
    let parts = r.take(1).ok()?[0];
    let mut bytes = || r.bytes().ok().map(<[u8]>::to_vec);
    let result = if parts & 1 != 0 { Some(bytes()?) } else { None };
    let error = if parts & 2 != 0 {
        Some([bytes()?, bytes()?, bytes()?])
    } else {
        None
    };
    Some(Done {
        code,
        result,
        error,
    })
}

impl Worker {
    /// Wraps a started worker process.
    pub fn new(
        language: Language,
        pid: u32,
        parent: Parent,
        ctl: File,
        stdio: Stdio,
    ) -> io::Result<Worker> {
        let pidfd = sys::pidfd_open(pid)?;
        sys::set_nonblocking(ctl.as_fd())?;
        Ok(Worker {
            process: Process {
                language,
                pid,
                pidfd,
                parent,
                ctl: Some(ctl),
                inbox: Vec::new(),
                done: None,
                finished: None,
                status: None,
            },
            stdio,
            last_vm: None,
        })
    }

    /// Its language.
    pub fn language(&self) -> Language {
        self.process.language
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// True once the process has exited (whether or not its status is known).
    pub fn has_exited(&self) -> bool {
        self.process.has_exited()
    }

    /// Sends one request (already framed); clears what the last run reported.
    pub fn send(&mut self, message: &[u8]) -> io::Result<()> {
        self.process.send(message)
    }

    /// Blocks until the worker's next message (its hello) or `timeout`.
    pub fn wait_message(&mut self, timeout: Duration) -> io::Result<()> {
        self.process.wait_message(timeout)
    }

    /// Runs a warm-up request (one that prints nothing) to its report,
    /// before the snapshot: what the first real run executes is then warm.
    pub fn warm_up(&mut self, message: &[u8], timeout: Duration) -> io::Result<()> {
        self.send(message)?;
        while self.process.done.is_none() {
            self.process.wait_message(timeout)?;
        }
        match self.take_done() {
            Some(Done {
                code: 0,
                error: None,
                ..
            }) => Ok(()),
            other => Err(io::Error::other(format!("the warm-up failed: {other:?}"))),
        }
    }

    /// What the last run reported.
    pub fn take_done(&mut self) -> Option<Done> {
        self.process.done.take()
    }

    /// True when the worker has finished its one run and lingers.
    pub fn lingers(&self) -> bool {
        self.process.finished.is_some() && !self.process.has_exited()
    }

    /// Stops the worker (SIGSTOP) until [`Worker::resume`]: a spare that
    /// would wake on its own (Node.js: the timers of its event loop and of
    /// V8, all due at once when a fork's clock jumps) costs every fork the
    /// pages it touches, whatever the fork runs.
    pub fn pause(&mut self) -> io::Result<()> {
        sys::signal(self.process.pid, libc::SIGSTOP)
    }

    /// Lets a paused worker run again.
    pub fn resume(&mut self) -> io::Result<()> {
        sys::signal(self.process.pid, libc::SIGCONT)
    }

    /// Kills the worker's process group and collects its status.
    pub fn kill(&mut self) {
        self.process.kill(false);
    }

    /// Kills a lingering worker, but not what its run left running in its
    /// process group (as if it had exited).
    pub fn dismiss(&mut self) {
        self.process.kill(true);
    }

    /// A run of this worker as the pump drives it, and the pipes it pumps:
    /// `keep` says whether the worker lives on after the run (a context) or
    /// exits (and its exit ends the run).
    pub fn run(&mut self, keep: bool) -> (WorkerRun<'_>, &mut Stdio) {
        (
            WorkerRun {
                process: &mut self.process,
                keep,
            },
            &mut self.stdio,
        )
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.process.kill(false);
    }
}

impl Process {
    /// True once the process has exited (whether or not its status is known).
    fn has_exited(&self) -> bool {
        if self.status.is_some() {
            return true;
        }
        !matches!(sys::wait_readable(self.pidfd.as_fd(), 0), Ok(false))
    }

    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        self.done = None;
        let ctl = self
            .ctl
            .as_mut()
            .ok_or_else(|| io::Error::other("the worker closed its channel"))?;
        // An idle worker reads its channel, and a request (at most a mailbox)
        // fits the socket's buffer: the wait is for the worker to be idle.
        let mut sent = 0;
        while sent < message.len() {
            match ctl.write(&message[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !sys::wait_writable(ctl.as_fd(), SEND_TIMEOUT_MS)? {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the worker does not read its requests",
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads whatever the channel holds; keeps the last `D` message.
    fn read_channel(&mut self) -> io::Result<()> {
        let Some(ctl) = self.ctl.as_mut() else {
            return Ok(());
        };
        // Read straight into the inbox (a buffer on the stack would be
        // pages each fork copies).
        loop {
            let before = self.inbox.len();
            self.inbox.resize(before + 4096, 0);
            let read = ctl.read(&mut self.inbox[before..]);
            self.inbox.truncate(before + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    self.ctl = None;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if self.inbox.len() > MAX_MESSAGE + 4 {
                return Err(io::Error::other("the worker sent an oversized message"));
            }
        }
        while self.inbox.len() >= 4 {
            let n = u32::from_le_bytes(self.inbox[..4].try_into().expect("4 bytes")) as usize;
            if n > MAX_MESSAGE {
                return Err(io::Error::other("the worker sent an oversized message"));
            }
            if self.inbox.len() < 4 + n {
                break;
            }
            let body: Vec<u8> = self.inbox.drain(..4 + n).skip(4).collect();
            match body.first() {
                Some(b'D') => {
                    self.done =
                        Some(parse_done(&body).ok_or_else(|| {
                            io::Error::other("the worker sent a malformed result")
                        })?);
                }
                Some(b'X') if body.len() == 5 => {
                    self.finished =
                        Some(i32::from_le_bytes(body[1..].try_into().expect("4 bytes")));
                }
                Some(b'H') => {} // a Node worker's hello
                _ => return Err(io::Error::other("the worker sent an unknown message")),
            }
        }
        Ok(())
    }

    fn wait_message(&mut self, timeout: Duration) -> io::Result<()> {
        let Some(ctl) = &self.ctl else {
            return Err(io::Error::other("the worker closed its channel"));
        };
        let ms = timeout.as_millis().try_into().unwrap_or(i32::MAX);
        if !sys::wait_readable(ctl.as_fd(), ms)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the worker did not start in time",
            ));
        }
        let before = self.inbox.len();
        self.read_channel()?;
        if self.ctl.is_none() && self.inbox.len() == before {
            return Err(io::Error::other("the worker exited while starting"));
        }
        Ok(())
    }

    /// The exit status, if the process has ended (reaped once).
    fn try_exit(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() && self.has_exited() {
            self.status = match &mut self.parent {
                Parent::Agent(child) => child.try_wait()?,
                Parent::Zygote(link) => Some(link.status_of(self.pid)?),
            };
        }
        Ok(self.status)
    }

    fn kill(&mut self, alone: bool) {
        if self.status.is_some() {
            return;
        }
        let killed = if alone {
            sys::kill(self.pid)
        } else {
            sys::kill_group(self.pid)
        };
        if let Err(e) = killed {
            eprintln!("zeroboot-agent: cannot kill worker {}: {e}", self.pid);
        }
        // SIGKILL cannot be ignored: the wait is the kernel tearing it down.
        if let Err(e) = sys::wait_readable(self.pidfd.as_fd(), 5000).and_then(|_| self.try_exit()) {
            eprintln!("zeroboot-agent: worker {} lost: {e}", self.pid);
        }
    }
}

/// One run of a worker.
pub struct WorkerRun<'w> {
    process: &'w mut Process,
    keep: bool,
}

impl Running for WorkerRun<'_> {
    fn exit_fds(&self) -> [Option<BorrowedFd<'_>>; 2] {
        [
            Some(self.process.pidfd.as_fd()),
            self.process.ctl.as_ref().map(|c| c.as_fd()),
        ]
    }

    fn try_status(&mut self) -> io::Result<Option<ExitStatus>> {
        self.process.read_channel()?;
        // A context's cell ends with its report; another run with the
        // worker's exit, or with the report that it has finished.
        let code = if self.keep {
            self.process.done.as_ref().map(|d| d.code)
        } else {
            self.process.finished
        };
        if let Some(code) = code {
            return Ok(Some(ExitStatus::from_raw((code & 0xff) << 8)));
        }
        self.process.try_exit()
    }

    fn pgid(&self) -> u32 {
        self.process.pid
    }

    fn interrupt(&mut self) -> Option<Duration> {
        if self.keep && self.process.language != Language::Bash {
            // A context's cell is interrupted, not its interpreter.
            match sys::signal(self.process.pid, libc::SIGINT) {
                Ok(()) => return Some(INTERRUPT_GRACE),
                Err(e) => eprintln!("zeroboot-agent: cannot interrupt {}: {e}", self.process.pid),
            }
        }
        if let Err(e) = sys::kill_group(self.process.pid) {
            eprintln!(
                "zeroboot-agent: cannot kill group {}: {e}",
                self.process.pid
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_match_the_worker_layout() {
        let msg = encode_request(&WorkRequest {
            mode: Mode::Cell,
            keep: true,
            reseed: false,
            code: b"1+1",
            args: &[],
            env: &[(b"K", b"V")],
            cwd: b"/t",
            user: Some((1000, 7)),
        });
        let mut want = vec![43, 0, 0, 0, b'R', b'C', 1, 0, 3, 0, 0, 0];
        want.extend(b"1+1");
        want.extend([0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'K', 1, 0, 0, 0, b'V']);
        want.extend([2, 0, 0, 0, b'/', b't']);
        want.extend([0xe8, 3, 0, 0, 7, 0, 0, 0]);
        assert_eq!(msg, want);
    }

    #[test]
    fn done_messages_parse_or_are_refused() {
        let mut body = vec![b'D', 1, 0, 0, 0, 3, 1, 0, 0, 0, b'2'];
        for part in [&b"E"[..], b"v", b"tb"] {
            body.extend((part.len() as u32).to_le_bytes());
            body.extend(part);
        }
        let done = parse_done(&body).unwrap();
        assert_eq!(done.code, 1);
        assert_eq!(done.result.as_deref(), Some(&b"2"[..]));
        assert_eq!(done.error.unwrap()[2], b"tb");
        assert!(parse_done(&body[..body.len() - 1]).is_none());
        assert!(parse_done(b"D").is_none());
    }
}
