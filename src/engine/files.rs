//! Writing and reading files inside a sandbox (agents that support it; the
//! bare guest answers "unsupported"). A file travels in one frame, so its size
//! is capped by the guest's mailbox.

use std::time::Duration;

use super::{CancelToken, Engine, EngineError};
use crate::agent::{self, Kind};

impl Engine {
    /// Writes `data` to `path` in the sandbox with permission bits `mode`.
    pub fn write_file(
        &self,
        id: &str,
        path: &str,
        data: &[u8],
        mode: u32,
        timeout: Option<Duration>,
    ) -> Result<(), EngineError> {
        let frame = agent::encode_write_file(path, mode, data).map_err(EngineError::from_agent)?;
        self.converse(
            id,
            self.timeout_or_default(timeout),
            &CancelToken::new(),
            &mut |_, _| {},
            Box::new(move |vm, tpl, _| {
                agent::request(vm, &tpl.mailbox, &frame, Kind::Done).map(drop)
            }),
        )
    }

    /// Reads `path` from the sandbox; a file larger than `max_bytes` is an error.
    pub fn read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: u32,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, EngineError> {
        let frame = agent::encode_read_file(path, max_bytes).map_err(EngineError::from_agent)?;
        self.converse(
            id,
            self.timeout_or_default(timeout),
            &CancelToken::new(),
            &mut |_, _| {},
            Box::new(move |vm, tpl, _| agent::request(vm, &tpl.mailbox, &frame, Kind::FileData)),
        )
    }
}
