//! The Python zygote: one interpreter started (and its modules imported)
//! before the snapshot, forked once per Python exec. See `zygote.py` for the
//! other side of the control channel.

use super::{ExecRequest, Running, Stdio};
use crate::sys;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

const SCRIPT: &str = include_str!("zygote.py");
/// How long the interpreter may take to start and preload (TCG is slow).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A warmed Python interpreter waiting for exec requests.
pub struct Zygote {
    python: PathBuf,
    preload: Vec<String>,
    process: Child,
    /// SOCK_SEQPACKET control channel (the zygote's fd 0).
    ctl: File,
    /// The control channel failed: the interpreter is dead or dying (its
    /// exit may not be visible to `waitpid` yet).
    broken: bool,
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
        let mut zygote = Zygote {
            python: python.to_owned(),
            preload: extra.to_vec(),
            process,
            ctl: File::from(ours),
            broken: false,
        };
        match zygote.recv(Some(START_TIMEOUT))?.as_slice() {
            b"R" => Ok(zygote),
            other => Err(io::Error::other(format!(
                "python zygote sent {:?} instead of ready",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    /// Restarts the interpreter if it died (the next exec then runs cold).
    fn ensure_alive(&mut self) -> io::Result<()> {
        if !self.broken && matches!(self.process.try_wait(), Ok(None)) {
            return Ok(());
        }
        eprintln!("zeroboot-agent: python zygote died; restarting it");
        // Make sure the old interpreter is gone and reaped. Errors only say
        // it already was (killed, or reaped by PID 1's reaper).
        if self
            .process
            .kill()
            .and_then(|()| self.process.wait())
            .is_err()
        {
            eprintln!("zeroboot-agent: old python zygote was already reaped");
        }
        *self = Zygote::start(&self.python.clone(), &self.preload.clone())?;
        Ok(())
    }

    /// Receives one control message; `Ok(empty)` means the zygote is gone.
    fn recv(&mut self, timeout: Option<Duration>) -> io::Result<Vec<u8>> {
        if let Some(t) = timeout {
            let mut pfd = [libc::pollfd {
                fd: self.ctl.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if sys::poll(&mut pfd, t.as_millis().try_into().unwrap_or(i32::MAX))? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "python zygote did not answer",
                ));
            }
        }
        let mut msg = vec![0u8; 4096];
        let n = self.ctl.read(&mut msg)?;
        msg.truncate(n);
        Ok(msg)
    }

    /// Sends one request and returns the forked child's pid. A failed channel
    /// marks the zygote for a restart.
    fn request(&mut self, body: &[u8], fds: [BorrowedFd<'_>; 3]) -> io::Result<u32> {
        let reply = sys::send_with_fds(self.ctl.as_fd(), body, &fds).and_then(|()| self.recv(None));
        match reply.as_deref().map(|r| r.split_first()) {
            Ok(Some((b'P', pid))) if pid.len() == 4 => {
                Ok(u32::from_le_bytes(pid.try_into().expect("4 bytes")))
            }
            Ok(Some((b'E', msg))) => {
                Err(io::Error::other(String::from_utf8_lossy(msg).into_owned()))
            }
            Ok(_) => {
                self.broken = true;
                Err(io::Error::other("python zygote closed the channel"))
            }
            Err(e) => {
                self.broken = true;
                Err(io::Error::other(format!(
                    "python zygote channel failed: {e}"
                )))
            }
        }
    }

    /// Forks a child of the zygote running `req`'s source.
    pub fn spawn(&mut self, req: &ExecRequest) -> io::Result<(PythonProgram<'_>, Stdio)> {
        self.ensure_alive()?;
        let (stdin_r, stdin_w) = io::pipe()?;
        let (stdout_r, stdout_w) = io::pipe()?;
        let (stderr_r, stderr_w) = io::pipe()?;
        let body = encode_request(req);
        let started = self.request(&body, [stdin_r.as_fd(), stdout_w.as_fd(), stderr_w.as_fd()]);
        // Our copies of the child's ends must go, or EOF would never come.
        drop((stdin_r, stdout_w, stderr_w));
        let pid = started?;
        let stdio = Stdio {
            stdin: File::from(OwnedFd::from(stdin_w)),
            stdout: File::from(OwnedFd::from(stdout_r)),
            stderr: File::from(OwnedFd::from(stderr_r)),
        };
        Ok((PythonProgram { zygote: self, pid }, stdio))
    }
}

/// Encodes the request body `zygote.py` parses (see its header comment).
fn encode_request(req: &ExecRequest) -> Vec<u8> {
    fn blob(out: &mut Vec<u8>, b: &[u8]) {
        out.extend((b.len() as u32).to_le_bytes());
        out.extend(b);
    }
    let mut out = Vec::new();
    out.extend((req.argv.len() as u32).to_le_bytes());
    for a in &req.argv {
        blob(&mut out, a.as_bytes());
    }
    out.extend((req.env.len() as u32).to_le_bytes());
    for (k, v) in &req.env {
        blob(&mut out, k.as_bytes());
        blob(&mut out, v.as_bytes());
    }
    blob(
        &mut out,
        req.cwd
            .as_deref()
            .map(|p| p.as_os_str().as_bytes())
            .unwrap_or_default(),
    );
    let (uid, gid) = req.user.unwrap_or((u32::MAX, u32::MAX));
    out.extend(uid.to_le_bytes());
    out.extend(gid.to_le_bytes());
    out
}

/// A Python exec running as a child of the zygote, which reports its status.
pub struct PythonProgram<'z> {
    zygote: &'z mut Zygote,
    pid: u32,
}

impl Running for PythonProgram<'_> {
    fn exit_fd(&self) -> BorrowedFd<'_> {
        self.zygote.ctl.as_fd()
    }

    fn try_status(&mut self) -> io::Result<Option<ExitStatus>> {
        let reply = self.zygote.recv(None);
        match reply.as_deref().map(|r| r.split_first()) {
            Ok(Some((b'S', s))) if s.len() == 4 => Ok(Some(ExitStatus::from_raw(
                i32::from_le_bytes(s.try_into().expect("4 bytes")),
            ))),
            _ => {
                // The zygote died under its child; the child's group may live on.
                self.zygote.broken = true;
                if let Err(e) = sys::kill_group(self.pid) {
                    eprintln!(
                        "zeroboot-agent: cannot kill process group {}: {e}",
                        self.pid
                    );
                }
                Err(io::Error::other(
                    "python zygote died while running the program",
                ))
            }
        }
    }

    fn pgid(&self) -> u32 {
        self.pid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroboot_proto::Program;

    #[test]
    fn request_body_matches_the_zygote_layout() {
        let req = ExecRequest {
            clock_ns: 0,
            seed: [0; 32],
            timeout: None,
            program: Program::Python,
            argv: vec!["print(1)".into(), "a".into()],
            env: vec![("K".into(), "V".into())],
            cwd: None,
            stdin: Vec::new(),
            user: Some((1000, 7)),
        };
        let body = encode_request(&req);
        let mut want = vec![2, 0, 0, 0, 8, 0, 0, 0];
        want.extend(b"print(1)");
        want.extend([
            1, 0, 0, 0, b'a', 1, 0, 0, 0, 1, 0, 0, 0, b'K', 1, 0, 0, 0, b'V', 0, 0, 0, 0,
        ]);
        want.extend([0xe8, 3, 0, 0, 7, 0, 0, 0]);
        assert_eq!(body, want);
    }
}
