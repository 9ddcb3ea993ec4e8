//! Host side of the agent protocol (wire format in the `zeroboot-proto`
//! crate): where a guest's mailbox is, how a request is encoded, and the
//! conversation that turns doorbells into output chunks and an exit status,
//! and the chunked transfer that moves files larger than one frame.
//! Every guest frame is validated: the guest is untrusted.

mod conversation;
mod error;
mod mailbox;
mod network;
mod request;
mod transfer;

pub use conversation::{ExecEnd, boot, exec};
pub use error::AgentError;
pub use mailbox::Mailbox;
pub use network::{FramePort, net_up};
pub use request::{ExecRequest, encode_exec};
pub use transfer::{FrameLink, VmLink, read_file, write_file};
pub use zeroboot_proto::{AgentErrorCode, Kind, NetLink, NetUp, Program, Stream};
