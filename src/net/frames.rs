//! A bounded queue of Ethernet frames in one buffer allocated up front: the
//! endpoint never allocates per packet, and a guest (or a host peer) that
//! sends faster than the other side drains only fills the queue, after which
//! frames are refused and counted.
//!
//! Frames are stored back to back as a 4-byte length and the bytes. When a
//! frame does not fit before the end of the buffer, the writer leaves a wrap
//! marker (or nothing, if fewer than 4 bytes remain) and continues at the
//! start, so every stored frame is contiguous.

/// Marks "continue at the start of the buffer".
const WRAP: u32 = u32::MAX;
const LEN: usize = 4;

/// The queue.
pub struct FrameQueue {
    buf: Box<[u8]>,
    /// Where the oldest frame's length starts.
    head: usize,
    /// Where the next frame's length will go.
    tail: usize,
    /// The writer has wrapped and the reader has not: the frames are
    /// `head..` up to the marker, then `0..tail`.
    wrapped: bool,
    count: usize,
}

impl FrameQueue {
    /// A queue holding up to `capacity` bytes of frames and their lengths.
    pub fn new(capacity: usize) -> FrameQueue {
        FrameQueue {
            buf: vec![0; capacity].into_boxed_slice(),
            head: 0,
            tail: 0,
            wrapped: false,
            count: 0,
        }
    }

    /// Frames queued.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether a frame of `len` bytes would fit now.
    pub fn has_room(&self, len: usize) -> bool {
        self.place(LEN + len).is_some()
    }

    /// Where a record of `need` bytes would go, and whether writing it wraps.
    fn place(&self, need: usize) -> Option<(usize, bool)> {
        let cap = self.buf.len();
        if self.wrapped {
            return (self.head - self.tail >= need).then_some((self.tail, false));
        }
        if cap - self.tail >= need {
            Some((self.tail, false))
        } else if self.head >= need {
            Some((0, true))
        } else {
            None
        }
    }

    /// Appends a frame of `len` bytes written by `fill`; `None` (and `fill`
    /// not called) when it does not fit.
    pub fn push_with<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if self.count == 0 {
            (self.head, self.tail, self.wrapped) = (0, 0, false);
        }
        let len32 = u32::try_from(len).ok().filter(|&l| l != WRAP)?;
        let (at, wraps) = self.place(LEN + len)?;
        if wraps {
            if self.buf.len() - self.tail >= LEN {
                self.buf[self.tail..self.tail + LEN].copy_from_slice(&WRAP.to_le_bytes());
            }
            self.wrapped = true;
        }
        self.buf[at..at + LEN].copy_from_slice(&len32.to_le_bytes());
        let r = fill(&mut self.buf[at + LEN..at + LEN + len]);
        self.tail = at + LEN + len;
        self.count += 1;
        Some(r)
    }

    /// Appends a copy of `frame`; false when it does not fit.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        self.push_with(frame.len(), |b| b.copy_from_slice(frame))
            .is_some()
    }

    /// Where the oldest frame's length is, after skipping a wrap.
    fn front_at(&self) -> Option<usize> {
        if self.count == 0 {
            return None;
        }
        let at = self.head;
        let skip = self.buf.len() - at < LEN
            || (self.wrapped && self.buf[at..at + LEN] == WRAP.to_le_bytes());
        Some(if skip { 0 } else { at })
    }

    /// The oldest frame.
    pub fn front(&self) -> Option<&[u8]> {
        let at = self.front_at()?;
        let len = u32::from_le_bytes(self.buf[at..at + LEN].try_into().expect("4 bytes")) as usize;
        Some(&self.buf[at + LEN..at + LEN + len])
    }

    /// Drops the oldest frame.
    pub fn pop(&mut self) {
        let Some(at) = self.front_at() else { return };
        if at != self.head {
            self.wrapped = false;
        }
        let len = u32::from_le_bytes(self.buf[at..at + LEN].try_into().expect("4 bytes")) as usize;
        self.head = at + LEN + len;
        self.count -= 1;
        if self.count == 0 {
            (self.head, self.tail, self.wrapped) = (0, 0, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn frames_come_out_in_order_and_whole_across_the_wrap() {
        let mut q = FrameQueue::new(64);
        assert!(q.push(&[1; 20]));
        assert!(q.push(&[2; 20]));
        assert!(!q.push(&[3; 20]), "48 of 64 bytes used, 24 more do not fit");
        assert_eq!(q.front(), Some(&[1u8; 20][..]));
        q.pop();
        // 20 + 4 bytes free at the start now: the next frame wraps there.
        assert!(q.push(&[3; 20]));
        assert_eq!(q.front(), Some(&[2u8; 20][..]));
        q.pop();
        assert_eq!(q.front(), Some(&[3u8; 20][..]));
        q.pop();
        assert!(q.is_empty() && q.front().is_none());
        assert!(!q.push(&[0; 61]), "larger than the whole buffer");
        assert!(q.push(&[0; 60]));
    }

    proptest! {
        /// The queue behaves like an unbounded queue that refuses what does
        /// not fit, and never loses or corrupts a frame.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((any::<bool>(), 0usize..90), 1..400)) {
            let mut q = FrameQueue::new(256);
            let mut model: VecDeque<Vec<u8>> = VecDeque::new();
            let mut n = 0u8;
            for (push, len) in ops {
                if push {
                    n = n.wrapping_add(1);
                    let frame = vec![n; len];
                    let room = q.has_room(len);
                    prop_assert_eq!(q.push(&frame), room);
                    if room {
                        model.push_back(frame);
                    }
                } else {
                    prop_assert_eq!(q.front(), model.front().map(|f| f.as_slice()));
                    q.pop();
                    model.pop_front();
                }
                prop_assert_eq!(q.len(), model.len());
            }
            while let Some(f) = model.pop_front() {
                prop_assert_eq!(q.front(), Some(f.as_slice()));
                q.pop();
            }
            prop_assert!(q.is_empty());
        }
    }
}
