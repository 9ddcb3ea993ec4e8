//! `zeroboot image build`: the Linux guest image (kernel + initramfs with the
//! agent as /init); `zeroboot image debs`: Debian bookworm packages through
//! zeroboot's own apt (what the kvm-lane fetches its QEMU, kernel and tools
//! with). Progress goes to stderr; the paths go to stdout as JSON so
//! scripts can pick them up.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use zeroboot::image::{self, BuildOptions, Profile};

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build (or reuse from the cache) a kernel and an initramfs.
    Build(BuildArgs),
    /// Fetch Debian bookworm packages through zeroboot's own apt configuration
    /// (never the host's sources) and optionally unpack them; prints JSON.
    Debs(DebsArgs),
}

#[derive(clap::Args, Debug)]
pub struct DebsArgs {
    /// Cache directory; apt's lists and downloads go to its debian/ (default:
    /// $ZEROBOOT_CACHE/image, else ~/.cache/zeroboot/image).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// With their dependency closure (Depends and Pre-Depends, as on an empty system).
    #[arg(long)]
    closure: bool,
    /// Also Debian's cloud kernel package (the one linux-image-cloud-amd64 names).
    #[arg(long)]
    kernel: bool,
    /// Unpack every package into DIR (maintainer scripts are not run).
    #[arg(long, value_name = "DIR")]
    extract: Option<PathBuf>,
    /// Package names; NAME=VERSION pins a version.
    #[arg(value_name = "PKG", required_unless_present = "kernel")]
    packages: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Image cache directory (default: $ZEROBOOT_CACHE/image, else ~/.cache/zeroboot/image).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// How much of Python's standard library to include.
    #[arg(long, value_enum, default_value_t = ProfileArg::Minimal)]
    profile: ProfileArg,
    /// A prebuilt static agent binary (default: built from this source tree).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Your own kernel (bzImage), used as is.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Your own initramfs, used as is.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Assemble the image of a template spec (zeroboot.toml) instead; prints
    /// its manifest too. `zeroboot template build` then finds it cached.
    #[arg(long, conflicts_with_all = ["profile", "kernel", "initramfs"])]
    spec: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProfileArg {
    Minimal,
    Full,
}

/// Builds the image of the spec at `path`; prints kernel, initramfs and manifest.
fn build_spec(path: &std::path::Path, a: &BuildArgs) -> ExitCode {
    let spec = match zeroboot::spec::Spec::load(path) {
        Ok(s) => s,
        Err(e) => {
            super::report(&e);
            return ExitCode::FAILURE;
        }
    };
    let opts = zeroboot::image::spec_image::SpecBuildOptions {
        cache_dir: a.cache_dir.clone(),
        agent: a.agent.clone(),
        no_programs: false,
    };
    let mut bar = super::progress::Renderer::default();
    let built = zeroboot::image::spec_image::build(&spec, &opts, &mut |p| bar.show(p));
    bar.finish();
    match built {
        Ok(img) => {
            println!(
                "{}",
                serde_json::json!({"kernel": img.kernel, "initramfs": img.initramfs, "cmdline": image::KERNEL_CMDLINE, "manifest": img.manifest})
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            super::report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Fetches (and unpacks) packages; prints each with its version and `.deb`.
fn debs(a: DebsArgs) -> ExitCode {
    let req = image::debs::DebsRequest {
        cache_dir: a.cache_dir,
        packages: a.packages,
        closure: a.closure,
        kernel: a.kernel,
        extract: a.extract,
    };
    let mut bar = super::progress::Renderer::default();
    let fetched = image::debs::fetch(&req, &mut |p| bar.show(p));
    bar.finish();
    match fetched {
        Ok(debs) => {
            let packages: Vec<_> = debs
                .iter()
                .map(|d| serde_json::json!({"name": d.package.name, "version": d.package.version, "deb": d.path}))
                .collect();
            println!(
                "{}",
                serde_json::json!({"packages": packages, "extracted": req.extract})
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            super::report(&e);
            ExitCode::FAILURE
        }
    }
}

pub fn main(cmd: ImageCommand) -> ExitCode {
    let a = match cmd {
        ImageCommand::Build(a) => a,
        ImageCommand::Debs(a) => return debs(a),
    };
    if let Some(spec) = &a.spec {
        return build_spec(spec, &a);
    }
    let opts = BuildOptions {
        cache_dir: a.cache_dir,
        profile: match a.profile {
            ProfileArg::Minimal => Profile::Minimal,
            ProfileArg::Full => Profile::Full,
        },
        agent: a.agent,
        kernel: a.kernel,
        initramfs: a.initramfs,
    };
    match image::build(&opts) {
        Ok(paths) => {
            println!(
                "{}",
                serde_json::json!({"kernel": paths.kernel, "initramfs": paths.initramfs, "cmdline": image::KERNEL_CMDLINE})
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            super::report(&e);
            ExitCode::FAILURE
        }
    }
}
