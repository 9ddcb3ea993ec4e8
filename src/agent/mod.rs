//! Host side of the agent protocol (wire format in the `zeroboot-proto`
//! crate): where a guest's mailbox is, how a request is encoded, and the
//! conversation that turns doorbells into output chunks and an exit status
//! (or, for code, a result and an error), and the chunked transfer that moves
//! files larger than one frame.
//! Every guest frame is validated: the guest is untrusted.

mod conversation;
mod error;
mod mailbox;
mod network;
mod request;
mod transfer;

pub use conversation::{
    CodeFailure, ContextInfo, ExecEnd, RunEnd, boot, exec, list_contexts, run_code,
};
pub use error::AgentError;
pub use mailbox::Mailbox;
pub use network::{FramePort, net_up};
pub use request::{CodeRequest, ExecRequest, encode_exec, encode_run_code};
pub use transfer::{FrameLink, VmLink, read_file, write_file};
pub use zeroboot_proto::{AgentErrorCode, Kind, Language, NetLink, NetUp, Program, Stream};
