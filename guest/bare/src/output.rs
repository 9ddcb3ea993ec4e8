//! Program output, built in place in the mailbox and sent as Output frames when
//! a frame fills up, the stream changes, or the program ends.

use zeroboot_proto::{ExitStatus, HEADER_LEN, Kind, MAX_PAYLOAD, RESUME_STOP_OUTPUT, Stream};

use crate::channel::Channel;

const DATA_START: usize = HEADER_LEN + zeroboot_proto::Output::OVERHEAD;
const CHUNK: usize = MAX_PAYLOAD - zeroboot_proto::Output::OVERHEAD;

/// Buffered output of one exec.
pub struct Output<'c> {
    chan: &'c Channel,
    stream: Stream,
    len: usize,
    stopped: bool,
}

impl<'c> Output<'c> {
    /// Starts with nothing buffered.
    pub fn new(chan: &'c Channel) -> Self {
        Output {
            chan,
            stream: Stream::Stdout,
            len: 0,
            stopped: false,
        }
    }

    /// The channel the output goes through.
    pub fn channel(&self) -> &'c Channel {
        self.chan
    }

    /// True once the host asked for no more output.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Appends bytes to a stream.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) {
        if stream != self.stream {
            self.flush();
            self.stream = stream;
        }
        while !data.is_empty() && !self.stopped {
            let n = data.len().min(CHUNK - self.len);
            let at = DATA_START + self.len;
            self.chan.mailbox()[at..at + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == CHUNK {
                self.flush();
            }
        }
    }

    /// Ends the exec: the exit status goes out in one frame with whatever is
    /// still buffered when it fits (one exit instead of two), else after it.
    pub fn finish(mut self, code: i32) {
        let status = ExitStatus {
            code,
            signal: 0,
            flags: 0,
        };
        let (len, at) = (self.len, ExitStatus::OUTPUT_TAIL_OFFSET);
        if self.stopped || len == 0 || HEADER_LEN + at + len > zeroboot_proto::MAILBOX_SIZE {
            self.flush();
            self.chan.send(Kind::Exit, |w| status.encode(w));
            return;
        }
        let stream = self.stream as u32;
        let mailbox = self.chan.mailbox();
        mailbox.copy_within(DATA_START..DATA_START + len, HEADER_LEN + at);
        // The data already sits where the tail's bytes go; write what precedes it.
        self.chan.send(Kind::Exit, |w| {
            status.encode(w)?;
            w.u32(stream)?;
            w.u32(len as u32)?;
            w.skip(len)
        });
    }

    /// Sends what is buffered, if anything, and obeys the host's answer.
    pub fn flush(&mut self) {
        if self.len == 0 || self.stopped {
            self.len = 0;
            return;
        }
        let stream = self.stream as u32;
        let len = self.len;
        // The data already sits after the stream id; only the prefix is written.
        self.chan.send(Kind::Output, |w| {
            w.u32(stream)?;
            w.skip(len)
        });
        self.len = 0;
        if self.chan.resume_flags() & RESUME_STOP_OUTPUT != 0 {
            self.stopped = true;
        }
    }
}
