//! Running programs: argv through fork+exec, Python through the pre-warmed
//! zygote, both streamed back by one output pump.

mod argv;
mod pump;
mod python;
mod request;

pub use python::Zygote;
pub use request::ExecRequest;

use crate::template::Defaults;
use crate::transport::{Transport, TransportError};
use crate::{entropy, frames};
use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use zeroboot_proto::{AgentErrorCode, Program};

/// A started program as the pump sees it.
pub trait Running {
    /// Readable when [`Running::try_status`] may have news.
    fn exit_fd(&self) -> BorrowedFd<'_>;
    /// The program's exit status, once it has ended.
    fn try_status(&mut self) -> io::Result<Option<std::process::ExitStatus>>;
    /// Its process group, killed whole on timeout.
    fn pgid(&self) -> u32;
}

/// The agent ends of a started program's standard streams.
pub struct Stdio {
    /// Write end of the program's stdin.
    pub stdin: File,
    /// Read end of its stdout.
    pub stdout: File,
    /// Read end of its stderr.
    pub stderr: File,
}

/// What the agent needs to run an exec.
pub struct Runner {
    /// The Python zygote, when this agent has one.
    pub zygote: Option<Zygote>,
    /// Acting as a guest's system: set the clock per exec, and treat a
    /// refused entropy reseed as an error (a test process does neither).
    pub system: bool,
    /// The template's defaults for every exec.
    pub defaults: Defaults,
}

impl Runner {
    /// Runs `req` to completion, streaming its output; returns the length of
    /// the final frame left in the transport buffer.
    pub fn run(
        &mut self,
        t: &mut dyn Transport,
        req: ExecRequest,
    ) -> Result<usize, TransportError> {
        let req = req.with_defaults(&self.defaults);
        if let Err(e) = entropy::refresh(&req, self.system) {
            let msg = format!("cannot refresh guest entropy and clock: {e}");
            return Ok(frames::error(t.buf(), AgentErrorCode::Io, &msg));
        }
        if let Some(cwd) = &req.cwd
            && !cwd.is_dir()
        {
            let msg = format!("working directory {} does not exist", cwd.display());
            return Ok(frames::error(t.buf(), AgentErrorCode::SpawnFailed, &msg));
        }
        let started = match req.program {
            Program::Argv => argv::spawn(&req).map(|(p, io)| (Box::new(p) as Box<dyn Running>, io)),
            Program::Python => match self.zygote.as_mut() {
                Some(z) => z
                    .spawn(&req)
                    .map(|(p, io)| (Box::new(p) as Box<dyn Running + '_>, io)),
                None => {
                    let msg = "this agent has no Python interpreter";
                    return Ok(frames::error(t.buf(), AgentErrorCode::Unsupported, msg));
                }
            },
        };
        match started {
            Ok((mut running, stdio)) => pump::pump(t, running.as_mut(), stdio, &req),
            Err(e) => {
                let msg = format!("cannot start the program: {e}");
                Ok(frames::error(t.buf(), AgentErrorCode::SpawnFailed, &msg))
            }
        }
    }
}
