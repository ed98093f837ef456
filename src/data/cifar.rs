//! CIFAR-10 binary batches: records of 1 label byte followed by 3x32x32 pixel bytes (CHW).

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::idx::check_labels;
use super::{DataError, Dataset, Splits};

/// The subdirectory the CIFAR-10 binary archive unpacks into.
pub const CIFAR_SUBDIR: &str = "cifar-10-batches-bin";
/// The five training batch files.
pub const CIFAR_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch file.
pub const CIFAR_TEST_FILE: &str = "test_batch.bin";
/// Bytes in one record: a label byte and 3·32·32 pixel bytes.
pub const CIFAR_RECORD_LEN: usize = 1 + IMAGE_LEN;

/// Values in one CIFAR-10 image.
const IMAGE_LEN: usize = 3 * 32 * 32;

/// Load CIFAR-10 from a directory holding the binary batches, or from its `cifar-10-batches-bin/`.
pub fn load_cifar10_dir(dir: &Path) -> Result<Splits, DataError> {
    if !dir.is_dir() {
        return Err(DataError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let nested = dir.join(CIFAR_SUBDIR);
    let base = if !dir.join(CIFAR_TEST_FILE).is_file()
        && !dir.join(CIFAR_TRAIN_FILES[0]).is_file()
        && nested.is_dir()
    {
        nested
    } else {
        dir.to_path_buf()
    };
    let names: Vec<&str> = CIFAR_TRAIN_FILES
        .iter()
        .copied()
        .chain([CIFAR_TEST_FILE])
        .collect();
    let mut paths = Vec::with_capacity(names.len());
    for name in &names {
        let path = base.join(name);
        if !path.is_file() {
            return Err(DataError::MissingFile {
                dir: dir.to_path_buf(),
                what: format!("CIFAR-10 batch {name}"),
                looked_for: format!("{name}, {CIFAR_SUBDIR}/{name}"),
            });
        }
        paths.push(path);
    }
    let files: Vec<(PathBuf, Vec<u8>)> = paths
        .into_par_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).map_err(|source| DataError::Io {
                path: path.clone(),
                source,
            })?;
            check_records(&path, &bytes)?;
            Ok((path, bytes))
        })
        .collect::<Result<_, DataError>>()?;
    let (train, test) = files.split_at(CIFAR_TRAIN_FILES.len());
    let (train, test) = rayon::join(|| decode(train), || decode(test));
    Ok(Splits {
        train: train?,
        test: test?,
    })
}

/// Check that a batch is a whole, non-zero number of records with labels in range.
fn check_records(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    if bytes.is_empty() {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            problem: "holds no records".to_string(),
        });
    }
    if !bytes.len().is_multiple_of(CIFAR_RECORD_LEN) {
        return Err(DataError::RecordSize {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            record: CIFAR_RECORD_LEN,
        });
    }
    let labels: Vec<u8> = bytes.iter().step_by(CIFAR_RECORD_LEN).copied().collect();
    check_labels(path, &labels)
}

/// Concatenate checked batches into one dataset, converting pixels to [0,1].
fn decode(files: &[(PathBuf, Vec<u8>)]) -> Result<Dataset, DataError> {
    let count: usize = files.iter().map(|(_, b)| b.len() / CIFAR_RECORD_LEN).sum();
    let mut images = vec![0f32; count * IMAGE_LEN];
    let mut labels = Vec::with_capacity(count);
    let mut rest = images.as_mut_slice();
    for (_, bytes) in files {
        let (part, tail) = rest.split_at_mut(bytes.len() / CIFAR_RECORD_LEN * IMAGE_LEN);
        rest = tail;
        part.par_chunks_mut(IMAGE_LEN)
            .zip(bytes.par_chunks(CIFAR_RECORD_LEN))
            .for_each(|(image, record)| {
                for (o, &b) in image.iter_mut().zip(&record[1..]) {
                    *o = f32::from(b) / 255.0;
                }
            });
        labels.extend(bytes.iter().step_by(CIFAR_RECORD_LEN));
    }
    Dataset::new(images, labels, [3, 32, 32])
}
