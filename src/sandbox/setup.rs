//! `serin sandbox setup`: installs and builds what the sandbox needs. Placeholder.

/// Runs every set-up step, printing each with its duration.
pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("serin sandbox setup is not implemented yet")
}
