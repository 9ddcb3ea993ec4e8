//! RunCode: code with notebook semantics, in a fresh worker or in a named
//! persistent context, answered by a CodeEnd frame.
//!
//! A context is a worker kept alive in the guest, so it lives in the VM's
//! memory: a snapshot of the sandbox carries it, and each fork of that
//! snapshot continues it on its own. The host names the VM in every request
//! (`vm_id`); the first cell a context runs under a new name reseeds its
//! random generators, so two branches do not draw the same numbers. A context
//! whose interpreter died (killed at its deadline, `exit`, a crash) is
//! forgotten: the next cell with its name starts a new one.

use super::pump::{self, Finish};
use super::worker::{self, Done, Mode, WorkRequest, Worker};
use super::{CodeRequest, MAX_CONTEXTS, Runner, argv, language_name, shell, spawn_failed};
use crate::frames::{self, Failure};
use crate::net::Tap;
use crate::transport::{Transport, TransportError};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use zeroboot_proto::{AgentErrorCode, Language};

impl Runner {
    /// Runs `req`; returns the length of the final frame left in the
    /// transport buffer.
    pub fn run_code(
        &mut self,
        t: &mut dyn Transport,
        req: CodeRequest,
    ) -> Result<usize, TransportError> {
        let req = req.with_defaults(&self.defaults);
        let cwd = (!req.cwd.is_empty()).then(|| Path::new(OsStr::from_bytes(&req.cwd)));
        if let Err(f) = self.prepare(&req.seed, req.clock_ns, cwd) {
            return Ok(f.encode(t.buf()));
        }
        let ran = if !req.context.is_empty() {
            self.run_in_context(t, &req)?
        } else if req.language == Language::Bash {
            self.run_shell(t, &req)?
        } else {
            self.run_fresh(t, &req)?
        };
        Ok(match ran {
            Ok((finish, done)) => finish_code(t, finish, done.as_ref())?,
            Err(f) => f.encode(t.buf()),
        })
    }

    /// `sh -c CODE`, as an argv run.
    fn run_shell(
        &mut self,
        t: &mut dyn Transport,
        req: &CodeRequest,
    ) -> Result<Result<(Finish, Option<Done>), Failure>, TransportError> {
        let Some(shell) = &self.shell else {
            return Ok(Err(super::unsupported(Language::Bash)));
        };
        let os = |b: &[u8]| OsStr::from_bytes(b).to_owned();
        let argv = [shell.as_os_str().to_owned(), "-c".into(), os(&req.code)];
        let env: Vec<_> = req.env.iter().map(|(k, v)| (os(k), os(v))).collect();
        let cwd = (!req.cwd.is_empty()).then(|| Path::new(OsStr::from_bytes(&req.cwd)));
        let (mut program, mut stdio) = match argv::spawn(&argv, &env, cwd, req.user) {
            Ok(started) => started,
            Err(e) => return Ok(Err(spawn_failed(e))),
        };
        let finished = pump::pump(t, &mut program, &mut stdio, &[], req.timeout, self.tap())?;
        Ok(finished.map(|f| (f, None)))
    }

    /// A cell in a fresh worker, which exits after it.
    fn run_fresh(
        &mut self,
        t: &mut dyn Transport,
        req: &CodeRequest,
    ) -> Result<Result<(Finish, Option<Done>), Failure>, TransportError> {
        let mut worker = match self.fresh_worker(req.language) {
            Ok(w) => w,
            Err(f) => return Ok(Err(f)),
        };
        let ran = run_cell(t, &mut worker, req, false, true, self.tap())?;
        self.retire(worker);
        Ok(ran)
    }

    /// A cell in the context `req.context`, started if needed.
    fn run_in_context(
        &mut self,
        t: &mut dyn Transport,
        req: &CodeRequest,
    ) -> Result<Result<(Finish, Option<Done>), Failure>, TransportError> {
        self.forget_dead_contexts();
        let name = req.context.as_slice();
        let worker = match self.contexts.get(name) {
            Some(w) if w.language() != req.language => {
                return Ok(Err(Failure::new(
                    AgentErrorCode::BadRequest,
                    format!(
                        "context {} runs {}, not {}",
                        String::from_utf8_lossy(name),
                        language_name(w.language()),
                        language_name(req.language)
                    ),
                )));
            }
            Some(_) => self.contexts.get_mut(name).expect("just found"),
            None if self.contexts.len() >= MAX_CONTEXTS => {
                return Ok(Err(Failure::new(
                    AgentErrorCode::BadRequest,
                    format!("a sandbox has at most {MAX_CONTEXTS} contexts"),
                )));
            }
            None => match self.fresh_worker(req.language) {
                Ok(w) => self.contexts.entry(name.to_vec()).or_insert(w),
                Err(f) => return Ok(Err(f)),
            },
        };
        let reseed = worker.last_vm != Some(req.vm_id);
        // The field itself, not `self.tap()`: `worker` borrows `self.contexts`.
        let tap = self.net.as_ref().and_then(|n| n.tap.as_ref());
        let ran = run_cell(t, worker, req, true, reseed, tap)?;
        if worker.has_exited() {
            self.contexts.remove(name);
        }
        Ok(ran)
    }

    /// Drops contexts whose interpreter has ended.
    fn forget_dead_contexts(&mut self) {
        self.contexts.retain(|_, w| !w.has_exited());
    }

    /// The live contexts, as a Contexts frame.
    pub fn list_contexts(&mut self, buf: &mut [u8]) -> usize {
        self.forget_dead_contexts();
        frames::contexts(
            buf,
            self.contexts
                .iter()
                .map(|(name, w)| zeroboot_proto::ContextEntry {
                    name,
                    language: w.language(),
                }),
        )
    }
}

/// Sends one cell to `worker` and pumps it to its end.
fn run_cell(
    t: &mut dyn Transport,
    worker: &mut Worker,
    req: &CodeRequest,
    keep: bool,
    reseed: bool,
    tap: Option<&Tap>,
) -> Result<Result<(Finish, Option<Done>), Failure>, TransportError> {
    worker.last_vm = Some(req.vm_id);
    let env = req.env_pairs();
    let message = match worker.language() {
        Language::Bash => {
            let random = reseed.then(|| u16::from_le_bytes([req.seed[0], req.seed[1]]) & 0x7fff);
            shell::cell_request(&req.code, &env, &req.cwd, random)
        }
        _ => Ok(worker::encode_request(&WorkRequest {
            mode: Mode::Cell,
            keep,
            reseed,
            code: &req.code,
            args: &[],
            env: &env,
            cwd: &req.cwd,
            user: req.user,
        })),
    };
    // A cell reads no input.
    worker.stdio.stdin = None;
    if let Err(e) = message.and_then(|m| worker.send(&m)) {
        worker.kill();
        return Ok(Err(spawn_failed(e)));
    }
    let (mut run, stdio) = worker.run(keep);
    let finished = pump::pump(t, &mut run, stdio, &[], req.timeout, tap)?;
    Ok(finished.map(|f| (f, worker.take_done())))
}

/// Encodes the CodeEnd frame, first sending the held-back output chunk on
/// its own if it does not fit beside the result and error.
fn finish_code(
    t: &mut dyn Transport,
    finish: Finish,
    done: Option<&Done>,
) -> Result<usize, TransportError> {
    let end = frames::CodeOutcome::new(finish.status, done);
    let mut tail = finish.tail;
    if let Some((stream, data)) = &tail
        && !end.fits_with_tail(data.len())
    {
        if let Err(f) = pump::send_output(t, *stream, data)? {
            return Ok(f.encode(t.buf()));
        }
        tail = None;
    }
    Ok(end.encode(t.buf(), tail.as_ref().map(|(s, d)| (*s, d.as_slice()))))
}
