//! Host side of the agent protocol (wire format in the `zeroboot-proto`
//! crate): where a guest's mailbox is, how a request is encoded, and the
//! conversation that turns doorbells into output chunks and an exit status.
//! Every guest frame is validated: the guest is untrusted.

mod conversation;
mod error;
mod mailbox;
mod request;

pub use conversation::{ExecEnd, boot, exec, request};
pub use error::AgentError;
pub use mailbox::Mailbox;
pub use request::{ExecRequest, encode_exec, encode_read_file, encode_write_file};
pub use zeroboot_proto::{Kind, Program, Stream};
