//! Writing and reading files inside a sandbox. A file moves in chunks of one
//! mailbox frame each, all inside one conversation: one deadline and one
//! cancel token for the whole file, and the guest sees a chunked write only
//! once its last chunk arrived (see `zeroboot_proto::WriteFile`). Like an
//! exec, a transfer ends on the VM's thread (`*_then`); the plain forms wait.

use std::time::Duration;

use super::converse::Done;
use super::{CancelToken, Engine, EngineError};
use crate::agent::{self, AgentError, VmLink};

impl Engine {
    /// Starts writing `data` to `path` in the sandbox with permission bits
    /// `mode`; `done` hears the end. Files over `max_file_bytes` are refused
    /// before the guest sees them.
    #[allow(clippy::too_many_arguments)]
    pub fn write_file_then(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        timeout: Option<Duration>,
        cancel: &CancelToken,
        done: Done<()>,
    ) {
        let limit = self.0.config.max_file_bytes;
        if data.len() > limit {
            return done(Err(EngineError::FileTooLarge {
                detail: format!("{} bytes exceed the {limit}-byte file limit", data.len()),
            }));
        }
        let path = path.to_string();
        self.file_call(id, timeout, cancel, done, move |link| {
            agent::write_file(link, &path, mode, &data)
        });
    }

    /// Writes a file and waits (see [`Engine::write_file_then`]).
    pub fn write_file(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        timeout: Option<Duration>,
        cancel: &CancelToken,
    ) -> Result<(), EngineError> {
        Engine::wait(self.timeout_or_default(timeout), &mut |_, _| {}, |r| {
            self.write_file_then(id, path, data, mode, timeout, cancel, r.into_done());
        })
    }

    /// Starts reading `path` from the sandbox; a file larger than
    /// `max_bytes` (at most `max_file_bytes`) is [`EngineError::FileTooLarge`].
    pub fn read_file_then(
        &self,
        id: &str,
        path: &str,
        max_bytes: usize,
        timeout: Option<Duration>,
        cancel: &CancelToken,
        done: Done<Vec<u8>>,
    ) {
        let limit = self.0.config.max_file_bytes;
        let Some(max) = u32::try_from(max_bytes).ok().filter(|_| max_bytes <= limit) else {
            return done(Err(EngineError::InvalidRequest(format!(
                "max_bytes must be at most {limit}"
            ))));
        };
        let path = path.to_string();
        self.file_call(id, timeout, cancel, done, move |link| {
            agent::read_file(link, &path, max)
        });
    }

    /// Reads a file and waits (see [`Engine::read_file_then`]).
    pub fn read_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: usize,
        timeout: Option<Duration>,
        cancel: &CancelToken,
    ) -> Result<Vec<u8>, EngineError> {
        Engine::wait(self.timeout_or_default(timeout), &mut |_, _| {}, |r| {
            self.read_file_then(id, path, max_bytes, timeout, cancel, r.into_done());
        })
    }

    /// Runs one whole file transfer as a single conversation, on the VM's
    /// thread, over a link to its agent.
    fn file_call<T: Send + 'static>(
        &self,
        id: &str,
        timeout: Option<Duration>,
        cancel: &CancelToken,
        done: Done<T>,
        transfer: impl FnOnce(&mut VmLink<'_>) -> Result<T, AgentError> + Send + 'static,
    ) {
        self.converse_then(
            id,
            self.timeout_or_default(timeout),
            cancel,
            (),
            move |vm, tpl, ()| {
                transfer(&mut VmLink {
                    vm,
                    mailbox: &tpl.layer.mailbox,
                })
            },
            move |(), result| done(result),
        );
    }

    /// Deadline of a call that names none.
    pub(crate) fn timeout_or_default(&self, t: Option<Duration>) -> Duration {
        t.unwrap_or(Duration::from_millis(self.0.config.default_timeout_ms))
    }
}
