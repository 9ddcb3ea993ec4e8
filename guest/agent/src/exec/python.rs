//! The Python zygote: one interpreter started (and its modules imported)
//! before the snapshot, which forks a worker per Python run and per Python
//! context. See `zygote.py` for the other side of the channel.
//!
//! The zygote stays its workers' parent (a double fork would hand them to the
//! agent but copy the zygote's page tables twice per run), so it reports
//! their exit statuses on its channel as they end; the agent files those
//! reports until the worker's owner asks ([`ZygoteLink::status_of`]).

use super::Stdio;
use super::worker::{Parent, Worker};
use crate::sys;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::rc::Rc;
use std::time::Duration;
use zeroboot_proto::Language;

const SCRIPT: &str = include_str!("zygote.py");
/// How long the interpreter may take to start and preload (TCG is slow).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fork, or the report of a worker's end, may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
const REPLY_TIMEOUT_MS: i32 = 30_000;

/// The agent's end of the zygote's channel.
struct Channel {
    /// SOCK_SEQPACKET: one message per `read`.
    ctl: File,
    /// Exit statuses (raw wait statuses) reported but not yet asked for.
    statuses: HashMap<u32, i32>,
    /// The zygote closed the channel, or broke it.
    closed: bool,
    /// Readable once the zygote has exited, and so handed its children on.
    zygote: OwnedFd,
}

impl Channel {
    /// The next message that is not an exit report (those are filed).
    fn reply(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        loop {
            let msg = self.recv(timeout)?;
            if !self.file_status(&msg) {
                return Ok(msg);
            }
        }
    }

    /// Receives one message; an empty one means the zygote is gone.
    fn recv(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        if self.closed {
            return Ok(Vec::new());
        }
        let ms = timeout.as_millis().try_into().unwrap_or(i32::MAX);
        if !sys::wait_readable(self.ctl.as_fd(), ms)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "python zygote did not answer",
            ));
        }
        let mut msg = vec![0u8; 4096];
        let n = self
            .ctl
            .read(&mut msg)
            .inspect_err(|_| self.closed = true)?;
        msg.truncate(n);
        self.closed = n == 0;
        Ok(msg)
    }

    /// Files `msg` if it is an exit report.
    fn file_status(&mut self, msg: &[u8]) -> bool {
        match msg.split_first() {
            Some((b'S', rest)) if rest.len() == 8 => {
                let pid = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
                let status = i32::from_le_bytes(rest[4..].try_into().expect("4 bytes"));
                self.statuses.insert(pid, status);
                true
            }
            _ => false,
        }
    }
}

/// A shared handle on a zygote's channel, held by the workers it forked.
#[derive(Clone)]
pub struct ZygoteLink(Rc<RefCell<Channel>>);

impl ZygoteLink {
    /// The exit status of worker `pid`, which has exited.
    pub fn status_of(&self, pid: u32) -> io::Result<ExitStatus> {
        let mut ch = self.0.borrow_mut();
        loop {
            if let Some(raw) = ch.statuses.remove(&pid) {
                return Ok(ExitStatus::from_raw(raw));
            }
            if ch.closed {
                // A dead zygote's children are handed to the agent (PID 1, or
                // the subreaper it made itself) once the zygote has exited:
                // its channel closes before that.
                sys::wait_readable(ch.zygote.as_fd(), REPLY_TIMEOUT_MS)?;
                return sys::try_wait(pid)?.ok_or_else(|| {
                    io::Error::other("the worker's zygote died before reporting its end")
                });
            }
            let msg = ch.recv(REPLY_TIMEOUT)?;
            ch.file_status(&msg);
        }
    }
}

/// A warmed Python interpreter that forks workers.
pub struct Zygote {
    python: PathBuf,
    preload: Vec<String>,
    process: Child,
    link: ZygoteLink,
}

impl Zygote {
    /// Starts `python` with the zygote script and waits until it has
    /// preloaded the built-in list and `extra` (the template's).
    pub fn start(python: &Path, extra: &[String]) -> io::Result<Zygote> {
        let (ours, theirs) = sys::seqpacket_pair()?;
        let mut preload = zeroboot_proto::PYTHON_PRELOAD.to_owned();
        for module in extra {
            preload.push(',');
            preload.push_str(module);
        }
        let process = Command::new(python)
            // Modules missing from the image are skipped (and logged); the
            // host checks a template's own preloads before its snapshot.
            .args(["-I", "-c", SCRIPT, &preload])
            .stdin(theirs)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let pidfd = match sys::pidfd_open(process.id()) {
            Ok(fd) => fd,
            Err(e) => {
                let mut process = process;
                let _reaped = process.kill().and_then(|()| process.wait());
                return Err(e);
            }
        };
        let mut zygote = Zygote {
            python: python.to_owned(),
            preload: extra.to_vec(),
            process,
            link: ZygoteLink(Rc::new(RefCell::new(Channel {
                ctl: File::from(ours),
                statuses: HashMap::new(),
                closed: false,
                zygote: pidfd,
            }))),
        };
        let ready = zygote.link.0.borrow_mut().reply(START_TIMEOUT)?;
        match ready.as_slice() {
            b"R" => Ok(zygote),
            other => {
                zygote.stop();
                Err(io::Error::other(format!(
                    "python zygote sent {:?} instead of ready",
                    String::from_utf8_lossy(other)
                )))
            }
        }
    }

    /// Kills and reaps the interpreter. Errors only say it already was
    /// (killed, or reaped by PID 1's reaper).
    fn stop(&mut self) {
        if self
            .process
            .kill()
            .and_then(|()| self.process.wait())
            .is_err()
        {
            eprintln!("zeroboot-agent: old python zygote was already reaped");
        }
    }

    /// Restarts the interpreter if it died (the next run then starts cold).
    fn ensure_alive(&mut self) -> io::Result<()> {
        if !self.link.0.borrow().closed && matches!(self.process.try_wait(), Ok(None)) {
            return Ok(());
        }
        eprintln!("zeroboot-agent: python zygote died; restarting it");
        self.stop();
        *self = Zygote::start(&self.python.clone(), &self.preload.clone())?;
        Ok(())
    }

    /// Forks a worker, restarting the zygote first if it died.
    pub fn fork_worker(&mut self) -> io::Result<Worker> {
        self.ensure_alive()?;
        let (stdin_r, stdin_w) = io::pipe()?;
        let (stdout_r, stdout_w) = io::pipe()?;
        let (stderr_r, stderr_w) = io::pipe()?;
        let (ctl, worker_ctl) = sys::stream_pair()?;
        let reply = {
            let mut ch = self.link.0.borrow_mut();
            let fds = [
                stdin_r.as_fd(),
                stdout_w.as_fd(),
                stderr_w.as_fd(),
                worker_ctl.as_fd(),
            ];
            sys::send_with_fds(ch.ctl.as_fd(), b"W", &fds).and_then(|()| ch.reply(REPLY_TIMEOUT))
        };
        // Our copies of the worker's ends must go, or EOF would never come.
        drop((stdin_r, stdout_w, stderr_w, worker_ctl));
        let pid = match reply.as_deref().map(|r| r.split_first()) {
            Ok(Some((b'P', pid))) if pid.len() == 4 => {
                u32::from_le_bytes(pid.try_into().expect("4 bytes"))
            }
            Ok(Some((b'E', msg))) => {
                return Err(io::Error::other(String::from_utf8_lossy(msg).into_owned()));
            }
            Ok(_) => {
                self.link.0.borrow_mut().closed = true;
                return Err(io::Error::other("python zygote closed the channel"));
            }
            Err(e) => {
                self.link.0.borrow_mut().closed = true;
                return Err(io::Error::other(format!(
                    "python zygote channel failed: {e}"
                )));
            }
        };
        let stdio = Stdio {
            stdin: Some(File::from(OwnedFd::from(stdin_w))),
            stdout: File::from(OwnedFd::from(stdout_r)),
            stderr: File::from(OwnedFd::from(stderr_r)),
        };
        Worker::new(
            Language::Python,
            pid,
            Parent::Zygote(self.link.clone()),
            File::from(ctl),
            stdio,
        )
    }
}
