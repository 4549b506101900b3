//! The `cairn` binary: parses the command line, sets up logging and hands over to the library.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use cairn::cli;
use cairn::config::{export_config_file, ServerArgs};

// glibc's malloc and free took about a fifth of the server's CPU in write profiles (small,
// short-lived buffers passed between threads); mimalloc's thread-local free lists cost less.
// Built without transparent huge pages (feature `no_thp`): with them an idle member's
// arenas took 2 MiB pages and about 17 MiB more memory, which edge boards cannot spare.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "An etcd-compatible key-value store for edge clusters"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Load-test etcd v3 endpoints (Cairn or etcd) in the style of etcd's `benchmark`.
    Bench(cairn::bench::BenchArgs),
    /// Found a zero-config cluster: a CA, this member's and an admin's certificates, a
    /// join token; then serve over TLS.
    Init(cli::InitArgs),
    /// Join a zero-config cluster with its token (a member found over mDNS or `--join`);
    /// then serve over TLS.
    Join(cli::JoinArgs),
    /// Serve a set-up member; with `--wait`, wait for an unconfigured node's setup first.
    Serve(cli::ServeArgs),
    /// Show the setup code of a node waiting for setup (`cairn serve --wait`).
    SetupCode(cli::SetupCodeArgs),
    /// Bootstrap or join a node waiting for setup, with its setup code.
    Setup(cli::SetupArgs),
    /// Show (or `--rotate`) the join token.
    Token(cli::TokenArgs),
    /// Issue certificates from the cluster CA.
    #[command(subcommand)]
    Cert(cli::CertCommand),
    /// List the Cairn members that announce themselves over mDNS on this network.
    Discover(cli::DiscoverArgs),
    /// Restore a backup taken with `etcdctl snapshot save`.
    #[command(subcommand)]
    Snapshot(cli::SnapshotCommand),
}

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if let Some(path) = cli.server.config_file.clone() {
        // Parsed again so the file's values sit beneath the command line and environment.
        export_config_file(&path)?;
        cli = Cli::parse();
    }
    // The load generator takes every core; it is not a member.
    let runtime = match cli.command {
        Some(Command::Bench(_)) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        _ => server_runtime()?,
    };
    match cli.command {
        Some(Command::Bench(args)) => runtime.block_on(cairn::bench::run(args)),
        Some(Command::Init(args)) => {
            set_up_logging(&cli.server.log_level);
            let server = cli::init(&args)?;
            serve(&runtime, &server)
        }
        Some(Command::Join(args)) => {
            set_up_logging(&cli.server.log_level);
            let server = runtime.block_on(cli::join(&args))?;
            serve(&runtime, &server)
        }
        Some(Command::Serve(args)) => {
            set_up_logging(&cli.server.log_level);
            let server = runtime.block_on(cli::serve(&args))?;
            serve(&runtime, &server)
        }
        Some(Command::SetupCode(args)) => cli::setup_code(&args),
        Some(Command::Setup(args)) => runtime.block_on(cli::setup(&args)),
        Some(Command::Token(args)) => runtime.block_on(cli::token(&args)),
        Some(Command::Cert(cli::CertCommand::Client(args))) => cli::client_cert(&args),
        Some(Command::Discover(args)) => cli::discover(&args),
        Some(Command::Snapshot(cli::SnapshotCommand::Restore(args))) => {
            cli::snapshot_restore(&args)
        }
        None => {
            set_up_logging(&cli.server.log_level);
            serve(&runtime, &cli.server)
        }
    }
}

/// The runtime of every command but `bench`: one worker thread fewer than the cores this
/// process may use (at least one), unless `TOKIO_WORKER_THREADS` sets the count. The Raft log
/// writer and the state sync run on threads of their own beside the workers. On two cores,
/// one worker instead of two cut a 3-member cluster's CPU per put by 7% and raised its put
/// throughput by 6%, as the workers stopped waking each other for every request
/// (docs/benchmarks.md, ninth session).
fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder.build()
}

fn set_up_logging(level: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(format!("{level},openraft=warn"))),
        )
        .init();
}

fn serve(runtime: &tokio::runtime::Runtime, server: &ServerArgs) -> anyhow::Result<()> {
    let config = server.resolve()?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting cairn");
    runtime.block_on(async {
        let listeners = cairn::server::bind(&config).await?;
        cairn::server::run(config, listeners, shutdown_signal()).await
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutting down");
}
