//! `zeroboot build-helper`: the unconfined side of [`crate::image::helper`].
//! It reads build requests from stdin, one JSON line each, builds (or finds
//! in the cache) each spec's image, and answers with progress lines and one
//! outcome line. A failure carries the JSON-RPC error `data` the worker
//! would have sent for it, so a client sees the same typed error whoever
//! built. It lives beside the wire code for that reason.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use crate::image::helper::{Reply, Request};
use crate::image::spec_image::{self, SpecBuildOptions};

/// Serves build requests until stdin ends.
pub fn serve() -> ExitCode {
    // The worker blocked its termination signals before starting this
    // process; the programs a build runs must see them.
    // SAFETY: an empty set, filled by sigemptyset, then passed by pointer
    // to sigprocmask, which only reads it.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_UNBLOCK, &all, std::ptr::null_mut());
    }
    let stdin = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    for line in stdin.lines() {
        let Ok(line) = line else {
            return ExitCode::FAILURE;
        };
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => build(&req, &mut |p| {
                send(&mut out, &Reply::Progress(p.clone()));
            }),
            Err(e) => Reply::Failed {
                message: format!("the build helper got a bad request: {e}"),
                data: serde_json::json!({"kind": "build_environment", "detail": e.to_string()}),
            },
        };
        if !send(&mut out, &reply) {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn build(req: &Request, progress: &mut dyn FnMut(&crate::image::progress::Progress)) -> Reply {
    let opts = SpecBuildOptions {
        cache_dir: req.cache_dir.clone(),
        agent: req.agent.clone(),
        no_programs: false,
    };
    match spec_image::build_here(&req.spec, &opts, progress) {
        Ok(image) => Reply::Image {
            kernel: image.kernel,
            initramfs: image.initramfs,
            manifest: image.manifest,
            cached: image.cached,
        },
        Err(e) => Reply::Failed {
            message: crate::error_chain(&e),
            data: super::errors::image_data(&e),
        },
    }
}

/// Writes one reply line; false once the worker is gone.
fn send(out: &mut impl Write, reply: &Reply) -> bool {
    let mut line = serde_json::to_vec(reply).expect("replies serialize");
    line.push(b'\n');
    out.write_all(&line).and_then(|()| out.flush()).is_ok()
}
