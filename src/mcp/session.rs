//! One MCP session: the engine, the template its sandboxes come from, and the
//! default sandbox a call without `sandbox` uses. Both are created on first
//! use (so `initialize` and `tools/list` never wait for KVM), under one lock,
//! so two first calls arriving together share one template and one sandbox.
//!
//! Engine calls block for as long as the guest runs; they run on Tokio's
//! blocking pool, and the request's cancellation (`notifications/cancelled`,
//! or the session ending) cancels the engine's token, which kicks the vCPU.

use std::sync::Arc;
use std::time::Instant;

use rmcp::service::{RequestContext, RoleServer};
use tokio::sync::Mutex;

use super::progress::Progress;
use super::{TemplateSource, ToolError};
use crate::engine::{CancelToken, Engine, EngineError};

/// The session's state (shared by every request of the connection).
pub(super) struct Session {
    engine: Result<Engine, String>,
    source: TemplateSource,
    defaults: Mutex<Defaults>,
}

/// What the session created on first use.
#[derive(Default)]
struct Defaults {
    template: Option<String>,
    sandbox: Option<String>,
}

impl Session {
    /// A session over `engine` (or the reason KVM is unavailable).
    pub fn new(engine: Result<Engine, String>, source: TemplateSource) -> Arc<Session> {
        Arc::new(Session {
            engine,
            source,
            defaults: Mutex::new(Defaults::default()),
        })
    }

    /// The engine, or why KVM is unavailable.
    pub fn engine(&self) -> Result<Engine, ToolError> {
        self.engine.clone().map_err(ToolError::KvmUnavailable)
    }

    /// Where the session's template comes from.
    pub fn source(&self) -> &TemplateSource {
        &self.source
    }

    /// The session's template and default sandbox, if created yet.
    pub async fn defaults(&self) -> (Option<String>, Option<String>) {
        let d = self.defaults.lock().await;
        (d.template.clone(), d.sandbox.clone())
    }

    /// The session's template, loaded on first use.
    pub async fn template(
        &self,
        ctx: &RequestContext<RoleServer>,
        progress: &Progress,
    ) -> Result<String, ToolError> {
        let mut d = self.defaults.lock().await;
        self.ensure_template(&mut d, ctx, progress).await
    }

    async fn ensure_template(
        &self,
        d: &mut Defaults,
        ctx: &RequestContext<RoleServer>,
        progress: &Progress,
    ) -> Result<String, ToolError> {
        if let Some(t) = &d.template {
            return Ok(t.clone());
        }
        progress
            .report(format!("loading template {}", self.source))
            .await;
        let started = Instant::now();
        let source = self.source.clone();
        let forwarder = progress.forwarder();
        let (steps, forwarding) = forwarder.unzip();
        let load = self.run(ctx, move |engine, cancel| match &source {
            TemplateSource::Builtin(name) => engine.load_builtin(name),
            TemplateSource::File(path) => engine.load_file(path, cancel),
            TemplateSource::Spec(_, spec) => {
                let mut last = String::new();
                let mut step = |p: &crate::image::progress::Progress| {
                    // One notification per new message: a download's byte
                    // counts are not worth a message each.
                    if p.message != last {
                        last.clone_from(&p.message);
                        if let Some(tx) = &steps {
                            let _ = tx.send(format!("building template: {}", p.message));
                        }
                    }
                };
                engine
                    .build_from_spec(spec, &Default::default(), &mut step, cancel)
                    .map(|built| built.info)
            }
        });
        let info = match forwarding {
            Some(forwarding) => tokio::join!(load, forwarding).0,
            None => load.await,
        }?;
        progress
            .report(format!(
                "template {} loaded in {} ms",
                self.source,
                started.elapsed().as_millis()
            ))
            .await;
        d.template = Some(info.template.clone());
        Ok(info.template)
    }

    /// The sandbox a call names, else the session's default, forked from the
    /// session's template on first use.
    pub async fn sandbox(
        &self,
        named: Option<String>,
        ctx: &RequestContext<RoleServer>,
        progress: &Progress,
    ) -> Result<String, ToolError> {
        if let Some(id) = named {
            return Ok(id);
        }
        let mut d = self.defaults.lock().await;
        if let Some(id) = &d.sandbox {
            return Ok(id.clone());
        }
        let template = self.ensure_template(&mut d, ctx, progress).await?;
        let forked = self.run(ctx, move |e, _| e.fork(&template)).await?;
        progress
            .report(format!("forked the default sandbox {}", forked.sandbox))
            .await;
        d.sandbox = Some(forked.sandbox.clone());
        Ok(forked.sandbox)
    }

    /// Runs `f` with the engine on a blocking thread; cancelling the request
    /// cancels the token `f` receives.
    pub async fn run<T: Send + 'static>(
        &self,
        ctx: &RequestContext<RoleServer>,
        f: impl FnOnce(&Engine, &CancelToken) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, ToolError> {
        let engine = self.engine()?;
        let cancel = CancelToken::new();
        let watcher = {
            let (ct, cancel) = (ctx.ct.clone(), cancel.clone());
            tokio::spawn(async move {
                ct.cancelled().await;
                cancel.cancel();
            })
        };
        let outcome = tokio::task::spawn_blocking(move || f(&engine, &cancel)).await;
        watcher.abort();
        outcome
            .map_err(|_| ToolError::ShuttingDown)?
            .map_err(ToolError::from)
    }

    /// [`Session::run`] on sandbox `id`. A failure that stops the session's
    /// default sandbox (a host deadline, a cancel, a crash) also kills it, so
    /// the next call gets a fresh one instead of an unusable one.
    pub async fn run_on<T: Send + 'static>(
        &self,
        id: &str,
        ctx: &RequestContext<RoleServer>,
        f: impl FnOnce(&Engine, &CancelToken) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, ToolError> {
        match self.run(ctx, f).await {
            Err(ToolError::Engine(cause)) if cause.breaks_sandbox() => {
                let mut d = self.defaults.lock().await;
                if d.sandbox.as_deref() != Some(id) {
                    return Err(ToolError::Engine(cause));
                }
                d.sandbox = None;
                if let Ok(engine) = self.engine() {
                    // Gone already (killed concurrently): nothing to undo.
                    let _ = engine.kill(id);
                }
                Err(ToolError::DefaultSandboxLost {
                    sandbox: id.to_string(),
                    cause,
                })
            }
            outcome => outcome,
        }
    }

    /// Kills sandbox `id`; the default sandbox is forgotten, so the next call
    /// without `sandbox` forks a fresh one. Returns at once (the engine tears
    /// the VM down off the request path).
    pub async fn kill(&self, id: &str) -> Result<(), ToolError> {
        let mut d = self.defaults.lock().await;
        self.engine()?.kill(id)?;
        if d.sandbox.as_deref() == Some(id) {
            d.sandbox = None;
        }
        Ok(())
    }

    /// Kills every sandbox and releases every template.
    pub fn shutdown(&self) {
        if let Ok(engine) = &self.engine {
            engine.shutdown();
        }
    }
}
