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
}

impl EngineArgs {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            pool_size: self.pool,
            max_sandboxes: self.max_sandboxes,
            default_timeout_ms: self.default_timeout_ms,
            default_output_cap: self.output_cap,
            max_file_bytes: self.max_file_bytes,
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
        });
    };
    match command {
        Command::Serve(a) => zeroboot::rpc::serve(zeroboot::rpc::ServeOptions {
            engine: a.engine.config(),
            max_message_bytes: a.max_message_bytes,
        }),
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
