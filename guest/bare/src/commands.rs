//! The commands the bare guest understands (argv form). Each one exercises a
//! host-side path: output, exit codes, entropy, clock, copy-on-write, isolation,
//! and hostile behaviour (spinning, crashing, flooding, malformed frames, stray
//! I/O, file reads answered out of protocol).

use zeroboot_proto::{Exec, Stream};

use crate::cell::Global;
use crate::files::{self, BadRead};
use crate::output::Output;
use crate::rt::{crash, inb, outb};
use crate::{rng, text};

/// Exit code for an unknown command or bad arguments, as a shell would use.
const USAGE: i32 = 127;
/// Pages `dirty` may write: from 8 MiB up to the 32 MiB the host gives the guest.
const DIRTY_BASE: usize = 8 << 20;
const DIRTY_MAX_PAGES: u64 = (24 << 20) / 4096;
/// A port and an address nothing is behind, for `badio`.
const STRAY_PORT: u16 = 0x06e0;
const STRAY_MMIO: usize = 0x3000_0000;

/// The word `poke`/`peek` use; its template value shows forks do not share writes.
static SCRATCH: Global<u64> = Global::new(0x7e57_0000_0000_0001);

/// Runs one exec and returns its exit code.
pub fn run(exec: &Exec<'_>, out: &mut Output<'_>) -> i32 {
    rng::reseed(&exec.seed);
    let mut args = exec.argv.iter();
    let Some(cmd) = args.next() else {
        out.write(Stream::Stderr, b"bare: empty argv\n");
        return USAGE;
    };
    let first = exec.argv.iter().nth(1);
    match cmd {
        b"echo" => {
            join(out, Stream::Stdout, args);
            0
        }
        b"stderr" => {
            join(out, Stream::Stderr, args);
            0
        }
        b"exit" => match first.and_then(text::parse_i64) {
            Some(code) => code as i32,
            None => usage(out, b"exit N"),
        },
        b"random" => match first.and_then(text::parse_u64) {
            Some(n) => random(out, n),
            None => usage(out, b"random N"),
        },
        b"clock" => {
            line(out, text::decimal(exec.clock_ns, &mut [0; 20]));
            0
        }
        b"dirty" => match first.and_then(text::parse_u64) {
            Some(n) if n <= DIRTY_MAX_PAGES => {
                dirty(n);
                0
            }
            _ => usage(out, b"dirty N (N <= 6144)"),
        },
        b"poke" => match first.and_then(text::parse_u64) {
            Some(v) => {
                // SAFETY: sole borrow of SCRATCH.
                unsafe { *SCRATCH.get() = v };
                0
            }
            None => usage(out, b"poke VALUE"),
        },
        b"peek" => {
            let v = match first.map(text::parse_u64) {
                // SAFETY: sole borrow of SCRATCH.
                None => unsafe { *SCRATCH.get() },
                // SAFETY: `peek ADDR` reads whatever the caller names: mapped
                // memory answers, an unmapped address faults the vCPU (by design).
                Some(Some(addr)) => unsafe { (addr as *const u64).read_volatile() },
                Some(None) => return usage(out, b"peek [ADDR]"),
            };
            line(out, &text::hex64(v));
            0
        }
        b"spin" => loop {
            core::hint::spin_loop();
        },
        b"crash" => crash(),
        b"flood" => match first.and_then(text::parse_u64) {
            Some(n) => {
                flood(out, n);
                0
            }
            None => usage(out, b"flood N"),
        },
        b"garbage" => garbage(out),
        b"badread" => match first {
            Some(b"long") => {
                files::arm(BadRead::Long);
                0
            }
            Some(b"stall") => {
                files::arm(BadRead::Stall);
                0
            }
            _ => usage(out, b"badread long|stall"),
        },
        b"badio" => badio(out),
        b"cat" => {
            out.write(Stream::Stdout, exec.stdin);
            0
        }
        b"env" => {
            for (k, v) in exec.env_pairs() {
                out.write(Stream::Stdout, k);
                out.write(Stream::Stdout, b"=");
                line(out, v);
            }
            0
        }
        b"pwd" => {
            line(out, exec.cwd);
            0
        }
        _ => {
            out.write(Stream::Stderr, b"bare: unknown command: ");
            out.write(Stream::Stderr, cmd);
            out.write(Stream::Stderr, b"\n");
            USAGE
        }
    }
}

fn line(out: &mut Output<'_>, s: &[u8]) {
    out.write(Stream::Stdout, s);
    out.write(Stream::Stdout, b"\n");
}

fn usage(out: &mut Output<'_>, what: &[u8]) -> i32 {
    out.write(Stream::Stderr, b"usage: ");
    out.write(Stream::Stderr, what);
    out.write(Stream::Stderr, b"\n");
    USAGE
}

fn join<'a>(out: &mut Output<'_>, stream: Stream, words: impl Iterator<Item = &'a [u8]>) {
    for (i, w) in words.enumerate() {
        if i > 0 {
            out.write(stream, b" ");
        }
        out.write(stream, w);
    }
    out.write(stream, b"\n");
}

fn random(out: &mut Output<'_>, n: u64) -> i32 {
    let mut left = n;
    while left > 0 && !out.stopped() {
        let word = rng::next().to_le_bytes();
        for b in word.iter().take(left.min(8) as usize) {
            out.write(
                Stream::Stdout,
                &[text::hex_digit(b >> 4), text::hex_digit(*b)],
            );
        }
        left = left.saturating_sub(8);
    }
    out.write(Stream::Stdout, b"\n");
    0
}

fn dirty(pages: u64) {
    for i in 0..pages as usize {
        let p = (DIRTY_BASE + i * 4096) as *mut u64;
        // SAFETY: [DIRTY_BASE, DIRTY_BASE + 24 MiB) is guest RAM nothing else
        // in this program uses, identity-mapped by the host.
        unsafe { p.write_volatile(i as u64 + 1) };
    }
}

fn flood(out: &mut Output<'_>, n: u64) {
    let mut block = [0u8; 4096];
    for (i, b) in block.iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    let mut left = n as usize;
    while left > 0 && !out.stopped() {
        let k = left.min(block.len());
        out.write(Stream::Stdout, &block[..k]);
        left -= k;
    }
}

/// Rings the doorbell over a frame with a bad magic number; the host must
/// reject it. If the host nevertheless resumes, report the fact as an error.
fn garbage(out: &mut Output<'_>) -> i32 {
    out.flush();
    let chan = out.channel();
    chan.mailbox()[..16].copy_from_slice(b"NOT A FRAME AT A");
    chan.ring();
    out.write(
        Stream::Stderr,
        b"garbage: host accepted a malformed frame\n",
    );
    1
}

/// Touches a port and an MMIO address that no device backs; the host answers
/// like bare hardware (all ones, writes dropped) and the program carries on.
fn badio(out: &mut Output<'_>) -> i32 {
    let port = inb(STRAY_PORT);
    outb(STRAY_PORT, 0x5a);
    let mmio = STRAY_MMIO as *mut u32;
    // SAFETY: the address is inside the identity map but outside guest RAM, so
    // the access exits to the host's MMIO handler instead of touching memory.
    let value = unsafe {
        let v = mmio.read_volatile();
        mmio.write_volatile(0xdead_beef);
        v
    };
    out.write(Stream::Stdout, b"port=");
    out.write(Stream::Stdout, &text::hex64(port as u64));
    out.write(Stream::Stdout, b" mmio=");
    line(out, &text::hex64(value as u64));
    0
}
