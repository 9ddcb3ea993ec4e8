//! An exec request copied out of the frame buffer: the buffer is reused for
//! output frames while the program runs.

use crate::template::Defaults;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;
use zeroboot_proto::{Exec, Program};

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
    }
}
