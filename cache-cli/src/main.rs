//! The `buildcache` command line: builds Dockerfiles and manages BuildKit-format caches.

mod build;
mod early_push;
mod images;
mod inspect;
mod manage;
mod progress;
mod root_mounts;
mod run_flags;
mod stores;
mod work_dirs;

use cache_core::limits::Limits;
use clap::{Parser, Subcommand, ValueEnum};

/// Build Dockerfiles and share their build cache between machines, in BuildKit's cache format.
#[derive(Parser, Debug)]
#[command(name = "buildcache", version, about)]
struct Cli {
    /// Log what buildcache does (every registry request with its method, path, status, size,
    /// time and retry decisions) to stderr; `RUST_LOG` selects logs in finer detail.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build a Dockerfile into an OCI image, importing and exporting build caches.
    Build(Box<build::BuildArgs>),
    /// Inspect and manage exported caches.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// Show what a cache holds: manifest form, records, layers, sizes and dates.
    Inspect {
        /// The cache, in --cache-from syntax: type=local,src=DIR[,tag=T|digest=D] or type=registry,ref=REF.
        source: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        limits: LimitArgs,
    },
    #[command(flatten)]
    Manage(manage::ManageCommand),
}

/// `--limit NAME=VALUE`, on every command that reads untrusted caches or Dockerfiles.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Raise (or lower) a bound on untrusted input, e.g. `layer-size=200G`; NAME is one of
    /// layer-size, layer-ratio, layer-entries, config-size, config-records, config-layers,
    /// dockerfile-size, word-size; repeatable.
    #[arg(long = "limit", value_name = "NAME=VALUE", value_parser = check_limit)]
    limit: Vec<String>,
}

impl LimitArgs {
    /// The defaults with every `--limit` applied, in order.
    pub fn limits(&self) -> anyhow::Result<Limits> {
        let mut limits = Limits::default();
        for assignment in &self.limit {
            limits.set(assignment).map_err(anyhow::Error::msg)?;
        }
        Ok(limits)
    }
}

/// Refuses a bad `--limit` while parsing the command line.
fn check_limit(value: &str) -> Result<String, String> {
    Limits::default().set(value)?;
    Ok(value.to_owned())
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let [_, command, dir, lock] = args.as_slice()
        && command == work_dirs::REMOVE_COMMAND
    {
        // A finished build's scratch directory, handed over to be deleted in the background.
        work_dirs::remove_handed_over(dir.as_ref(), lock.as_ref());
        return;
    }
    let cli = Cli::parse();
    init_logs(cli.debug);
    // Before any thread starts: the overlays a build mounts die with this process. Without
    // the privilege to mount, there is nothing to hide and nothing is mounted.
    if let Err(err) = cache_build::layer::overlay::private_mounts() {
        tracing::debug!("no private mount namespace: {err}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(run(cli));
    if let Err(err) = result {
        eprintln!("error: {}", error_chain(&err));
        std::process::exit(1);
    }
}

/// Sends `tracing` events to stderr: debug level for buildcache's crates with `--debug`,
/// else what `RUST_LOG` selects (nothing by default). Credentials are never logged.
fn init_logs(debug: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = if debug {
        EnvFilter::new(
            "cache_cli=debug,cache_core=debug,cache_registry=debug,cache_local=debug,cache_build=debug",
        )
    } else {
        match std::env::var("RUST_LOG") {
            Ok(value) if !value.trim().is_empty() => EnvFilter::new(value),
            _ => return,
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .try_init();
}

/// An error and its causes on one line, each cause once: many errors already quote their
/// cause in their own message.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build(args) => build::run(*args).await,
        Command::Cache { command } => match command {
            CacheCommand::Inspect {
                source,
                format,
                limits,
            } => inspect::run(&source, format == Format::Json, &limits.limits()?).await,
            CacheCommand::Manage(command) => manage::run(command).await,
        },
    }
}
