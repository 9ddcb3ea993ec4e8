//! `python.packages`: resolved and installed on the host, for the guest's
//! exact Python, by uv (a maintained resolver and installer; zeroboot does
//! not resolve requirements itself). uv is told the target, not asked to
//! guess it from the host: CPython 3.11 (`--python-version`), manylinux
//! x86_64 up to glibc 2.36, Debian bookworm's (`--python-platform
//! x86_64-manylinux_2_36`), wheels only (`--only-binary :all:`: nothing is
//! compiled on the host for the guest). Downloads stay in uv's cache under
//! zeroboot's cache directory.
//!
//! When the resolution fails, each requirement is resolved again on its
//! own (`--no-deps`), for the guest and then for any Python on any platform
//! (`--universal`): the first that fails for the guest but exists for
//! someone has no wheel for the guest ([`ImageError::PythonNoWheel`]); one
//! that exists for no one is [`ImageError::PythonUnresolvable`], as is a set
//! whose members are each fine alone (conflicting versions, a dependency
//! without a wheel), with uv's explanation.
//!
//! uv is found as `$ZEROBOOT_UV`, else `uv` on `PATH`, else
//! `<cache root>/bin/uv` (where `scripts/setup` puts the pinned uv of
//! `scripts/requirements-tools.txt`, in a virtual environment of its own:
//! never the system interpreter), else `python3 -m uv`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ImageError, command};
use crate::spec::PythonSpec;

/// The guest's interpreter version.
pub const PYTHON_VERSION: &str = "3.11";
/// The guest's platform: x86_64, glibc 2.36 (Debian bookworm).
pub const PLATFORM: &str = "x86_64-manylinux_2_36";
/// Where installed packages go in the guest (on Debian's `sys.path`).
pub const SITE: &str = "usr/local/lib/python3.11/dist-packages";

/// A package as installed, with its exact version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Installed {
    /// Its name, as its metadata spells it.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// How to run uv here.
fn uv() -> Result<Command, ImageError> {
    if let Some(path) = std::env::var_os("ZEROBOOT_UV").filter(|p| !p.is_empty()) {
        return Ok(Command::new(path));
    }
    if command::exists("uv") {
        return Ok(Command::new("uv"));
    }
    if let Some(tool) = super::cache::root()
        .ok()
        .map(|r| r.join("bin").join("uv"))
        .filter(|p| p.is_file())
    {
        return Ok(Command::new(tool));
    }
    let module = Command::new("python3")
        .args(["-m", "uv", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if module {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "uv"]);
        return Ok(cmd);
    }
    Err(ImageError::NoUv)
}

/// Whom a resolution is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The guest's Python and platform.
    Guest,
    /// Any Python on any platform (`--universal`): does it exist at all?
    Anyone,
}

/// `uv pip SUBCOMMAND` for `target` with the spec's indexes.
fn uv_pip(
    sub: &str,
    spec: &PythonSpec,
    cache: &Path,
    target: Target,
) -> Result<Command, ImageError> {
    let mut cmd = uv()?;
    cmd.args(["pip", sub]);
    match target {
        Target::Guest => cmd
            .args(["--python-version", PYTHON_VERSION])
            .args(["--python-platform", PLATFORM]),
        Target::Anyone => cmd.arg("--universal"),
    };
    cmd.arg("--cache-dir")
        .arg(cache)
        .args(["--no-progress", "--quiet", "--color", "never"])
        .env("UV_PYTHON_DOWNLOADS", "never")
        .env_remove("UV_SYSTEM_PYTHON");
    if let Some(url) = &spec.index_url {
        cmd.args(["--index-url", url]);
    }
    if let Some(dir) = &spec.find_links {
        cmd.arg("--find-links").arg(dir);
    }
    if spec.no_index {
        cmd.arg("--no-index");
    }
    Ok(cmd)
}

/// Installs `spec.packages` into `site` (a host directory that becomes
/// [`SITE`] in the guest); returns what was installed. Console scripts go
/// to `bin`, their `#!` pointed at the guest's Python.
pub fn install(
    spec: &PythonSpec,
    site: &Path,
    bin: &Path,
    cache: &Path,
) -> Result<Vec<Installed>, ImageError> {
    let mut cmd = uv_pip("install", spec, cache, Target::Guest)?;
    cmd.arg("--target")
        .arg(site)
        .args(["--only-binary", ":all:", "--link-mode", "copy", "--"])
        .args(&spec.packages);
    if let Err(e) = command::run(&mut cmd) {
        return Err(diagnose(spec, cache, e));
    }
    move_scripts(&site.join("bin"), bin)?;
    installed(site)
}

/// Classifies a failed resolution (see the module docs).
fn diagnose(spec: &PythonSpec, cache: &Path, failure: ImageError) -> ImageError {
    let detail = match failure {
        ImageError::Command { detail, .. } => detail,
        other => return other,
    };
    let alone = |requirement: &str, target: Target| {
        uv_pip("compile", spec, cache, target).and_then(|mut cmd| {
            if target == Target::Guest {
                cmd.args(["--only-binary", ":all:"]);
            }
            cmd.args(["--no-deps", "--no-header", "-"])
                .stdin(std::process::Stdio::piped());
            run_with_stdin(&mut cmd, requirement)
        })
    };
    for requirement in &spec.packages {
        match alone(requirement, Target::Guest) {
            Ok(()) => continue, // this one is fine on its own
            Err(ImageError::Command { .. }) => {}
            Err(other) => return other,
        }
        return match alone(requirement, Target::Anyone) {
            Ok(()) => ImageError::PythonNoWheel {
                requirement: requirement.clone(),
                detail,
            },
            Err(ImageError::Command { .. }) => ImageError::PythonUnresolvable {
                requirement: Some(requirement.clone()),
                detail,
            },
            Err(other) => other,
        };
    }
    ImageError::PythonUnresolvable {
        requirement: None,
        detail,
    }
}

/// Runs `cmd` with `input` on its stdin (one requirement, so the resolver
/// reads it as a requirement and never as an option).
fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<(), ImageError> {
    use std::io::Write;
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| ImageError::Command {
            command: "uv pip compile".into(),
            detail: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A resolver that exits early closes its stdin: its status says why.
        let _ = stdin.write_all(format!("{input}\n").as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| ImageError::Command {
        command: "uv pip compile".into(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ImageError::Command {
            command: "uv pip compile".into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Moves console scripts from uv's `bin` to `dest`, pointing their `#!`
/// line (the host's Python) at the guest's `/usr/bin/python3`.
fn move_scripts(from: &Path, dest: &Path) -> Result<(), ImageError> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    std::fs::create_dir_all(dest).map_err(ImageError::io("cannot create", dest))?;
    for entry in entries {
        let path = entry.map_err(ImageError::io("cannot list", from))?.path();
        let bytes = std::fs::read(&path).map_err(ImageError::io("cannot read", &path))?;
        let fixed = match bytes.strip_prefix(b"#!") {
            Some(rest)
                if rest
                    .split(|&b| b == b'\n')
                    .next()
                    .is_some_and(|l| String::from_utf8_lossy(l).contains("python")) =>
            {
                let body = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(&[][..], |i| &rest[i..]);
                [b"#!/usr/bin/python3".as_slice(), body].concat()
            }
            _ => bytes,
        };
        let target = dest.join(path.file_name().unwrap_or_default());
        std::fs::write(&target, fixed).map_err(ImageError::io("cannot write", &target))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
            .map_err(ImageError::io("cannot chmod", &target))?;
    }
    std::fs::remove_dir_all(from).map_err(ImageError::io("cannot remove", from))
}

/// The `Name:` and `Version:` of every `*.dist-info/METADATA` in `site`.
pub fn installed(site: &Path) -> Result<Vec<Installed>, ImageError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(site).map_err(ImageError::io("cannot list", site))? {
        let dir: PathBuf = entry.map_err(ImageError::io("cannot list", site))?.path();
        if dir.extension().is_none_or(|e| e != "dist-info") {
            continue;
        }
        let meta = dir.join("METADATA");
        let text = std::fs::read_to_string(&meta).map_err(ImageError::io("cannot read", &meta))?;
        let field = |key: &str| {
            text.lines()
                .take_while(|l| !l.is_empty())
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
        };
        if let (Some(name), Some(version)) = (field("Name:"), field("Version:")) {
            out.push(Installed { name, version });
        }
    }
    out.sort();
    Ok(out)
}
