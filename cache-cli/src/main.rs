//! The `buildcache` command line: builds Dockerfiles and manages BuildKit-format caches.

mod build;
mod images;
mod inspect;
mod manage;
mod progress;
mod root_mounts;
mod run_flags;
mod stores;

use clap::{Parser, Subcommand, ValueEnum};

/// Build Dockerfiles and share their build cache between machines, in BuildKit's cache format.
#[derive(Parser, Debug)]
#[command(name = "buildcache", version, about)]
struct Cli {
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
    },
    #[command(flatten)]
    Manage(manage::ManageCommand),
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

fn main() {
    let cli = Cli::parse();
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
            CacheCommand::Inspect { source, format } => {
                inspect::run(&source, format == Format::Json).await
            }
            CacheCommand::Manage(command) => manage::run(command).await,
        },
    }
}
