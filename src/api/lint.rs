//! `serin validate`: offline checks of manifests. Placeholder until the API types land.

use std::io::Write;
use std::path::PathBuf;

/// Checks every manifest in `paths` (files, directories, or `-` for stdin), writes one line per
/// problem to `out`, and returns the number of problems found.
pub fn run(paths: &[PathBuf], out: &mut dyn Write) -> anyhow::Result<usize> {
    let _ = (paths, out);
    anyhow::bail!("serin validate is not implemented yet")
}
