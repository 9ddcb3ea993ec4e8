//! Why an image build failed.

use std::path::PathBuf;

/// Errors of [`super::build`]. Each message says what to do about it where
/// there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The host has no apt: Debian's packages cannot be fetched.
    #[error(
        "apt-get and dpkg-deb not found: zeroboot fetches Debian bookworm's packages with the \
         host's apt on its own configuration (any Debian or Ubuntu host has both); \
         or pass your own --kernel and --initramfs"
    )]
    NoApt,
    /// `apt-get update` on zeroboot's configuration failed.
    #[error(
        "cannot fetch Debian bookworm's package lists (network? ZEROBOOT_DEBIAN_MIRROR?): {detail}"
    )]
    DebianUpdate {
        /// What apt said.
        detail: String,
    },
    /// apt cannot satisfy the requested Debian packages.
    #[error("Debian bookworm cannot provide {packages}: {detail}")]
    DebianUnresolvable {
        /// The packages asked for.
        packages: String,
        /// What apt said.
        detail: String,
    },
    /// A Debian package could not be downloaded.
    #[error("downloading Debian packages failed: {detail}")]
    DebianDownload {
        /// What apt said.
        detail: String,
    },
    /// A user-supplied file does not exist.
    #[error("{what} {path} does not exist")]
    Missing {
        /// Which input.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// A helper program could not run or failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line, for the user to retry.
        command: String,
        /// Exit status and stderr, or the spawn error.
        detail: String,
    },
    /// A package lacks a file the image needs.
    #[error("{package} has no {what}")]
    PackageContents {
        /// The package.
        package: String,
        /// What was looked for.
        what: &'static str,
    },
    /// `ldd` could not resolve a library the guest's Python needs.
    #[error(
        "{binary} needs {library}, which this host lacks (install the Debian package providing it)"
    )]
    MissingLibrary {
        /// The ELF file that needs it.
        binary: PathBuf,
        /// The soname.
        library: String,
    },
    /// The agent binary is not statically linked: it would not start as `/init`.
    #[error(
        "agent {0} is dynamically linked; build it with RUSTFLAGS=\"-C target-feature=+crt-static\""
    )]
    AgentNotStatic(PathBuf),
    /// No agent was given and its source tree is not next to this binary.
    #[error(
        "no agent binary: pass --agent PATH (a static zeroboot-agent), or run from the zeroboot source tree"
    )]
    NoAgentSource,
    /// The build needs a program, and the caller may start none (a worker
    /// under its seccomp filter).
    #[error(
        "{step} needs programs (apt, uv, cargo) that this worker may not start under its \
         seccomp filter: build the image beforehand with `zeroboot image build --spec FILE` \
         (the same cache) and set ZEROBOOT_AGENT, or run the worker with --no-seccomp"
    )]
    ProgramsRefused {
        /// What needed them.
        step: &'static str,
    },
    /// No cache directory could be chosen.
    #[error("no cache directory: set ZEROBOOT_CACHE or HOME")]
    NoCacheDir,
    /// The base image is not a readable OCI layout or docker save archive.
    #[error("{path} is not a usable OCI image: {detail}")]
    OciInvalid {
        /// The image given.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A layer could not be applied (a name escaping the root, a bad link,
    /// a broken tar).
    #[error("layer {layer}")]
    Layer {
        /// The layer file.
        layer: PathBuf,
        /// Why.
        #[source]
        source: super::layers::LayerError,
    },
    /// No uv to resolve `python.packages` with.
    #[error(
        "python.packages needs uv (a Python package resolver): `pip install uv`, or set ZEROBOOT_UV"
    )]
    NoUv,
    /// A requirement exists but has no wheel the guest's Python can use.
    #[error(
        "{requirement} has no wheel for the guest (cp311, manylinux x86_64, glibc 2.36): {detail}"
    )]
    PythonNoWheel {
        /// The requirement.
        requirement: String,
        /// What the resolver said.
        detail: String,
    },
    /// The requirements cannot be satisfied.
    #[error("cannot resolve python.packages{}: {detail}", requirement.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    PythonUnresolvable {
        /// The requirement that fails on its own, when one does.
        requirement: Option<String>,
        /// What the resolver said.
        detail: String,
    },
    /// The image would not fit the spec's memory.
    #[error(
        "the image ({image_mib} MiB) needs {needed_mib} MiB of guest memory; memory_mib is {memory_mib}"
    )]
    ImageTooLarge {
        /// The initramfs size.
        image_mib: u64,
        /// The spec's memory.
        memory_mib: u32,
        /// What the image needs.
        needed_mib: u64,
    },
    /// The spec's (or the image's) user does not exist in the image.
    #[error("user {user:?} is not in the image's /etc/passwd (give UID:GID instead)")]
    UnknownUser {
        /// The user asked for.
        user: String,
    },
    /// `python.preload` without a Python in the image.
    #[error(
        "python.preload needs a Python in the image (/usr/bin/python3 or /usr/local/bin/python3)"
    )]
    NoPython,
    /// The build helper (a worker under its seccomp filter builds through
    /// it: [`super::helper`]) failed the build, or is gone.
    #[error("{message}")]
    Helper {
        /// The helper's error with its causes.
        message: String,
        /// Its typed data, as the worker reports it.
        data: serde_json::Value,
    },
    /// Filesystem work failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl ImageError {
    /// Wraps an I/O error with what was being done to which path.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }
}
