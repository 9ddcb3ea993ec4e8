//! Each call to its engine call, and the thread it runs on. The reader
//! thread calls [`dispatch`] for every parsed call; one match says, per
//! method, what happens:
//!
//! - **on the reader, at once**: calls that cost microseconds (`worker.ping`,
//!   `worker.info`, `rpc.discover`, `sandbox.kill`, `sandbox.list`,
//!   `template.list`, `template.unload`, `shutdown`, and a fork that finds a
//!   pooled VM). No thread is woken: the answer is written before the next
//!   message is read.
//! - **on the sandbox's VM thread**: execs, runs and file transfers are
//!   handed to the engine, which runs them where the guest runs; the VM
//!   thread writes the answer when the guest is done.
//! - **on the slow-work pool** ([`pool`](super::pool)): anything that may
//!   take long on the calling thread (and `sandbox.run_code`, which waits
//!   for its guest there: see [`code`](super::code)).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use super::code;
use super::errors;
use super::framing::Framing;
use super::info;
use super::methods::Call;
use super::output::{Streamer, WireSink};
use super::params::*;
use super::reply::Reply;
use super::session::Session;
use crate::engine::{
    self, Branching, CancelToken, DEFAULT_LINUX_MEMORY_MIB, Engine, EngineError, Unload,
};

/// Runs `call` and answers through `reply`, now or later.
pub fn dispatch(s: &Arc<Session>, framing: Framing, call: Call, reply: Reply) {
    match call {
        Call::WorkerPing(Empty {}) => reply.ok(&Empty {}),
        Call::WorkerInfo(Empty {}) => reply.ok(&info::worker_info(s, framing)),
        Call::RpcDiscover(Empty {}) => reply.ok(info::openrpc()),
        Call::Shutdown(Empty {}) => {
            s.shutting_down.store(true, Ordering::SeqCst);
            s.pool.close();
            if let Ok(engine) = &s.engine {
                engine.shutdown();
            }
            reply.ok(&());
        }
        Call::Exit(_) | Call::CancelRequest(_) => {
            // Notifications only; the session acts on them as such.
            reply.err(errors::method_not_found(call.method()));
        }
        Call::TemplateList(Empty {}) => with_engine(s, reply, |e, reply| {
            reply.ok(&TemplateList {
                templates: e.list_templates().into_iter().map(Into::into).collect(),
            });
        }),
        Call::TemplateUnload(p) => with_engine(s, reply, |e, reply| {
            let how = match (p.force, p.keep_sandboxes) {
                (false, false) => Unload::IfUnused,
                (true, false) => Unload::KillSandboxes,
                (false, true) => Unload::KeepSandboxes,
                (true, true) => {
                    return reply.err(errors::invalid_params(
                        "give at most one of `force` or `keep_sandboxes`",
                    ));
                }
            };
            let killed = e.unload_template(&p.template, how);
            answer(
                reply,
                killed.map(|killed| Unloaded {
                    template: p.template,
                    killed,
                }),
            );
        }),
        Call::SandboxKill(p) => with_engine(s, reply, |e, reply| match e.kill(&p.sandbox) {
            // Answer first; then hand the VM over to be recycled.
            Ok(killed) => {
                reply.ok(&Empty {});
                drop(killed);
            }
            Err(err) => answer::<Empty>(reply, Err(err)),
        }),
        Call::SandboxList(p) => with_engine(s, reply, |e, reply| {
            let mut sandboxes = e.list_sandboxes();
            if let Some(t) = &p.template {
                sandboxes.retain(|s| &s.template == t);
            }
            reply.ok(&SandboxListResult {
                sandboxes: sandboxes.into_iter().map(Into::into).collect(),
            });
        }),
        Call::TemplateLoad(p) => with_engine(s, reply, |e, reply| {
            type Load =
                Box<dyn FnOnce(&CancelToken) -> Result<engine::TemplateInfo, EngineError> + Send>;
            let load: Load = match (p.builtin, p.path, p.memory_mib) {
                (Some(name), None, mib) => Box::new(move |_| e.load_builtin_sized(&name, mib)),
                (None, Some(path), None) => {
                    Box::new(move |cancel| e.load_file(Path::new(&path), cancel))
                }
                (None, Some(_), Some(_)) => {
                    return reply.err(errors::invalid_params(
                        "`memory_mib` is for built-in templates: a file says its own size",
                    ));
                }
                _ => {
                    return reply.err(errors::invalid_params(
                        "give exactly one of `builtin` or `path`",
                    ));
                }
            };
            slow(s, reply, move |reply| {
                let loaded = load(reply.cancel_token());
                answer(reply, loaded.map(TemplateInfo::from));
            });
        }),
        Call::TemplateBuild(p) => {
            with_engine(s, reply, |e, reply| match (p.kernel, p.initramfs, p.spec) {
                (None, None, Some(spec)) if p.memory_mib.is_none() && p.cmdline.is_none() => {
                    slow(s, reply, move |reply| build_from_spec(&e, &spec, reply));
                }
                (Some(kernel), Some(initramfs), None) => slow(s, reply, move |reply| {
                    let built = e.build_template(
                        Path::new(&kernel),
                        Path::new(&initramfs),
                        p.memory_mib.unwrap_or(DEFAULT_LINUX_MEMORY_MIB),
                        p.cmdline.as_deref(),
                        reply.cancel_token(),
                    );
                    answer(reply, built.map(TemplateInfo::from));
                }),
                _ => reply.err(errors::invalid_params(
                    "give `kernel` and `initramfs` (with `memory_mib`, `cmdline`), or `spec` alone",
                )),
            })
        }
        Call::TemplateSave(p) => with_engine(s, reply, |e, reply| {
            slow(s, reply, move |reply| {
                let saved = e.save_template(&p.template, Path::new(&p.path), reply.cancel_token());
                answer(
                    reply,
                    saved.map(|bytes| Saved {
                        template: p.template,
                        path: p.path,
                        bytes,
                    }),
                );
            });
        }),
        Call::SandboxFork(p) => with_engine(s, reply, |e, reply| {
            let opts = fork_options(p.network, p.memory_limit_mib);
            fork(s, e, p.template, p.count, opts, reply);
        }),
        Call::SandboxExec(p) => with_engine(s, reply, |e, reply| {
            let (exec, (sandbox,)) = p.into_exec();
            let (stream, encoding) = (exec.stream, exec.encoding);
            let req = match exec.request() {
                Ok(r) => r,
                Err(err) => return reply.err(err),
            };
            let cancel = reply.cancel_token().clone();
            let streamer =
                stream.then(|| Streamer::new(reply.notifier(), sandbox.clone(), encoding));
            let sink = WireSink::new(streamer, move |r: Result<engine::ExecResult, _>| {
                answer(reply, r.map(|r| ExecResult::new(r, encoding)));
            });
            e.exec_then(&sandbox, &req, &cancel, sink);
        }),
        Call::SandboxRun(p) => with_engine(s, reply, |e, reply| run(s, e, p, reply)),
        Call::SandboxRunCode(p) => with_engine(s, reply, |e, reply| {
            slow(s, reply, move |reply| code::run_code(&e, p, reply));
        }),
        Call::SandboxContexts(p) => with_engine(s, reply, |e, reply| {
            slow(s, reply, move |reply| {
                answer(reply, e.contexts(&p.sandbox).map(ContextList::from));
            });
        }),
        Call::SandboxStats(p) => with_engine(s, reply, |e, reply| {
            slow(s, reply, move |reply| {
                answer(reply, e.stats(&p.sandbox).map(SandboxStats::from));
            });
        }),
        Call::SandboxSnapshot(p) => with_engine(s, reply, |e, reply| {
            slow(s, reply, move |reply| {
                let how = if p.full_copy {
                    Branching::FullCopy
                } else {
                    Branching::Layer
                };
                let branched = e.snapshot_sandbox(&p.sandbox, how, reply.cancel_token());
                answer(reply, branched.map(TemplateInfo::from));
            });
        }),
        Call::SandboxWriteFile(p) => with_engine(s, reply, |e, reply| {
            let data = match bytes_param(p.data, p.data_base64, "data") {
                Ok(d) => d,
                Err(err) => return reply.err(err),
            };
            if p.mode > 0o7777 {
                return reply.err(errors::invalid_params("mode must be at most 0o7777 (4095)"));
            }
            let bytes = data.len();
            let cancel = reply.cancel_token().clone();
            e.write_file_then(
                &p.sandbox,
                &p.path,
                data,
                p.mode,
                None,
                &cancel,
                Box::new(move |r| answer(reply, r.map(|()| Written { bytes }))),
            );
        }),
        Call::SandboxReadFile(p) => with_engine(s, reply, |e, reply| {
            // The engine refuses a `max_bytes` over its limit.
            let max = p.max_bytes.unwrap_or(e.config().max_file_bytes);
            let cancel = reply.cancel_token().clone();
            let encoding = p.encoding;
            e.read_file_then(
                &p.sandbox,
                &p.path,
                max,
                None,
                &cancel,
                Box::new(move |r| {
                    answer(
                        reply,
                        r.map(|data| FileContent {
                            data: super::output::encode(&data, encoding),
                            encoding,
                            bytes: data.len(),
                        }),
                    );
                }),
            );
        }),
    }
}

/// `sandbox.fork`: one fork from the pool on this thread (or a cold fork on
/// the pool), or `count` forks on the pool.
fn fork(
    s: &Arc<Session>,
    e: Engine,
    template: String,
    count: Option<usize>,
    opts: engine::ForkOptions,
    reply: Reply,
) {
    match count {
        Some(count) => slow(s, reply, move |reply| {
            let start = Instant::now();
            let forked = e.fork_many_with(&template, count, &opts);
            answer(
                reply,
                forked.map(|sandboxes| ForkedMany {
                    sandboxes: sandboxes.into_iter().map(Into::into).collect(),
                    total_us: start.elapsed().as_micros() as u64,
                }),
            );
        }),
        None => fork_one(s, e, template, opts, reply, |_, forked, reply| {
            reply.ok(&Forked::from(forked));
        }),
    }
}

/// One fork of `template`: from the pool on this thread, else a cold fork on
/// the slow pool; `then` carries on with it. A failed fork is the answer.
fn fork_one(
    s: &Arc<Session>,
    e: Engine,
    template: String,
    opts: engine::ForkOptions,
    reply: Reply,
    then: impl FnOnce(&Engine, engine::Forked, Reply) + Send + 'static,
) {
    match e.fork_pooled(&template, &opts) {
        Ok(Some(forked)) => then(&e, forked, reply),
        Ok(None) => slow(s, reply, move |reply| match e.fork_with(&template, &opts) {
            Ok(forked) => then(&e, forked, reply),
            Err(err) => answer::<Empty>(reply, Err(err)),
        }),
        Err(err) => answer::<Empty>(reply, Err(err)),
    }
}

/// `template.build {spec}`: relative host paths in the spec are the
/// worker's (its working directory); progress goes out as
/// `template.progress` notifications before the answer.
fn build_from_spec(e: &Engine, spec: &serde_json::Value, reply: Reply) {
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(err) => return reply.err(errors::internal(err.to_string())),
    };
    let spec = match crate::spec::Spec::from_json(spec, &cwd) {
        Ok(spec) => spec,
        Err(err) => return answer::<Empty>(reply, Err(EngineError::Spec(err))),
    };
    let notifier = reply.notifier();
    let mut progress = |p: &crate::image::progress::Progress| {
        notifier.notify(
            "template.progress",
            BuildProgress {
                request: notifier.request().raw(),
                progress: p,
            },
        );
    };
    // A worker under its seccomp filter can start no program: its build
    // helper builds, and without one it takes the image from the cache
    // (docs/security.md).
    let opts = crate::image::spec_image::SpecBuildOptions {
        no_programs: crate::confine::worker_filtered() && crate::image::helper::running().is_none(),
        ..Default::default()
    };
    let built = e.build_from_spec(&spec, &opts, &mut progress, reply.cancel_token());
    answer(
        reply,
        built.map(|b| SpecBuilt {
            template: b.info.into(),
            manifest: b.manifest,
        }),
    );
}

/// `sandbox.run`: a fork from the pool on this thread (or a cold fork, or
/// `count` forks, on the pool), then the exec on the VM's thread, which
/// kills the sandbox and answers.
fn run(s: &Arc<Session>, e: Engine, p: SandboxRun, reply: Reply) {
    let (exec, (template, count, network, memory_limit_mib)) = p.into_exec();
    let opts = fork_options(network, memory_limit_mib);
    let (stream, encoding) = (exec.stream, exec.encoding);
    let req = match exec.request() {
        Ok(r) => r,
        Err(err) => return reply.err(err),
    };
    if let Some(count) = count {
        return slow(s, reply, move |reply| {
            let start = Instant::now();
            match e.fork_many_with(&template, count, &opts) {
                Ok(forks) => run_many(&e, forks, &req, stream, encoding, reply, start),
                Err(err) => answer::<Empty>(reply, Err(err)),
            }
        });
    }
    let one = move |e: &Engine, forked: engine::Forked, reply: Reply| {
        let cancel = reply.cancel_token().clone();
        let streamer =
            stream.then(|| Streamer::new(reply.notifier(), forked.sandbox.clone(), encoding));
        let (sandbox, fork_us) = (forked.sandbox.clone(), forked.fork_us);
        let sink = WireSink::new(streamer, move |r: Result<engine::ExecResult, _>| {
            answer(
                reply,
                r.map(|r| RunResult {
                    sandbox,
                    fork_us,
                    exec: ExecResult::new(r, encoding),
                }),
            );
        });
        e.run_then(&forked.sandbox, &req, &cancel, sink);
    };
    fork_one(s, e, template, opts, reply, one);
}

/// Runs `req` once in each of `forks`; the last run to end answers with all
/// of their outcomes.
fn run_many(
    e: &Engine,
    forks: Vec<engine::Forked>,
    req: &engine::ExecRequest,
    stream: bool,
    encoding: Encoding,
    reply: Reply,
    start: Instant,
) {
    struct Gather {
        reply: Mutex<Option<Reply>>,
        results: Mutex<Vec<RunOutcome>>,
        left: AtomicUsize,
        start: Instant,
    }
    let gather = Arc::new(Gather {
        left: AtomicUsize::new(forks.len()),
        results: Mutex::new(Vec::with_capacity(forks.len())),
        reply: Mutex::new(None),
        start,
    });
    let cancel = reply.cancel_token().clone();
    let notifier = reply.notifier();
    *gather.reply.lock().unwrap_or_else(|e| e.into_inner()) = Some(reply);
    for forked in forks {
        let streamer =
            stream.then(|| Streamer::new(notifier.clone(), forked.sandbox.clone(), encoding));
        let g = Arc::clone(&gather);
        let (sandbox, fork_us) = (forked.sandbox.clone(), forked.fork_us);
        let sink = WireSink::new(streamer, move |r: Result<engine::ExecResult, _>| {
            let outcome = match r {
                Ok(r) => RunOutcome::Ran(RunResult {
                    sandbox,
                    fork_us,
                    exec: ExecResult::new(r, encoding),
                }),
                Err(err) => RunOutcome::Failed {
                    sandbox,
                    error: errors::engine_error(&err),
                },
            };
            g.results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(outcome);
            if g.left.fetch_sub(1, Ordering::SeqCst) == 1 {
                let results =
                    std::mem::take(&mut *g.results.lock().unwrap_or_else(|e| e.into_inner()));
                if let Some(reply) = g.reply.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    reply.ok(&RunMany {
                        results,
                        total_us: g.start.elapsed().as_micros() as u64,
                    });
                }
            }
        });
        e.run_then(&forked.sandbox, req, &cancel, sink);
    }
}

/// Runs `f` with the engine, or answers that KVM is unavailable.
fn with_engine(s: &Arc<Session>, reply: Reply, f: impl FnOnce(Engine, Reply)) {
    match &s.engine {
        Ok(e) => f(e.clone(), reply),
        Err(detail) => reply.err(errors::kvm_unavailable(detail)),
    }
}

/// Hands `work` to the slow-work pool.
fn slow(s: &Arc<Session>, reply: Reply, work: impl FnOnce(Reply) + Send + 'static) {
    s.pool.submit(reply, work);
}

/// Answers with an engine call's outcome.
pub(super) fn answer<T: Serialize>(reply: Reply, r: Result<T, EngineError>) {
    reply.result(r.map_err(|e| errors::engine_error(&e)));
}
