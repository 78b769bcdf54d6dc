//! Project automation for buildcache: `cargo xtask test`, `registry`, `tidy`, `bench`.

fn main() -> anyhow::Result<()> {
    Ok(())
}
