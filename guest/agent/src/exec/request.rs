//! Exec and RunCode requests copied out of the frame buffer: the buffer is
//! reused for output frames while the program runs.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;
use zeroboot_proto::{Exec, Language, Program, RunCode};

/// An owned [`Exec`].
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// Host wall clock at send time (ns since the epoch).
    pub clock_ns: u64,
    /// Host randomness for the guest's entropy pools.
    pub seed: [u8; 32],
    /// In-guest deadline.
    pub timeout: Option<Duration>,
    /// Argv or Python.
    pub program: Program,
    /// Program and arguments (Python source first for [`Program::Python`]).
    pub argv: Vec<OsString>,
    /// Variables set on top of the agent's environment.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory (`None`: the agent's own).
    pub cwd: Option<PathBuf>,
    /// Bytes fed to standard input, then closed.
    pub stdin: Vec<u8>,
}

fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

impl ExecRequest {
    /// Copies a decoded exec payload.
    pub fn from_wire(e: &Exec<'_>) -> ExecRequest {
        ExecRequest {
            clock_ns: e.clock_ns,
            seed: e.seed,
            timeout: (e.timeout_ms > 0).then(|| Duration::from_millis(e.timeout_ms.into())),
            program: e.program,
            argv: e.argv.iter().map(os).collect(),
            env: e.env_pairs().map(|(k, v)| (os(k), os(v))).collect(),
            cwd: (!e.cwd.is_empty()).then(|| PathBuf::from(os(e.cwd))),
            stdin: e.stdin.to_vec(),
        }
    }
}

/// An owned [`RunCode`].
#[derive(Debug, Clone)]
pub struct CodeRequest {
    /// Host wall clock at send time (ns since the epoch).
    pub clock_ns: u64,
    /// Host randomness for the guest's entropy pools.
    pub seed: [u8; 32],
    /// In-guest deadline.
    pub timeout: Option<Duration>,
    /// What the code is written in.
    pub language: Language,
    /// The VM's identity (see [`RunCode::vm_id`]).
    pub vm_id: u64,
    /// The persistent context (empty: a fresh interpreter).
    pub context: Vec<u8>,
    /// The source.
    pub code: Vec<u8>,
    /// Variables set before the code runs.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Working directory (empty: unchanged).
    pub cwd: Vec<u8>,
}

impl CodeRequest {
    /// Copies a decoded RunCode payload.
    pub fn from_wire(r: &RunCode<'_>) -> CodeRequest {
        CodeRequest {
            clock_ns: r.clock_ns,
            seed: r.seed,
            timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms.into())),
            language: r.language,
            vm_id: r.vm_id,
            context: r.context.to_vec(),
            code: r.code.to_vec(),
            env: r
                .env_pairs()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
            cwd: r.cwd.to_vec(),
        }
    }

    /// The environment as borrowed pairs.
    pub fn env_pairs(&self) -> Vec<(&[u8], &[u8])> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect()
    }
}
