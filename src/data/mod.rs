//! Datasets as f32 NCHW tensors in [0, 1] with u8 labels: IDX / CIFAR loaders, the embedded subset, splits.
//!
//! [`load`] is the entry point: a [`DatasetName`] plus a [`DataSource`] give [`Splits`] (the
//! official train and test sets). [`Dataset`] then offers seeded train/validation splits,
//! subsets and candle batches. All shuffling uses [`permutation`], a self-contained generator whose
//! output depends only on the seed, so the same seed gives the same split on every machine.

mod cifar;
mod dataset;
mod idx;

pub use cifar::{
    CIFAR_RECORD_LEN, CIFAR_SUBDIR, CIFAR_TEST_FILE, CIFAR_TRAIN_FILES, load_cifar10_dir,
};
pub use dataset::{Dataset, permutation, shuffled_batches};
pub use idx::{MNIST_FILES, embedded_mnist, load_mnist_dir};

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where `fashion-mnist` is looked for when no directory is given (the Debian package
/// `dataset-fashion-mnist` installs its four `.gz` files here).
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// What can go wrong when naming, reading or slicing a dataset; file errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The dataset name is not one we know.
    #[error("unknown dataset `{name}` (valid names: {valid})")]
    UnknownDataset {
        /// The name asked for.
        name: String,
        /// The accepted names, comma separated.
        valid: String,
    },
    /// The chosen source cannot provide this dataset (e.g. CIFAR-10 without `--data-dir`).
    #[error("{dataset}: {problem}")]
    NoSource {
        /// The dataset asked for.
        dataset: DatasetName,
        /// Why, and what to do instead.
        problem: String,
    },
    /// A required file is not in the directory under any of the accepted names.
    #[error("{}: no {what} found (looked for {looked_for})", dir.display())]
    MissingFile {
        /// The directory searched.
        dir: PathBuf,
        /// Which file was wanted, e.g. `training images`.
        what: String,
        /// The names tried, comma separated.
        looked_for: String,
    },
    /// The file exists but could not be read.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid gzip (or the gzip stream is damaged).
    #[error("{}: bad gzip data: {problem}", path.display())]
    Gzip {
        /// The file.
        path: PathBuf,
        /// What the decoder reported.
        problem: String,
    },
    /// The IDX file does not start with the expected magic number.
    #[error("{}: wrong magic number {found:#010x}, expected {expected:#010x} ({meaning})", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first four bytes, big-endian.
        found: u32,
        /// The magic number this file should have.
        expected: u32,
        /// What the expected magic number stands for.
        meaning: &'static str,
    },
    /// The file is shorter than its header (or the format) says.
    #[error("{}: truncated: {expected} bytes expected, {actual} present", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header or format requires.
        expected: u64,
        /// Bytes actually there (after decompression).
        actual: u64,
    },
    /// The file's contents are inconsistent in some other way (extra bytes, zero sizes, ...).
    #[error("{}: {problem}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// An image file and its label file disagree on the number of items.
    #[error("{} holds {image_count} images but {} holds {label_count} labels", images.display(), labels.display())]
    CountMismatch {
        /// The image file.
        images: PathBuf,
        /// Number of images in it.
        image_count: usize,
        /// The label file.
        labels: PathBuf,
        /// Number of labels in it.
        label_count: usize,
    },
    /// A CIFAR-10 batch file's size is not a whole number of records.
    #[error("{}: {len} bytes is not a whole number of {record}-byte CIFAR-10 records (1 label byte + 3x32x32 pixels); wrong image size or not a CIFAR-10 binary batch", path.display())]
    RecordSize {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        len: u64,
        /// The record size expected.
        record: usize,
    },
    /// A label is not below the number of classes.
    #[error("{}: label {label} of item {index} is out of range (expected 0..{classes})", path.display())]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// Index of the item (0-based).
        index: usize,
        /// The label found.
        label: u8,
        /// The number of classes.
        classes: usize,
    },
    /// The images do not have the shape the dataset needs.
    #[error("{what}: images are {found:?} (C, H, W), expected {expected:?}")]
    WrongShape {
        /// Which files or dataset.
        what: String,
        /// The shape found.
        found: [usize; 3],
        /// The shape required.
        expected: [usize; 3],
    },
    /// Images, labels and shape given to [`Dataset::new`] do not fit together.
    #[error("invalid dataset: {0}")]
    InvalidDataset(String),
    /// An index passed to [`Dataset::batch`] is not below the dataset length.
    #[error("index {index} out of range for a dataset of {len} items")]
    IndexOutOfRange {
        /// The index.
        index: usize,
        /// The dataset length.
        len: usize,
    },
    /// Building a tensor failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Holding out this many validation images would leave none to train on.
    #[error(
        "{validation} validation images leave no training images (the training split has {available})"
    )]
    NoTrainingImages {
        /// Validation images asked for.
        validation: usize,
        /// Images in the training split.
        available: usize,
    },
    /// More (or fewer than one) training images asked for than the split leaves.
    #[error(
        "{requested} training images asked for, but the training split has {available} images \
         and {validation} of them are held out for validation, leaving {left} to train on"
    )]
    TrainingImages {
        /// Training images asked for.
        requested: usize,
        /// Images in the training split.
        available: usize,
        /// Validation images held out of it.
        validation: usize,
        /// Images left to train on.
        left: usize,
    },
}

/// The datasets cthpo can train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DatasetName {
    /// MNIST handwritten digits, 1x28x28.
    Mnist,
    /// Zalando's Fashion-MNIST, 1x28x28.
    FashionMnist,
    /// CIFAR-10 colour images, 3x32x32.
    Cifar10,
}

impl DatasetName {
    /// Every dataset, in a fixed order.
    pub const ALL: [DatasetName; 3] = [
        DatasetName::Mnist,
        DatasetName::FashionMnist,
        DatasetName::Cifar10,
    ];

    /// The canonical name (`mnist`, `fashion-mnist`, `cifar10`).
    pub fn as_str(&self) -> &'static str {
        match self {
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Cifar10 => "cifar10",
        }
    }

    /// Shape of one image as [channels, height, width].
    pub fn input_shape(&self) -> [usize; 3] {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => [1, 28, 28],
            DatasetName::Cifar10 => [3, 32, 32],
        }
    }

    /// Number of classes (labels are `0..num_classes`).
    pub fn num_classes(&self) -> usize {
        10
    }

    /// Per-channel (mean, std) the network should normalise inputs with; `None` means none.
    pub fn normalization(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => None,
            DatasetName::Cifar10 => {
                Some((vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616]))
            }
        }
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetName {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mnist" => Ok(DatasetName::Mnist),
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" | "fmnist" => {
                Ok(DatasetName::FashionMnist)
            }
            "cifar10" | "cifar-10" | "cifar_10" => Ok(DatasetName::Cifar10),
            _ => Err(DataError::UnknownDataset {
                name: s.to_string(),
                valid: "mnist, fashion-mnist (or fashion_mnist, fmnist), cifar10 (or cifar-10)"
                    .to_string(),
            }),
        }
    }
}

impl TryFrom<String> for DatasetName {
    type Error = DataError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<DatasetName> for String {
    fn from(value: DatasetName) -> Self {
        value.as_str().to_string()
    }
}

/// Where a dataset's files come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DataSource {
    /// The embedded subset for `mnist`, the Debian directory for `fashion-mnist`; `cifar10` has none.
    #[default]
    Default,
    /// The MNIST subset compiled into the binary (only `mnist`).
    Embedded,
    /// A directory the user names (`--data-dir`).
    Dir(PathBuf),
}

impl From<Option<PathBuf>> for DataSource {
    fn from(dir: Option<PathBuf>) -> Self {
        dir.map_or(DataSource::Default, DataSource::Dir)
    }
}

/// The official training and test sets of a dataset.
#[derive(Debug, Clone)]
pub struct Splits {
    /// The training set (to be split further into train/validation).
    pub train: Dataset,
    /// The held-out test set.
    pub test: Dataset,
}

impl Splits {
    /// The training and validation sets of a run: `validation` images of the training split
    /// held out by `seed`, and of the rest `train_samples` (all if `None`) to train on; asking
    /// for none, or for more than are left, is an error saying how many there are.
    pub fn train_validation(
        &self,
        validation: usize,
        train_samples: Option<usize>,
        seed: u64,
    ) -> Result<(Dataset, Dataset), DataError> {
        if validation >= self.train.len() {
            return Err(DataError::NoTrainingImages {
                validation,
                available: self.train.len(),
            });
        }
        let left = self.train.len() - validation;
        if let Some(requested) = train_samples.filter(|&n| n == 0 || n > left) {
            return Err(DataError::TrainingImages {
                requested,
                available: self.train.len(),
                validation,
                left,
            });
        }
        let (train, validation) = self.train.split(validation, seed);
        let train = match train_samples {
            Some(count) => train.take(count),
            None => train,
        };
        Ok((train, validation))
    }
}

/// Load a dataset's train and test sets from a source, checking the image shape fits the dataset.
pub fn load(name: DatasetName, source: &DataSource) -> Result<Splits, DataError> {
    let splits = match (name, source) {
        (DatasetName::Mnist, DataSource::Default | DataSource::Embedded) => embedded_mnist()?,
        (DatasetName::FashionMnist, DataSource::Default) => {
            let dir = Path::new(DEBIAN_FASHION_MNIST_DIR);
            if !dir.is_dir() {
                return Err(DataError::NoSource {
                    dataset: name,
                    problem: format!(
                        "{DEBIAN_FASHION_MNIST_DIR} does not exist; install the Debian package \
                         dataset-fashion-mnist or pass --data-dir with the four IDX files"
                    ),
                });
            }
            load_mnist_dir(dir)?
        }
        (DatasetName::Cifar10, DataSource::Default) => {
            return Err(DataError::NoSource {
                dataset: name,
                problem: "no default location; download the CIFAR-10 binary version \
                          (cifar-10-binary.tar.gz), unpack it and pass --data-dir"
                    .to_string(),
            });
        }
        (_, DataSource::Embedded) => {
            return Err(DataError::NoSource {
                dataset: name,
                problem: "only mnist has an embedded copy; pass --data-dir".to_string(),
            });
        }
        (DatasetName::Mnist | DatasetName::FashionMnist, DataSource::Dir(dir)) => {
            load_mnist_dir(dir)?
        }
        (DatasetName::Cifar10, DataSource::Dir(dir)) => load_cifar10_dir(dir)?,
    };
    let expected = name.input_shape();
    if splits.train.shape() != expected {
        return Err(DataError::WrongShape {
            what: format!("{name} from {}", describe(source)),
            found: splits.train.shape(),
            expected,
        });
    }
    Ok(splits)
}

/// A short description of a source for error messages.
fn describe(source: &DataSource) -> String {
    match source {
        DataSource::Default => "the default location".to_string(),
        DataSource::Embedded => "the embedded copy".to_string(),
        DataSource::Dir(dir) => dir.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_display() {
        for name in DatasetName::ALL {
            assert_eq!(name.to_string().parse::<DatasetName>().unwrap(), name);
        }
        assert_eq!(
            "FMNIST".parse::<DatasetName>().unwrap(),
            DatasetName::FashionMnist
        );
        assert_eq!(
            "fashion_mnist".parse::<DatasetName>().unwrap(),
            DatasetName::FashionMnist
        );
        assert_eq!(
            "cifar-10".parse::<DatasetName>().unwrap(),
            DatasetName::Cifar10
        );
        let err = "imagenet".parse::<DatasetName>().unwrap_err().to_string();
        assert!(
            err.contains("imagenet") && err.contains("fashion-mnist") && err.contains("cifar10"),
            "{err}"
        );
    }

    #[test]
    fn names_serde_use_canonical_names() {
        let json = serde_json::to_string(&DatasetName::FashionMnist).unwrap();
        assert_eq!(json, "\"fashion-mnist\"");
        let back: DatasetName = serde_json::from_str("\"cifar-10\"").unwrap();
        assert_eq!(back, DatasetName::Cifar10);
        assert!(serde_json::from_str::<DatasetName>("\"svhn\"").is_err());
    }

    #[test]
    fn cifar_default_source_asks_for_a_directory() {
        let err = load(DatasetName::Cifar10, &DataSource::Default).unwrap_err();
        assert!(matches!(err, DataError::NoSource { .. }));
        assert!(err.to_string().contains("--data-dir"), "{err}");
        let err = load(DatasetName::Cifar10, &DataSource::Embedded).unwrap_err();
        assert!(matches!(err, DataError::NoSource { .. }));
    }
}
