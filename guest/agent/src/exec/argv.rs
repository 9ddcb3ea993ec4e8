//! Starting an argv program: fork+exec in its own process group with three
//! pipes, watched through a pidfd.

use super::{ExecRequest, Running, Stdio};
use crate::sys;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// A running argv program.
pub struct ArgvProgram {
    child: Child,
    pidfd: OwnedFd,
}

/// Starts `req.argv` with `req.env` on top of the agent's environment.
pub fn spawn(req: &ExecRequest) -> io::Result<(ArgvProgram, Stdio)> {
    let (program, args) = req
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    if let Some((uid, gid)) = req.user {
        // std drops the supplementary groups too when root changes user.
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd.spawn()?;
    let pidfd = match sys::pidfd_open(child.id()) {
        Ok(fd) => fd,
        Err(e) => {
            let _killed = sys::kill_group(child.id());
            let _reaped = child.wait();
            return Err(e);
        }
    };
    let stdio = Stdio {
        stdin: File::from(OwnedFd::from(child.stdin.take().expect("piped stdin"))),
        stdout: File::from(OwnedFd::from(child.stdout.take().expect("piped stdout"))),
        stderr: File::from(OwnedFd::from(child.stderr.take().expect("piped stderr"))),
    };
    Ok((ArgvProgram { child, pidfd }, stdio))
}

impl Running for ArgvProgram {
    fn exit_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    fn try_status(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    fn pgid(&self) -> u32 {
        self.child.id()
    }
}
