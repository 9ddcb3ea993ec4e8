//! Command-line parsing and the small commands; each subcommand lives in its
//! own file and calls the engine (or the RPC worker) and nothing lower.

mod bench;
mod bench_branch;
mod bench_linux;
mod bench_net;
mod bench_rpc;
mod doctor;
mod image;
mod progress;
mod run;
mod stats;
mod template;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use zeroboot::engine::{EngineConfig, EngineError};

/// zeroboot: KVM sandboxes forked copy-on-write from a snapshot in well under a
/// millisecond, driven as a stdio JSON-RPC worker.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Speak JSON-RPC 2.0 on stdin/stdout (the default).
    Serve(ServeArgs),
    /// Speak MCP on stdin/stdout: sandboxes as tools for agent hosts.
    Mcp(McpArgs),
    /// Fork a sandbox from the bare template, run ARGV in it, print output and timings.
    Run(run::RunArgs),
    /// Measure fork, exec, kill and memory figures.
    Bench(bench::BenchArgs),
    /// Explain this host: KVM flavour, limits, what works here.
    Doctor,
    /// Linux guest images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Templates built from a spec (zeroboot.toml), and what a template file holds.
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// Builds spec images for a confined worker (started by `serve`).
    #[command(name = "build-helper", hide = true)]
    BuildHelper,
}

/// Engine knobs shared by every command that starts an engine.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Idle VMs kept ready per template (0 disables the pool).
    #[arg(long, default_value_t = EngineConfig::default().pool_size)]
    pool: usize,
    /// Most sandboxes alive at once.
    #[arg(long, default_value_t = EngineConfig::default().max_sandboxes)]
    max_sandboxes: usize,
    /// Exec deadline when a call names none, in milliseconds.
    #[arg(long, default_value_t = EngineConfig::default().default_timeout_ms)]
    default_timeout_ms: u64,
    /// Output bytes kept per exec when a call names no cap.
    #[arg(long, default_value_t = EngineConfig::default().default_output_cap)]
    output_cap: usize,
    /// Largest file sandbox.write_file/read_file move, in bytes.
    #[arg(long, default_value_t = EngineConfig::default().max_file_bytes)]
    max_file_bytes: usize,
    /// Memory budget: every sandbox, template and pooled VM is charged what
    /// it can cost, and calls that would pass the budget fail. Bytes, or with
    /// a K, M, G or T suffix (powers of 1024). Default: 75% of the memory
    /// available at start (the host's, or less if the memory cgroup has less).
    #[arg(long, value_parser = parse_bytes)]
    max_memory: Option<u64>,
    /// Milliseconds a sandbox goes without a request before it gives back
    /// the pages its runs left as its template has them; "off": never.
    #[arg(long, value_parser = parse_idle_ms, default_value = "5")]
    trim_idle_ms: IdleMs,
}

/// `--trim-idle-ms`: a delay, or none.
#[derive(Clone, Copy, Debug, PartialEq)]
struct IdleMs(Option<u64>);

fn parse_idle_ms(s: &str) -> Result<IdleMs, String> {
    match s.trim() {
        "off" => Ok(IdleMs(None)),
        t => t
            .parse()
            .map(|ms| IdleMs(Some(ms)))
            .map_err(|_| format!("{s:?} is neither milliseconds nor \"off\"")),
    }
}

/// "4096", "512M", "4G", "1.5G"...: bytes, with an optional binary suffix.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown unit in {s:?} (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

impl EngineArgs {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            pool_size: self.pool,
            max_sandboxes: self.max_sandboxes,
            default_timeout_ms: self.default_timeout_ms,
            default_output_cap: self.output_cap,
            max_file_bytes: self.max_file_bytes,
            max_memory: self.max_memory,
            trim_idle_ms: self.trim_idle_ms.0,
            ..EngineConfig::default()
        }
    }
}

/// Room for a request carrying a file of the default `max_file_bytes` (16 MiB)
/// as base64 (4/3 of its size) with plenty to spare.
const DEFAULT_MAX_MESSAGE: usize = 32 << 20;

#[derive(clap::Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Largest JSON-RPC message accepted, in bytes; larger ones are refused unread.
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE)]
    max_message_bytes: usize,
    /// Run without seccomp filters (to measure what they cost, or on a
    /// kernel without seccomp). Capabilities are dropped either way.
    #[arg(long)]
    no_seccomp: bool,
}

#[derive(clap::Args, Debug)]
struct McpArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The sessions' template: `bare` (built in), a file saved by template.save, or a template spec (`.toml`/`.json`, built at first use).
    #[arg(long, default_value = "bare", value_parser = zeroboot::mcp::TemplateSource::parse)]
    template: zeroboot::mcp::TemplateSource,
}

/// Logs go to stderr only: stdout belongs to the protocol. The level comes
/// from ZEROBOOT_LOG, else RUST_LOG, else "warn".
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("ZEROBOOT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}

/// Runs the chosen command.
pub fn dispatch(args: Args) -> ExitCode {
    let Some(command) = args.command else {
        return zeroboot::rpc::serve(zeroboot::rpc::ServeOptions {
            engine: EngineConfig::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE,
            seccomp: true,
        });
    };
    match command {
        Command::Serve(a) => zeroboot::rpc::serve(zeroboot::rpc::ServeOptions {
            engine: a.engine.config(),
            max_message_bytes: a.max_message_bytes,
            seccomp: !a.no_seccomp,
        }),
        Command::BuildHelper => zeroboot::rpc::build_helper::serve(),
        Command::Mcp(a) => zeroboot::mcp::serve(zeroboot::mcp::McpOptions {
            engine: a.engine.config(),
            template: a.template,
        }),
        Command::Run(a) => run::main(a),
        Command::Bench(a) => bench::main(a),
        Command::Doctor => doctor::main(),
        Command::Image(c) => image::main(c),
        Command::Template(c) => template::main(c),
    }
}

/// Prints an error with its cause chain, once, at the edge; a failed Linux
/// boot also gets the end of the guest's console, where the reason usually is.
pub fn report(e: &(dyn std::error::Error + 'static)) {
    eprintln!("zeroboot: {}", zeroboot::error_chain(e));
    if let Some(EngineError::LinuxBoot { console, .. }) = e.downcast_ref() {
        eprintln!("--- end of the guest console ---\n{console}\n---");
    }
}

#[cfg(test)]
mod tests {
    use super::{EngineConfig, IdleMs, parse_bytes, parse_idle_ms};

    #[test]
    fn idle_trim_delays_parse_and_the_flag_defaults_to_the_engines() {
        assert_eq!(
            parse_idle_ms("5"),
            Ok(IdleMs(EngineConfig::default().trim_idle_ms))
        );
        assert_eq!(parse_idle_ms("250"), Ok(IdleMs(Some(250))));
        assert_eq!(parse_idle_ms("off"), Ok(IdleMs(None)));
        assert!(parse_idle_ms("soon").is_err());
        assert!(parse_idle_ms("-1").is_err());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("1.5g"), Ok(3 << 29));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("12Q").is_err());
        assert!(parse_bytes("lots").is_err());
    }
}
