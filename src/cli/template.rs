//! `zeroboot template build SPEC [-o FILE]`: a template from a spec, saved
//! to a file (`template.load {path}` loads it); `zeroboot template inspect
//! FILE`: what a template file holds, from its header alone (no KVM).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Subcommand;
use zeroboot::engine::{CancelToken, Engine};
use zeroboot::image::spec_image::SpecBuildOptions;
use zeroboot::spec::Spec;

use super::{EngineArgs, report};

#[derive(Subcommand, Debug)]
pub enum TemplateCommand {
    /// Build a template from a spec (zeroboot.toml) and save it.
    Build(BuildArgs),
    /// Show what a template file holds: base, packages with versions,
    /// preloads, memory, sizes, the spec it came from.
    Inspect {
        /// A template file.
        file: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The spec (TOML, or JSON when it ends in .json).
    spec: PathBuf,
    /// Where to save the template (default: the spec's name with .zbt, here).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Image cache directory (default: $ZEROBOOT_CACHE/image, else ~/.cache/zeroboot/image).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// A prebuilt static agent binary (default: $ZEROBOOT_AGENT, else built from this source tree).
    #[arg(long)]
    agent: Option<PathBuf>,
}

pub fn main(cmd: TemplateCommand) -> ExitCode {
    let result = match cmd {
        TemplateCommand::Build(a) => build(a),
        TemplateCommand::Inspect { file } => inspect(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(e.as_ref());
            ExitCode::FAILURE
        }
    }
}

fn default_output(spec: &Path) -> PathBuf {
    let stem = spec.file_stem().unwrap_or_else(|| "template".as_ref());
    PathBuf::from(stem).with_extension("zbt")
}

fn build(a: BuildArgs) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let spec = Spec::load(&a.spec)?;
    let engine = Engine::new(a.engine.config())?;
    let opts = SpecBuildOptions {
        cache_dir: a.cache_dir,
        agent: a.agent,
        no_programs: false,
    };
    let mut bar = super::progress::Renderer::default();
    let cancel = CancelToken::new();
    let built = engine.build_from_spec(&spec, &opts, &mut |p| bar.show(p), &cancel);
    bar.finish();
    let built = built?;
    let output = a.output.unwrap_or_else(|| default_output(&a.spec));
    let bytes = engine.save_template(&built.info.template, &output, &cancel)?;
    engine.shutdown();
    println!(
        "{}",
        serde_json::json!({
            "file": output,
            "file_bytes": bytes,
            "memory_bytes": built.info.memory_bytes,
            "image_cached": built.image_cached,
            "build_ms": started.elapsed().as_millis() as u64,
            "python": built.manifest.python,
            "debian": built.manifest.debian,
        })
    );
    Ok(())
}

fn inspect(file: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let info = Engine::inspect_file(file)?;
    let mut out = serde_json::json!({
        "file": file,
        "file_bytes": info.file_bytes,
        "memory_mib": info.memory_bytes >> 20,
    });
    match info.manifest {
        Some(m) => {
            let obj = out.as_object_mut().expect("an object");
            obj.insert("base".into(), m.base.into());
            obj.insert("python".into(), serde_json::to_value(&m.python)?);
            obj.insert("debian".into(), serde_json::to_value(&m.debian)?);
            obj.insert("preload".into(), m.preload.into());
            obj.insert("initramfs_bytes".into(), m.initramfs_bytes.into());
            obj.insert("spec".into(), m.spec);
        }
        None => {
            out["spec"] = serde_json::Value::Null; // not built from a spec
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_output_is_named_after_the_spec() {
        assert_eq!(
            default_output(Path::new("/a/zeroboot.toml")),
            Path::new("zeroboot.zbt")
        );
        assert_eq!(default_output(Path::new("ml.json")), Path::new("ml.zbt"));
    }
}
