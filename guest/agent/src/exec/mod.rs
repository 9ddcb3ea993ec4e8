//! Running programs and code: argv through fork+exec, Python through workers
//! forked from the pre-warmed zygote, JavaScript through Node.js workers,
//! shell code through `sh -c` or a persistent shell, all streamed back by one
//! output pump. Code runs with notebook semantics in a fresh worker or in a
//! named persistent context (`code.rs`).

mod argv;
mod code;
mod node;
mod private;
mod pump;
mod python;
mod request;
mod shell;
mod worker;

pub use node::Node;
pub use request::{CodeRequest, ExecRequest};
pub use shell::find as find_shell;
pub use worker::Done;

use crate::entropy;
use crate::frames::{self, Failure};
use crate::template::{Defaults, TemplateConfig};
use crate::transport::{Transport, TransportError};
use python::Zygote;
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use worker::{Mode, WorkRequest, Worker};
use zeroboot_proto::{AgentErrorCode, Language, Program};

/// A started program as the pump sees it.
pub trait Running {
    /// Readable when [`Running::try_status`] may have news.
    fn exit_fds(&self) -> [Option<BorrowedFd<'_>>; 2];
    /// How the run ended, once it has.
    fn try_status(&mut self) -> io::Result<Option<std::process::ExitStatus>>;
    /// Its process group, killed whole when a run must be stopped.
    fn pgid(&self) -> u32;
    /// Stops the run at its deadline. `Some(grace)`: the program was asked
    /// to stop and is killed if it has not after `grace`; `None`: killed.
    fn interrupt(&mut self) -> Option<Duration>;
}

/// The agent ends of a started program's standard streams.
pub struct Stdio {
    /// Write end of the program's stdin (`None`: closed).
    pub stdin: Option<File>,
    /// Read end of its stdout.
    pub stdout: File,
    /// Read end of its stderr.
    pub stderr: File,
}

/// Most persistent contexts alive at once (each is an interpreter process).
pub const MAX_CONTEXTS: usize = 16;
/// How long a spare's warm-up may take (TCG is slow).
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// What runs the agent's execs and code.
pub struct Runner {
    /// The Python zygote, when this agent has Python.
    python: Option<Zygote>,
    /// Node.js, when this agent has it.
    node: Option<Node>,
    /// The shell, when the image has one.
    shell: Option<PathBuf>,
    /// Python and JavaScript workers started ahead of need (before the
    /// snapshot): the first run of a fresh sandbox takes one and pays for no
    /// fork or start at all.
    spares: Vec<Worker>,
    /// Persistent contexts by name.
    contexts: BTreeMap<Vec<u8>, Worker>,
    /// Workers that finished their one run and wait to be dismissed (at the
    /// next request: a sandbox killed after one run never tears them down).
    lingering: Vec<Worker>,
    /// Acting as a guest's system: set the clock per exec, and treat a
    /// refused entropy reseed as an error (a test process does neither).
    pub system: bool,
    /// The network, once the host brought it up.
    pub net: Option<crate::net::Net>,
    /// The template's defaults for every exec and run (environment,
    /// working directory, user).
    defaults: Defaults,
}

impl Runner {
    /// Starts the Python zygote (if `python` is given; preloading the
    /// template's modules too) and, with `spares`, one warm spare worker per
    /// language the image has. A failure costs that language only.
    pub fn start(
        python: Option<&Path>,
        node: Option<Node>,
        shell: Option<PathBuf>,
        spares: bool,
        system: bool,
        template: TemplateConfig,
    ) -> Runner {
        let python = python.and_then(|python| match Zygote::start(python, &template.preload) {
            Ok(z) => Some(z),
            Err(e) => {
                eprintln!(
                    "zeroboot-agent: no Python: cannot start {}: {e}",
                    python.display()
                );
                None
            }
        });
        let mut runner = Runner {
            python,
            node,
            shell,
            spares: Vec::new(),
            contexts: BTreeMap::new(),
            lingering: Vec::new(),
            system,
            net: None,
            defaults: template.defaults,
        };
        let languages = if spares {
            &[Language::Python, Language::JavaScript][..]
        } else {
            &[]
        };
        for &language in languages {
            match runner
                .new_worker(language)
                .and_then(|w| w.map(warm_up).transpose())
            {
                Ok(Some(w)) => runner.spares.push(w),
                Ok(None) => {}
                Err(e) => eprintln!("zeroboot-agent: no warm {language:?} worker: {e}"),
            }
        }
        runner
    }

    /// The TAP device whose frames a run carries, once the network is up.
    fn tap(&self) -> Option<&crate::net::Tap> {
        self.net.as_ref().and_then(|n| n.tap.as_ref())
    }

    /// Starts a worker for `language` (`Ok(None)`: this agent has none).
    fn new_worker(&mut self, language: Language) -> io::Result<Option<Worker>> {
        match language {
            Language::Python => self.python.as_mut().map(Zygote::fork_worker).transpose(),
            Language::JavaScript => self.node.as_ref().map(Node::start_worker).transpose(),
            Language::Bash => self
                .shell
                .as_deref()
                .map(|sh| shell::start_context(sh, self.defaults.user))
                .transpose(),
        }
    }

    /// A worker that has run nothing yet: the spare if it is still there
    /// (and alive), else a new one.
    fn fresh_worker(&mut self, language: Language) -> Result<Worker, Failure> {
        if let Some(i) = self
            .spares
            .iter()
            .position(|w| w.language() == language && !w.has_exited())
        {
            let mut spare = self.spares.swap_remove(i);
            if language != Language::Python
                && let Err(e) = spare.resume()
            {
                eprintln!("zeroboot-agent: cannot resume the spare worker: {e}");
            }
            return Ok(spare);
        }
        match self.new_worker(language) {
            Ok(Some(w)) => Ok(w),
            Ok(None) => Err(unsupported(language)),
            Err(e) => Err(Failure::new(
                AgentErrorCode::SpawnFailed,
                format!("cannot start a {} worker: {e}", language_name(language)),
            )),
        }
    }

    /// Dismisses the workers of earlier runs, refreshes entropy and the
    /// clock, and checks the working directory.
    fn prepare(
        &mut self,
        seed: &[u8; 32],
        clock_ns: u64,
        cwd: Option<&Path>,
    ) -> Result<(), Failure> {
        for mut w in self.lingering.drain(..) {
            w.dismiss();
        }
        if let Err(e) = entropy::refresh(seed, clock_ns, self.system) {
            let msg = format!("cannot refresh guest entropy and clock: {e}");
            return Err(Failure::new(AgentErrorCode::Io, msg));
        }
        if let Some(cwd) = cwd
            && !cwd.is_dir()
        {
            let msg = format!("working directory {} does not exist", cwd.display());
            return Err(Failure::new(AgentErrorCode::SpawnFailed, msg));
        }
        Ok(())
    }

    /// Runs `req` to completion, streaming its output; returns the length of
    /// the final frame left in the transport buffer.
    pub fn run(
        &mut self,
        t: &mut dyn Transport,
        req: ExecRequest,
    ) -> Result<usize, TransportError> {
        let req = req.with_defaults(&self.defaults);
        if let Err(f) = self.prepare(&req.seed, req.clock_ns, req.cwd.as_deref()) {
            return Ok(f.encode(t.buf()));
        }
        let finished = match req.program {
            Program::Argv => match argv::spawn(&req.argv, &req.env, req.cwd.as_deref(), req.user) {
                Ok((mut program, mut stdio)) => pump::pump(
                    t,
                    &mut program,
                    &mut stdio,
                    &req.stdin,
                    req.timeout,
                    self.tap(),
                )?,
                Err(e) => Err(spawn_failed(e)),
            },
            Program::Python => self.run_python_program(t, &req)?,
        };
        let buf = t.buf();
        Ok(match finished {
            Ok(pump::Finish {
                status,
                tail: Some((stream, data)),
            }) => frames::exit_with_output(buf, status, stream, &data),
            Ok(pump::Finish { status, tail: None }) => frames::exit(buf, status),
            Err(f) => f.encode(buf),
        })
    }
}

impl Runner {
    /// Runs Python source as `python -c` would, in a fresh worker.
    fn run_python_program(
        &mut self,
        t: &mut dyn Transport,
        req: &ExecRequest,
    ) -> Result<Result<pump::Finish, Failure>, TransportError> {
        let mut worker = match self.fresh_worker(Language::Python) {
            Ok(w) => w,
            Err(f) => return Ok(Err(f)),
        };
        let args: Vec<&[u8]> = req
            .argv
            .iter()
            .skip(1)
            .map(|a| a.as_encoded_bytes())
            .collect();
        let env: Vec<(&[u8], &[u8])> = req
            .env
            .iter()
            .map(|(k, v)| (k.as_encoded_bytes(), v.as_encoded_bytes()))
            .collect();
        let message = worker::encode_request(&WorkRequest {
            mode: Mode::Program,
            keep: false,
            reseed: true,
            code: req.argv.first().map_or(&b""[..], |a| a.as_encoded_bytes()),
            args: &args,
            env: &env,
            cwd: req
                .cwd
                .as_deref()
                .map_or(&b""[..], |p| p.as_os_str().as_encoded_bytes()),
            user: req.user,
        });
        if let Err(e) = worker.send(&message) {
            return Ok(Err(spawn_failed(e)));
        }
        let (mut run, stdio) = worker.run(false);
        let finished = pump::pump(t, &mut run, stdio, &req.stdin, req.timeout, self.tap())?;
        self.retire(worker);
        Ok(finished)
    }

    /// Keeps a worker whose run has finished until the next request, or
    /// drops it if it has exited.
    fn retire(&mut self, worker: Worker) {
        if worker.lingers() {
            self.lingering.push(worker);
        }
    }
}

/// Readies a spare before the snapshot: warms a Python worker (see
/// `zygote.py`; other workers warm themselves as they start), makes its
/// memory its own (`private.rs`), and stops a Node.js one until taken (see
/// [`Worker::pause`]; a Python worker waits in a read, and stopping it would
/// wake the zygote, whose SIGCHLD handler hears of stops).
fn warm_up(mut worker: Worker) -> io::Result<Worker> {
    if worker.language() != Language::Python {
        private::privatize(worker.pid())?;
        worker.pause()?;
        return Ok(worker);
    }
    let message = worker::encode_request(&WorkRequest {
        mode: Mode::WarmUp,
        keep: true,
        reseed: true,
        code: b"pass",
        args: &[],
        env: &[],
        cwd: b"",
        user: None,
    });
    worker.warm_up(&message, WARM_UP_TIMEOUT)?;
    private::privatize(worker.pid())?;
    Ok(worker)
}

fn spawn_failed(e: io::Error) -> Failure {
    Failure::new(
        AgentErrorCode::SpawnFailed,
        format!("cannot start the program: {e}"),
    )
}

/// The language's name as users write it.
fn language_name(language: Language) -> &'static str {
    match language {
        Language::Python => "python",
        Language::JavaScript => "javascript",
        Language::Bash => "bash",
    }
}

fn unsupported(language: Language) -> Failure {
    let what = match language {
        Language::Python => "no Python interpreter",
        Language::JavaScript => "no Node.js (add it to the template's image)",
        Language::Bash => "no shell (add one to the template's image)",
    };
    Failure::new(
        AgentErrorCode::Unsupported,
        format!("this agent has {what}"),
    )
}
