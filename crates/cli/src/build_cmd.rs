//! `tessera build` (write a built-in network as ONNX) and `tessera selftest` (check the
//! worker's compute device against the CPU reference).

use crate::table::Table;
use crate::{CliError, Result, human, write_atomic};
use std::path::PathBuf;
use tessera_model::builders;
use tessera_model::stats::stats;

/// Write a built-in literature network (seeded random weights) as ONNX.
#[derive(clap::Args)]
pub(crate) struct BuildArgs {
    /// Network name.
    name: Option<String>,
    /// Output file.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Weight seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// List the networks.
    #[arg(long)]
    list: bool,
}

/// Check the worker's compute device: run every kernel (label matmul mod p, AES, float GEMM)
/// on random inputs and compare with the CPU reference.
#[derive(clap::Args)]
pub(crate) struct SelftestArgs {
    /// cpu, or cuda (needs a build with `--features cuda` and a GPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub(crate) fn main_build(a: &BuildArgs) -> Result<()> {
    build(a.name.clone(), a.output.clone(), a.seed, a.list)
}

pub(crate) fn main_selftest(a: &SelftestArgs) -> Result<()> {
    selftest(&a.device, a.seed)
}

fn build(name: Option<String>, output: Option<PathBuf>, seed: u64, list: bool) -> Result<()> {
    if list || name.is_none() {
        let mut t = Table::new(&["name", "ReLUs", "MACs", "description"]);
        for n in builders::NETWORKS {
            let g = (n.build)(seed)?;
            let s = stats(&g);
            t.row(vec![
                n.name.into(),
                s.relus.to_string(),
                human(s.macs),
                n.about.into(),
            ]);
        }
        println!("{}", t.render());
        return Ok(());
    }
    let name = name.unwrap_or_default();
    let spec = builders::find(&name).ok_or_else(|| {
        CliError::Usage(format!(
            "no built-in network '{name}'; see `tessera build --list`"
        ))
    })?;
    let g = (spec.build)(seed)?;
    let bytes = tessera_model::export::export_model(&g)?;
    let out = output.unwrap_or_else(|| PathBuf::from(format!("{name}.onnx")));
    write_atomic(&out, &bytes)?;
    println!(
        "wrote {} ({} bytes, {} ReLUs)",
        out.display(),
        bytes.len(),
        stats(&g).relus
    );
    Ok(())
}

fn selftest(device: &str, seed: u64) -> Result<()> {
    let usage = |e: tessera_cuda::CudaError| CliError::Usage(e.to_string());
    let dev = tessera_cuda::Device::open(device.parse().map_err(usage)?).map_err(usage)?;
    println!("device: {}", dev.describe());
    let checks = tessera_cuda::selftest::run(&dev, seed).map_err(usage)?;
    let mut t = Table::new(&["kernel", "result", "detail"]);
    let mut failed = 0;
    for c in &checks {
        failed += usize::from(!c.ok);
        t.row(vec![
            c.name.clone(),
            if c.ok { "ok" } else { "MISMATCH" }.into(),
            c.detail.clone(),
        ]);
    }
    println!("{}", t.render());
    if failed > 0 {
        return Err(CliError::Usage(format!(
            "{failed} of {} kernel checks differ from the CPU reference",
            checks.len()
        )));
    }
    Ok(())
}
