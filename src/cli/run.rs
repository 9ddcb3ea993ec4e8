//! `zeroboot run`: the quickest way to see the whole path work — load the bare
//! template, fork, exec, print output and timings, exit with the guest's code.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use zeroboot::engine::{CancelToken, Engine, ExecRequest, OutputStream};

use super::{EngineArgs, report};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// A template file saved by `template.save` (default: the built-in bare guest).
    #[arg(long)]
    template: Option<std::path::PathBuf>,
    /// Deadline in milliseconds (the host stops the guest
    /// `exec_host_grace_ms` later if it has not answered).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Program and arguments to run in the sandbox.
    #[arg(required = true, trailing_var_arg = true)]
    argv: Vec<String>,
}

pub fn main(args: RunArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            report(e.as_ref());
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let t = Instant::now();
    let engine = Engine::new(args.engine.config())?;
    let tpl = match &args.template {
        Some(path) => engine.load_file(path, &CancelToken::new())?,
        None => engine.load_builtin("bare")?,
    };
    let load = t.elapsed();
    let forked = engine.fork(&tpl.template)?;
    let req = ExecRequest {
        argv: args.argv,
        timeout: Some(Duration::from_millis(args.timeout_ms)),
        ..Default::default()
    };
    let cancel = CancelToken::new();
    let result = engine.exec(&forked.sandbox, &req, &cancel, &mut |stream, data| {
        // Streamed straight through; a closed pipe is the reader's choice.
        let _ = match stream {
            OutputStream::Stdout => std::io::stdout().write_all(data),
            OutputStream::Stderr => std::io::stderr().write_all(data),
        };
    })?;
    let t = Instant::now();
    engine.kill(&forked.sandbox)?;
    let kill = t.elapsed();
    eprintln!(
        "[zeroboot] template {} loaded in {:.1} ms; fork {} us ({}); exec {} us; kill {} us; exit code {:?}",
        tpl.template,
        load.as_secs_f64() * 1e3,
        forked.fork_us,
        if forked.pooled { "pooled VM" } else { "new VM" },
        result.duration.as_micros(),
        kill.as_micros(),
        result.exit_code,
    );
    engine.shutdown();
    Ok(ExitCode::from(
        result.exit_code.unwrap_or(128).clamp(0, 255) as u8,
    ))
}
