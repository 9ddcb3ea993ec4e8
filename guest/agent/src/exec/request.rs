//! Exec and RunCode requests copied out of the frame buffer: the buffer is
//! reused for output frames while the program runs.

use crate::template::Defaults;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
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
    /// (uid, gid) the program runs as (`None`: the agent's, root).
    pub user: Option<(u32, u32)>,
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
            user: None,
        }
    }

    /// This request on top of the template's defaults: their variables
    /// first (the request's own win), their directory when it names none,
    /// their user.
    pub fn with_defaults(mut self, d: &Defaults) -> ExecRequest {
        if !d.env.is_empty() {
            let mut env = d.env.clone();
            env.append(&mut self.env);
            self.env = env;
        }
        self.cwd = self.cwd.or_else(|| d.cwd.clone());
        self.user = self.user.or(d.user);
        self
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
    /// (uid, gid) the code runs as (`None`: the agent's, root).
    pub user: Option<(u32, u32)>,
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
            user: None,
        }
    }

    /// This request on top of the template's defaults, as
    /// [`ExecRequest::with_defaults`].
    pub fn with_defaults(mut self, d: &Defaults) -> CodeRequest {
        if !d.env.is_empty() {
            let mut env: Vec<_> = d
                .env
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
            env.append(&mut self.env);
            self.env = env;
        }
        if self.cwd.is_empty()
            && let Some(cwd) = &d.cwd
        {
            self.cwd = cwd.as_os_str().as_bytes().to_vec();
        }
        self.user = self.user.or(d.user);
        self
    }

    /// The environment as borrowed pairs.
    pub fn env_pairs(&self) -> Vec<(&[u8], &[u8])> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_first_and_the_request_wins() {
        let req = ExecRequest {
            clock_ns: 0,
            seed: [0; 32],
            timeout: None,
            program: Program::Argv,
            argv: vec!["env".into()],
            env: vec![("A".into(), "request".into())],
            cwd: None,
            stdin: Vec::new(),
            user: None,
        };
        let d = Defaults {
            env: vec![("A".into(), "default".into()), ("B".into(), "b".into())],
            cwd: Some("/work".into()),
            user: Some((1000, 1000)),
        };
        let r = req.clone().with_defaults(&d);
        assert_eq!(r.env.last(), Some(&("A".into(), "request".into())));
        assert_eq!(r.env.len(), 3);
        assert_eq!(r.cwd, Some("/work".into()));
        assert_eq!(r.user, Some((1000, 1000)));
        let own = ExecRequest {
            cwd: Some("/tmp".into()),
            ..req
        };
        assert_eq!(own.with_defaults(&d).cwd, Some("/tmp".into()));
        let code = CodeRequest {
            clock_ns: 0,
            seed: [0; 32],
            timeout: None,
            language: Language::Python,
            vm_id: 1,
            context: Vec::new(),
            code: b"1".to_vec(),
            env: vec![(b"A".to_vec(), b"request".to_vec())],
            cwd: Vec::new(),
            user: None,
        };
        let c = code.with_defaults(&d);
        assert_eq!(c.env.first(), Some(&(b"A".to_vec(), b"default".to_vec())));
        assert_eq!(c.env.last(), Some(&(b"A".to_vec(), b"request".to_vec())));
        assert_eq!(c.cwd, b"/work");
        assert_eq!(c.user, Some((1000, 1000)));
    }
}
