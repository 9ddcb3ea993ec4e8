//! Templates built from a spec: the image assembled by
//! [`crate::image::spec_image`], booted like any Linux template
//! ([`Engine::build_template`]), then, before the snapshot users fork:
//!
//! 1. **preloads checked**: the zygote imported them at boot, where a
//!    failure can only be logged (the agent has no channel before Ready); a
//!    throwaway fork imports each one that is not in `sys.modules`, so a
//!    preload that raises fails the build with its own traceback
//!    ([`EngineError::PreloadFailed`]);
//! 2. **warm-up commands** run in order in another fork (`sh -c`), output
//!    logged, the first failure ending the build with its stderr
//!    ([`EngineError::WarmupFailed`]); that fork is then captured
//!    ([`Engine::snapshot_sandbox`]) and becomes the template.
//!
//! The check has a fork of its own because it runs in a Python worker: in
//! the fork that is captured it would take the agent's warm spare (see
//! docs/run-code.md), and every fork of the template would then start its
//! first Python run by dismissing that used worker and forking a new one.
//!
//! Without warm-up commands the template stays the boot's snapshot, taken
//! at the agent's Ready. The intermediate template and sandboxes are
//! removed whatever happens; the image manifest (versions resolved, the
//! spec) rides with the template into its file.

use std::time::Duration;

use super::{
    Branching, CancelToken, Engine, EngineError, ExecRequest, Program, TemplateInfo, Unload,
};
use crate::image::progress::{Phase, Progress, Reporter};
use crate::image::spec_image::{self, Manifest, SpecBuildOptions};
use crate::spec::Spec;
use crate::vmm::Flavor;

/// How long one warm-up command or the preload check may run.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(600);
/// Stdout and stderr kept per warm-up command.
const WARMUP_OUTPUT: usize = 1 << 20;

/// Imports each listed module that the zygote did not manage to import,
/// so the exception (and traceback) of a failing preload is the check's.
const PRELOAD_CHECK: &str = "import importlib, sys\n\
for m in sys.argv[1:]:\n    if m not in sys.modules:\n        importlib.import_module(m)\n";

/// A template built from a spec.
#[derive(Debug, Clone)]
pub struct SpecTemplate {
    /// The registered template.
    pub info: TemplateInfo,
    /// What its image holds.
    pub manifest: Manifest,
    /// Whether the image came from the cache.
    pub image_cached: bool,
}

impl Engine {
    /// Builds `spec`'s image (or finds it cached), boots it, checks its
    /// preloads, runs its warm-up commands and registers the result.
    /// `cancel` stops the boot, the checks and the capture.
    pub fn build_from_spec(
        &self,
        spec: &Spec,
        opts: &SpecBuildOptions,
        progress: Reporter<'_>,
        cancel: &CancelToken,
    ) -> Result<SpecTemplate, EngineError> {
        if self.flavor() == Flavor::Pvm {
            return Err(EngineError::LinuxNeedsHardwareKvm);
        }
        let image = spec_image::build(spec, opts, progress).map_err(EngineError::Image)?;
        progress(&Progress::step(Phase::Boot, "booting the guest"));
        let booted = self.boot_template(
            &image.kernel,
            &image.initramfs,
            spec.memory_mib() as usize,
            None,
            Some(image.manifest.clone()),
            cancel,
        )?;
        let finished = self.warm_up(&booted.template, spec, progress, cancel);
        let info = match finished {
            Ok(Some(warm)) => {
                drop(self.unload_template(&booted.template, Unload::KillSandboxes));
                warm
            }
            Ok(None) => self.template_info(&self.template(&booted.template)?),
            Err(e) => {
                drop(self.unload_template(&booted.template, Unload::KillSandboxes));
                return Err(e);
            }
        };
        Ok(SpecTemplate {
            info,
            manifest: image.manifest,
            image_cached: image.cached,
        })
    }

    /// Checks the preloads in a throwaway fork of `template`, then runs
    /// the warm-up commands in another; returns the warmed template if there
    /// were commands.
    fn warm_up(
        &self,
        template: &str,
        spec: &Spec,
        progress: Reporter<'_>,
        cancel: &CancelToken,
    ) -> Result<Option<TemplateInfo>, EngineError> {
        if !spec.python.preload.is_empty() {
            let sandbox = self.fork(template)?.sandbox;
            let checked = self.check_preloads(&sandbox, spec, cancel, progress);
            drop(self.kill(&sandbox));
            checked?;
        }
        if spec.warmup.is_empty() {
            return Ok(None);
        }
        let sandbox = self.fork(template)?.sandbox;
        let result = self.run_warmup(&sandbox, spec, progress, cancel);
        drop(self.kill(&sandbox));
        result.map(Some)
    }

    fn check_preloads(
        &self,
        sandbox: &str,
        spec: &Spec,
        cancel: &CancelToken,
        progress: Reporter<'_>,
    ) -> Result<(), EngineError> {
        progress(&Progress::step(Phase::Warmup, "checking preloads"));
        let mut argv = vec![PRELOAD_CHECK.to_owned()];
        argv.extend(spec.python.preload.iter().cloned());
        let req = ExecRequest {
            argv,
            program: Program::Python,
            timeout: Some(WARMUP_TIMEOUT),
            output_cap: Some(WARMUP_OUTPUT),
            ..Default::default()
        };
        let run = self.exec(sandbox, &req, cancel, &mut |_, _| {})?;
        if run.exit_code != Some(0) {
            return Err(EngineError::PreloadFailed {
                traceback: String::from_utf8_lossy(&run.stderr).into_owned(),
            });
        }
        Ok(())
    }

    fn run_warmup(
        &self,
        sandbox: &str,
        spec: &Spec,
        progress: Reporter<'_>,
        cancel: &CancelToken,
    ) -> Result<TemplateInfo, EngineError> {
        for (i, command) in spec.warmup.iter().enumerate() {
            progress(&Progress {
                phase: Phase::Warmup,
                done: i as u64,
                total: Some(spec.warmup.len() as u64),
                message: command.clone(),
            });
            let req = ExecRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), command.clone()],
                timeout: Some(WARMUP_TIMEOUT),
                output_cap: Some(WARMUP_OUTPUT),
                ..Default::default()
            };
            let run = self.exec(sandbox, &req, cancel, &mut |_, _| {})?;
            tracing::info!(
                command,
                exit_code = ?run.exit_code,
                stdout = %String::from_utf8_lossy(&run.stdout),
                stderr = %String::from_utf8_lossy(&run.stderr),
                "warm-up command"
            );
            if run.exit_code != Some(0) || run.timed_out {
                return Err(EngineError::WarmupFailed {
                    command: command.clone(),
                    exit_code: run.exit_code,
                    stderr: String::from_utf8_lossy(&run.stderr).into_owned(),
                });
            }
        }
        progress(&Progress::step(
            Phase::Capture,
            "capturing the warmed guest",
        ));
        // A root of its own (not a branch of the boot's template, which is
        // unloaded): the template users fork shares nothing with the boot.
        self.snapshot_sandbox(sandbox, Branching::FullCopy, cancel)
    }
}
