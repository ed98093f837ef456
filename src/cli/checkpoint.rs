//! The flags that name a trained network and its test data (`--model`, `--arch`, `--net`,
//! `--dataset`, `--data-dir`, `--eps`), shared by `cthpo verify` and `cthpo export`.

use crate::data::{DataSource, Dataset, DatasetName};
use crate::model::{Net, NetSpec};
use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;

/// A trained network and where its test images come from.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// Trained weights: a safetensors file, or a run directory written by `cthpo train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Builtin architecture of the weights (fc, cnn-small, cnn-medium, cnn7); read from the
    /// checkpoint's sidecar when omitted.
    #[arg(long, conflicts_with = "net")]
    pub arch: Option<String>,
    /// A YAML network description instead of a builtin architecture.
    #[arg(long)]
    pub net: Option<PathBuf>,
    /// Dataset to evaluate on: mnist, fashion-mnist or cifar10 (default: the checkpoint's, else
    /// mnist).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Directory with the dataset files (default: the embedded MNIST subset; Fashion-MNIST from
    /// /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// ℓ∞ radius in [0,1] pixel units (default: the checkpoint's, else 0.1).
    #[arg(long, allow_negative_numbers = true)]
    pub eps: Option<f64>,
}

/// A loaded network with its test images and radius.
pub struct Loaded {
    /// The network.
    pub net: Net,
    /// Its weights file.
    pub weights: PathBuf,
    /// The dataset's name.
    pub dataset: DatasetName,
    /// The first `samples` test images.
    pub test: Dataset,
    /// The ℓ∞ radius.
    pub eps: f64,
}

impl CheckpointArgs {
    /// Loads the network and the first `samples` test images, refusing a missing model, an ε
    /// outside [0,1], no or too many samples and images the network does not take.
    pub fn load(&self, samples: usize) -> anyhow::Result<Loaded> {
        if !self.model.exists() {
            bail!(
                "--model {}: not found (give a safetensors file or a run directory written by `cthpo train`)",
                self.model.display()
            );
        }
        if let Some(eps) = self.eps
            && !(eps.is_finite() && (0.0..=1.0).contains(&eps))
        {
            bail!("--eps {eps} must be in [0, 1] (pixel units)");
        }
        let sidecar = if self.arch.is_none() && self.net.is_none() {
            let (_, sidecar) = crate::train::checkpoint_files(&self.model);
            match sidecar {
                Some(path) => Some(crate::train::read_sidecar(&path)?),
                None => None,
            }
        } else {
            None
        };
        let dataset: DatasetName = match (&self.dataset, &sidecar) {
            (Some(name), _) => name.parse()?,
            (None, Some(sidecar)) => sidecar.dataset.parse()?,
            (None, None) => DatasetName::Mnist,
        };
        let eps = self.eps.or(sidecar.as_ref().map(|s| s.eps)).unwrap_or(0.1);
        let (net, weights) = self.network(dataset, sidecar.as_ref())?;
        let splits = crate::data::load(dataset, &DataSource::from(self.data_dir.clone()))
            .with_context(|| format!("loading the {dataset} dataset"))?;
        if samples == 0 {
            bail!("--samples must be at least 1");
        }
        if samples > splits.test.len() {
            bail!(
                "--samples {samples}: the {dataset} test split has {} images",
                splits.test.len()
            );
        }
        let test = splits.test.take(samples);
        net.spec()
            .check_input_shape(test.shape(), dataset.as_str())?;
        Ok(Loaded {
            net,
            weights,
            dataset,
            test,
            eps,
        })
    }

    fn network(
        &self,
        dataset: DatasetName,
        sidecar: Option<&crate::train::Sidecar>,
    ) -> anyhow::Result<(Net, PathBuf)> {
        let (weights, _) = crate::train::checkpoint_files(&self.model);
        let spec = if let Some(path) = &self.net {
            NetSpec::from_yaml_file(path)?
        } else if let Some(arch) = &self.arch {
            NetSpec::builtin(
                arch,
                dataset.input_shape(),
                dataset.num_classes(),
                dataset.normalization(),
            )?
        } else if let Some(sidecar) = sidecar {
            sidecar.net.clone()
        } else {
            bail!(
                "{} has no sidecar (model.json) describing its architecture: pass --arch (fc, cnn-small, cnn-medium, cnn7) or --net FILE.yaml",
                self.model.display()
            );
        };
        let net = Net::load(&spec, &weights)?;
        Ok((net, weights))
    }
}
