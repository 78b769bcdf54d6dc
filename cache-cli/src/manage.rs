//! `buildcache cache du | prune | copy | verify`: managing exported caches, ours and BuildKit's.

/// Cache management subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ManageCommand {
    /// Live and orphaned bytes of a cache, per tag.
    Du {
        /// The cache, in --cache-from syntax.
        source: String,
    },
}

/// Runs a management subcommand.
pub async fn run(command: ManageCommand) -> anyhow::Result<()> {
    match command {
        ManageCommand::Du { source } => anyhow::bail!("cache du {source}: not available yet"),
    }
}
