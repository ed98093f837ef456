//! `cthpo export`: a trained network as ONNX plus VNN-LIB properties and an `instances.csv` for
//! external verifiers (α,β-CROWN and other VNN-COMP tools).

use crate::export::{BenchmarkFiles, write_benchmark};
use crate::study::parse_duration;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `cthpo export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The network and its test data.
    #[command(flatten)]
    checkpoint: super::checkpoint::CheckpointArgs,
    /// ONNX file to write (input: one raw [0,1] image [1, C, H, W]; output: the logits).
    #[arg(long, value_name = "FILE")]
    onnx: PathBuf,
    /// Directory for the VNN-LIB properties, one per test image (created if missing).
    #[arg(long, value_name = "DIR")]
    vnnlib: PathBuf,
    /// Number of test images to write properties for (the first N of the test split).
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// VNN-COMP instances file listing (onnx, vnnlib, timeout), paths relative to its
    /// directory [default: DIR/../instances.csv, beside the properties' directory].
    #[arg(long, value_name = "FILE")]
    instances: Option<PathBuf>,
    /// Timeout per instance written to the instances file, e.g. 30s, 5m.
    #[arg(long, default_value = "30s")]
    timeout: String,
}

/// Runs `cthpo export`.
pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let timeout =
        parse_duration(&args.timeout).map_err(|problem| anyhow::anyhow!("--timeout: {problem}"))?;
    let start = Instant::now();
    let loaded = args.checkpoint.load(args.samples)?;
    let instances = args.instances.clone().unwrap_or_else(|| {
        let parent = args.vnnlib.parent().unwrap_or(std::path::Path::new(""));
        parent.join("instances.csv")
    });
    let files = BenchmarkFiles {
        onnx: args.onnx.clone(),
        vnnlib_dir: args.vnnlib.clone(),
        instances,
        timeout_seconds: timeout.as_secs_f64(),
    };
    let summary = write_benchmark(&loaded.net, &loaded.test, loaded.eps, &files)
        .with_context(|| format!("exporting {}", loaded.weights.display()))?;
    outln!(
        "wrote {} ({} bytes, ONNX opset {}), {} VNN-LIB properties (ε = {}, {} test images) in {} and {} in {:.2} s",
        files.onnx.display(),
        summary.onnx_bytes,
        crate::export::ONNX_OPSET,
        summary.properties.len(),
        loaded.eps,
        loaded.dataset,
        files.vnnlib_dir.display(),
        files.instances.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
