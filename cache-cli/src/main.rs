//! The `buildcache` command line.

fn main() -> anyhow::Result<()> {
    Ok(())
}
