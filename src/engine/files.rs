//! Writing and reading files inside a sandbox. A file moves in chunks of one
//! mailbox frame each, all inside one conversation: one deadline and one
//! cancel token for the whole file, and the guest sees a chunked write only
//! once its last chunk arrived (see `zeroboot_proto::WriteFile`).

use std::time::Duration;

use super::{CancelToken, Engine, EngineError};
use crate::agent::{self, AgentError, VmLink};

impl Engine {
    /// Writes `data` to `path` in the sandbox with permission bits `mode`.
    /// Files over `max_file_bytes` are refused before the guest sees them.
    pub fn write_file(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        timeout: Option<Duration>,
        cancel: &CancelToken,
    ) -> Result<(), EngineError> {
        let limit = self.0.config.max_file_bytes;
        if data.len() > limit {
            return Err(EngineError::FileTooLarge {
                detail: format!("{} bytes exceed the {limit}-byte file limit", data.len()),
            });
        }
        let path = path.to_string();
        self.file_call(id, timeout, cancel, move |link| {
            agent::write_file(link, &path, mode, &data)
        })
    }

    /// Reads `path` from the sandbox; a file larger than `max_bytes` (at most
    /// `max_file_bytes`) is [`EngineError::FileTooLarge`].
    pub fn read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: usize,
        timeout: Option<Duration>,
        cancel: &CancelToken,
    ) -> Result<Vec<u8>, EngineError> {
        let limit = self.0.config.max_file_bytes;
        let max = u32::try_from(max_bytes)
            .ok()
            .filter(|_| max_bytes <= limit)
            .ok_or_else(|| {
                EngineError::InvalidRequest(format!("max_bytes must be at most {limit}"))
            })?;
        let path = path.to_string();
        self.file_call(id, timeout, cancel, move |link| {
            agent::read_file(link, &path, max)
        })
    }

    /// Runs one whole file transfer as a single conversation, on the VM's
    /// thread, over a link to its agent (no output stream).
    fn file_call<T: Send + 'static>(
        &self,
        id: &str,
        timeout: Option<Duration>,
        cancel: &CancelToken,
        transfer: impl FnOnce(&mut VmLink<'_>) -> Result<T, AgentError> + Send + 'static,
    ) -> Result<T, EngineError> {
        self.converse(
            id,
            self.timeout_or_default(timeout),
            cancel,
            &mut |_, _| {},
            Box::new(move |vm, tpl, _| {
                transfer(&mut VmLink {
                    vm,
                    mailbox: &tpl.layer.mailbox,
                })
            }),
        )
    }
}
