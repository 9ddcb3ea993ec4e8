//! How frames travel between the agent and the host.
//!
//! Every transport owns one frame buffer. The agent encodes a frame at its
//! start and calls [`Transport::exchange`]; when that returns, the host's next
//! frame sits at the start of the same buffer. This is exactly the shape of
//! zeroboot's own VMM (a mailbox in guest memory and one port write per
//! message: the write returns when the reply is in place), and a byte stream
//! (serial port, pipe) simply emulates it with a write followed by a read.

mod mailbox;
mod pagemap;
mod serial;
mod stream;

pub use mailbox::Mailbox;
pub use serial::open_serial;
pub use stream::Stream;

use std::{fmt, io};
use zeroboot_proto::{Header, WireError};

/// A channel to the host.
pub trait Transport {
    /// The frame buffer, [`zeroboot_proto::MAILBOX_SIZE`] bytes long.
    fn buf(&mut self) -> &mut [u8];

    /// Sends the `len`-byte frame at the start of [`Transport::buf`] and waits
    /// for the host's next frame, which then starts the buffer.
    fn exchange(&mut self, len: usize) -> Result<Header, TransportError>;
}

/// Why a transport failed.
#[derive(Debug)]
pub enum TransportError {
    /// The host closed the channel (end of a stream).
    Closed,
    /// Reading or writing the channel failed.
    Io(io::Error),
    /// The host sent an invalid frame header.
    Wire(WireError),
    /// Nothing answered the doorbell: the mailbox still holds the agent's
    /// own frame (not running in zeroboot's VMM?).
    NoHost,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Closed => write!(f, "the host closed the channel"),
            TransportError::Io(e) => write!(f, "channel i/o failed: {e}"),
            TransportError::Wire(e) => write!(f, "host sent a bad frame: {e}"),
            TransportError::NoHost => write!(
                f,
                "nothing answered the mailbox doorbell; outside zeroboot's VMM, boot with \
                 zeroboot.transport=serial:/dev/ttyS1"
            ),
        }
    }
}

impl From<io::Error> for TransportError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            TransportError::Closed
        } else {
            TransportError::Io(e)
        }
    }
}
