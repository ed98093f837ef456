//! Export for external verifiers: the network as ONNX, one VNN-LIB robustness property per test
//! image and a VNN-COMP `instances.csv` (as α,β-CROWN and other VNN-COMP tools read them).

mod onnx;
pub mod onnx_proto;
mod vnnlib;

pub use onnx::{ONNX_INPUT, ONNX_OPSET, ONNX_OUTPUT, onnx_bytes, onnx_model};
pub use vnnlib::{input_box, vnnlib_property};

use crate::data::Dataset;
use crate::model::{ModelError, Net};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

/// What can go wrong when exporting a network and its properties.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// ε is not a radius in pixel units.
    #[error("eps {0} must be a finite radius in [0, 1] (pixel units)")]
    Eps(f64),
    /// The images do not fit the network.
    #[error(
        "the network takes inputs of shape {expected:?} and {classes} classes, but the images are {actual:?}{}",
        label.map(|l| format!(" with label {l}")).unwrap_or_default()
    )]
    Data {
        /// The network's input shape.
        expected: [usize; 3],
        /// The images' shape.
        actual: [usize; 3],
        /// The network's number of classes.
        classes: usize,
        /// A label outside the network's classes, if that is the problem.
        label: Option<u8>,
    },
    /// A path that `instances.csv` cannot hold (its columns are separated by commas).
    #[error("{}: instances.csv cannot list a path with a comma or a line break; choose another name", path.display())]
    CsvPath {
        /// The path.
        path: PathBuf,
    },
    /// A file or directory could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The network's parameters could not be read.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Where [`write_benchmark`] writes, and the per-instance timeout it records.
#[derive(Debug, Clone)]
pub struct BenchmarkFiles {
    /// The ONNX model file.
    pub onnx: PathBuf,
    /// The directory of VNN-LIB properties (created if missing).
    pub vnnlib_dir: PathBuf,
    /// The `instances.csv` file; its paths are relative to its directory.
    pub instances: PathBuf,
    /// Timeout per instance, in seconds, written to `instances.csv`.
    pub timeout_seconds: f64,
}

/// What [`write_benchmark`] wrote.
#[derive(Debug, Clone)]
pub struct BenchmarkSummary {
    /// Size of the ONNX file in bytes.
    pub onnx_bytes: usize,
    /// The property files, one per image, in image order.
    pub properties: Vec<PathBuf>,
}

/// Writes the network as ONNX, one VNN-LIB property (ε-ball around the image, clipped to
/// `[0,1]`, against its label) per image of `images`, and the `instances.csv` that lists each
/// (model, property, timeout) as VNN-COMP benchmarks do. Files that exist are replaced.
pub fn write_benchmark(
    net: &Net,
    images: &Dataset,
    eps: f64,
    files: &BenchmarkFiles,
) -> Result<BenchmarkSummary, ExportError> {
    if !(eps.is_finite() && (0.0..=1.0).contains(&eps)) {
        return Err(ExportError::Eps(eps));
    }
    let classes = net.num_classes();
    let data_error = |label| ExportError::Data {
        expected: net.spec().input_shape,
        actual: images.shape(),
        classes,
        label,
    };
    if images.shape() != net.spec().input_shape {
        return Err(data_error(None));
    }
    if let Some(&label) = images.labels().iter().find(|&&l| usize::from(l) >= classes) {
        return Err(data_error(Some(label)));
    }
    for path in [&files.onnx, &files.vnnlib_dir] {
        if path.to_string_lossy().contains([',', '\n', '\r']) {
            return Err(ExportError::CsvPath { path: path.clone() });
        }
    }
    let model = onnx_bytes(net)?;
    write_file(&files.onnx, &model)?;
    std::fs::create_dir_all(&files.vnnlib_dir).map_err(|source| ExportError::Io {
        path: files.vnnlib_dir.clone(),
        source,
    })?;
    let mut properties = Vec::with_capacity(images.len());
    for (index, &label) in images.labels().iter().enumerate() {
        let path = files
            .vnnlib_dir
            .join(format!("prop_{index}_eps_{eps}.vnnlib"));
        let text = vnnlib_property(images.image(index), usize::from(label), classes, eps);
        write_file(&path, text.as_bytes())?;
        properties.push(path);
    }
    let base = files.instances.parent().unwrap_or(Path::new(""));
    create_parent(&files.instances)?;
    let onnx_entry = relative_to(&files.onnx, base)?;
    let mut csv = String::new();
    for property in &properties {
        // Writing to a String cannot fail.
        let _ = writeln!(
            csv,
            "{},{},{}",
            onnx_entry,
            relative_to(property, base)?,
            files.timeout_seconds
        );
    }
    write_file(&files.instances, csv.as_bytes())?;
    Ok(BenchmarkSummary {
        onnx_bytes: model.len(),
        properties,
    })
}

/// Writes `bytes` to `path`, creating its directory.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    create_parent(path)?;
    std::fs::write(path, bytes).map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn create_parent(path: &Path) -> Result<(), ExportError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => {
            std::fs::create_dir_all(parent).map_err(|source| ExportError::Io {
                path: parent.to_path_buf(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// `path` (which exists) relative to directory `base` (which exists), with `..` where needed,
/// as `instances.csv` lists files relative to its own directory.
fn relative_to(path: &Path, base: &Path) -> Result<String, ExportError> {
    let canonical = |p: &Path| {
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        p.canonicalize().map_err(|source| ExportError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let (path, base) = (canonical(path)?, canonical(base)?);
    let path_parts: Vec<Component> = path.components().collect();
    let base_parts: Vec<Component> = base.components().collect();
    let common = path_parts
        .iter()
        .zip(&base_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let mut relative = PathBuf::new();
    for _ in common..base_parts.len() {
        relative.push("..");
    }
    for part in &path_parts[common..] {
        relative.push(part);
    }
    Ok(relative.to_string_lossy().into_owned())
}
