//! Tests of the data module: IDX and CIFAR-10 loaders on files written here, corrupt-input
//! errors, the embedded MNIST subset, seeded splits, samples and batches.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cthpo::data::{
    self, DataError, DataSource, Dataset, DatasetName, MNIST_FILES, Splits, embedded_mnist, load,
    load_cifar10_dir, load_mnist_dir, shuffled_batches,
};
use flate2::Compression;
use flate2::write::GzEncoder;

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("cthpo-data-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pixel byte of image `i` at offset `k` in the test files (varied, covers 0 and 255).
fn pixel(i: usize, k: usize) -> u8 {
    ((i * 37 + k * 11) % 256) as u8
}

fn idx_images(count: usize, height: usize, width: usize) -> Vec<u8> {
    let mut out = 0x0000_0803u32.to_be_bytes().to_vec();
    for d in [count, height, width] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    for i in 0..count {
        out.extend((0..height * width).map(|k| pixel(i, k)));
    }
    out
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = 0x0000_0801u32.to_be_bytes().to_vec();
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

const TRAIN_LABELS: [u8; 5] = [5, 0, 4, 1, 9];
const TEST_LABELS: [u8; 3] = [7, 2, 1];

/// The four standard files' contents for a 5-train / 3-test set of 28x28 images.
fn mnist_like_files() -> [Vec<u8>; 4] {
    [
        idx_images(TRAIN_LABELS.len(), 28, 28),
        idx_labels(&TRAIN_LABELS),
        idx_images(TEST_LABELS.len(), 28, 28),
        idx_labels(&TEST_LABELS),
    ]
}

/// Write the four files into `dir`, gzip-compressed (with `.gz`) where `gz` says so.
fn write_mnist_dir(dir: &Path, files: &[Vec<u8>; 4], gz: [bool; 4]) {
    for ((name, bytes), gz) in MNIST_FILES.iter().zip(files).zip(gz) {
        if gz {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

fn check_mnist_like(splits: &Splits) {
    assert_eq!(splits.train.len(), 5);
    assert_eq!(splits.test.len(), 3);
    assert_eq!(splits.train.shape(), [1, 28, 28]);
    assert_eq!(splits.test.shape(), [1, 28, 28]);
    assert_eq!(splits.train.labels(), TRAIN_LABELS);
    assert_eq!(splits.test.labels(), TEST_LABELS);
    for (set, count) in [(&splits.train, 5), (&splits.test, 3)] {
        for i in 0..count {
            let image = set.image(i);
            assert_eq!(image.len(), 784);
            for (k, &v) in image.iter().enumerate() {
                assert_eq!(v, f32::from(pixel(i, k)) / 255.0, "image {i} pixel {k}");
            }
        }
    }
}

#[test]
fn idx_raw_round_trip() {
    let dir = TempDir::new("idx-raw");
    write_mnist_dir(dir.path(), &mnist_like_files(), [false; 4]);
    check_mnist_like(&load_mnist_dir(dir.path()).unwrap());
}

#[test]
fn idx_gz_round_trip() {
    let dir = TempDir::new("idx-gz");
    write_mnist_dir(dir.path(), &mnist_like_files(), [true; 4]);
    check_mnist_like(&load_mnist_dir(dir.path()).unwrap());
    let splits = load(
        DatasetName::FashionMnist,
        &DataSource::Dir(dir.path().into()),
    )
    .unwrap();
    check_mnist_like(&splits);
}

#[test]
fn idx_mixed_and_dotted_names() {
    let dir = TempDir::new("idx-dotted");
    let files = mnist_like_files();
    for (i, (name, bytes)) in MNIST_FILES.iter().zip(&files).enumerate() {
        let dotted = name.replacen("-idx", ".idx", 1);
        if i % 2 == 0 {
            std::fs::write(dir.path().join(dotted), bytes).unwrap();
        } else {
            std::fs::write(dir.path().join(format!("{dotted}.gz")), gzip(bytes)).unwrap();
        }
    }
    check_mnist_like(&load_mnist_dir(dir.path()).unwrap());
}

/// A directory with 2 training images of size `train` (H, W) and 1 test image of size `test`.
fn sized_dir(name: &str, train: (usize, usize), test: (usize, usize)) -> TempDir {
    let dir = TempDir::new(name);
    let files = [
        idx_images(2, train.0, train.1),
        idx_labels(&[1, 2]),
        idx_images(1, test.0, test.1),
        idx_labels(&[3]),
    ];
    write_mnist_dir(dir.path(), &files, [false; 4]);
    dir
}

#[test]
fn idx_other_image_size_is_refused_for_mnist() {
    let dir = sized_dir("idx-size", (4, 3), (4, 3));
    // The generic IDX loader reads any size ...
    let splits = load_mnist_dir(dir.path()).unwrap();
    assert_eq!(splits.train.shape(), [1, 4, 3]);
    // ... but as MNIST it must be 28x28.
    let err = load(DatasetName::Mnist, &DataSource::Dir(dir.path().into())).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::WrongShape {
                found: [1, 4, 3],
                expected: [1, 28, 28],
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn idx_train_and_test_sizes_must_agree() {
    let dir = sized_dir("idx-size-mismatch", (28, 28), (27, 28));
    let err = load_mnist_dir(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::WrongShape { .. }), "{err}");
}

/// Load a directory with the standard files, where `corrupt` changes file `which` (raw names).
fn load_corrupted(
    name: &str,
    which: usize,
    corrupt: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> (DataError, TempDir) {
    let dir = TempDir::new(name);
    let mut files = mnist_like_files();
    files[which] = corrupt(std::mem::take(&mut files[which]));
    write_mnist_dir(dir.path(), &files, [false; 4]);
    (load_mnist_dir(dir.path()).unwrap_err(), dir)
}

/// Assert that an error's message mentions every given part (file names, the problem).
fn assert_mentions(err: &DataError, parts: &[&str]) {
    let msg = err.to_string();
    for part in parts {
        assert!(msg.contains(part), "`{msg}` does not mention `{part}`");
    }
}

#[test]
fn idx_wrong_magic_names_the_file() {
    // A label file where the images should be.
    let (err, _dir) = load_corrupted("magic", 0, |_| idx_labels(&TRAIN_LABELS));
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                found: 0x801,
                expected: 0x803,
                ..
            }
        ),
        "{err}"
    );
    assert_mentions(&err, &["train-images-idx3-ubyte", "magic"]);
}

#[test]
fn idx_truncated_file_names_the_file() {
    let (err, _dir) = load_corrupted("truncated", 2, |mut b| {
        b.truncate(b.len() - 100);
        b
    });
    assert!(matches!(err, DataError::Truncated { .. }), "{err}");
    assert_mentions(&err, &["t10k-images-idx3-ubyte", "truncated"]);

    let (err, _dir) = load_corrupted("truncated-header", 1, |mut b| {
        b.truncate(6);
        b
    });
    assert!(
        matches!(
            err,
            DataError::Truncated {
                expected: 8,
                actual: 6,
                ..
            }
        ),
        "{err}"
    );
    assert_mentions(&err, &["train-labels-idx1-ubyte"]);
}

#[test]
fn idx_trailing_bytes_are_an_error() {
    let (err, _dir) = load_corrupted("trailing", 3, |mut b| {
        b.push(0);
        b
    });
    assert!(matches!(err, DataError::Format { .. }), "{err}");
    assert_mentions(&err, &["t10k-labels-idx1-ubyte"]);
}

#[test]
fn idx_count_mismatch_names_both_files() {
    let (err, _dir) = load_corrupted("count", 1, |_| idx_labels(&[1, 2, 3, 4]));
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                image_count: 5,
                label_count: 4,
                ..
            }
        ),
        "{err}"
    );
    assert_mentions(
        &err,
        &["train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
    );
}

#[test]
fn idx_label_out_of_range() {
    let (err, _dir) = load_corrupted("label-range", 3, |_| idx_labels(&[7, 10, 1]));
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 10,
                classes: 10,
                ..
            }
        ),
        "{err}"
    );
    assert_mentions(&err, &["t10k-labels-idx1-ubyte"]);
}

#[test]
fn idx_missing_file_lists_the_names_looked_for() {
    let dir = TempDir::new("missing");
    write_mnist_dir(dir.path(), &mnist_like_files(), [false; 4]);
    std::fs::remove_file(dir.path().join("train-labels-idx1-ubyte")).unwrap();
    let err = load_mnist_dir(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err}");
    let msg = err.to_string();
    for name in [
        "train-labels-idx1-ubyte",
        "train-labels-idx1-ubyte.gz",
        "train-labels.idx1-ubyte",
    ] {
        assert!(msg.contains(name), "{msg} lacks {name}");
    }
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");

    let err = load_mnist_dir(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err}");
    assert_mentions(&err, &["nope"]);
}

#[test]
fn idx_bad_gzip_names_the_file() {
    let dir = TempDir::new("bad-gz");
    let files = mnist_like_files();
    write_mnist_dir(dir.path(), &files, [false, true, true, true]);
    // Not gzip at all, though named .gz.
    std::fs::write(dir.path().join("train-labels-idx1-ubyte.gz"), &files[1]).unwrap();
    let err = load_mnist_dir(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err}");
    assert_mentions(&err, &["train-labels-idx1-ubyte.gz"]);

    // A gzip stream cut short.
    let gz = gzip(&files[1]);
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte.gz"),
        &gz[..gz.len() / 2],
    )
    .unwrap();
    let err = load_mnist_dir(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err}");
    assert_mentions(&err, &["train-labels-idx1-ubyte.gz"]);

    // A damaged gzip stream (CRC no longer matches).
    std::fs::write(dir.path().join("train-labels-idx1-ubyte.gz"), &gz).unwrap();
    let mut gz = gzip(&files[2]);
    let at = gz.len() - 6;
    gz[at] ^= 0xff;
    std::fs::write(dir.path().join("t10k-images-idx3-ubyte.gz"), &gz).unwrap();
    let err = load_mnist_dir(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err}");
    assert_mentions(&err, &["t10k-images-idx3-ubyte.gz"]);
}

/// A CIFAR-10 record: label then 3072 pixel bytes derived from (batch, item).
fn cifar_record(label: u8, batch: usize, item: usize) -> Vec<u8> {
    let mut out = vec![label];
    out.extend((0..3072).map(|k| pixel(batch * 10 + item, k)));
    out
}

/// Write the six CIFAR-10 batches (2 records each for training, 3 for test) into `dir`.
fn write_cifar(dir: &Path) {
    for batch in 0..6 {
        let count = if batch < 5 { 2 } else { 3 };
        let bytes: Vec<u8> = (0..count)
            .flat_map(|item| cifar_record(((batch * 3 + item) % 10) as u8, batch, item))
            .collect();
        let name = if batch < 5 {
            format!("data_batch_{}.bin", batch + 1)
        } else {
            "test_batch.bin".to_string()
        };
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn check_cifar(splits: &Splits) {
    assert_eq!(splits.train.len(), 10);
    assert_eq!(splits.test.len(), 3);
    assert_eq!(splits.train.shape(), [3, 32, 32]);
    let expected_train: Vec<u8> = (0..5)
        .flat_map(|b| (0..2).map(move |i| ((b * 3 + i) % 10) as u8))
        .collect();
    assert_eq!(splits.train.labels(), expected_train);
    assert_eq!(splits.test.labels(), [5, 6, 7]);
    // CHW order: value at (c, y, x) is record byte 1 + c*1024 + y*32 + x.
    let image = splits.train.image(7); // batch 3 (0-based), item 1
    for (c, y, x) in [(0, 0, 0), (1, 5, 7), (2, 31, 31)] {
        let k = c * 1024 + y * 32 + x;
        assert_eq!(image[k], f32::from(pixel(31, k)) / 255.0);
    }
    let test_image = splits.test.image(2);
    assert_eq!(test_image[3000], f32::from(pixel(52, 3000)) / 255.0);
}

#[test]
fn cifar_round_trip_flat_and_nested() {
    let dir = TempDir::new("cifar-flat");
    write_cifar(dir.path());
    check_cifar(&load_cifar10_dir(dir.path()).unwrap());

    let dir = TempDir::new("cifar-nested");
    let nested = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&nested).unwrap();
    write_cifar(&nested);
    check_cifar(&load_cifar10_dir(dir.path()).unwrap());
    let splits = load(DatasetName::Cifar10, &DataSource::Dir(dir.path().into())).unwrap();
    check_cifar(&splits);
}

#[test]
fn cifar_wrong_record_size_names_the_file() {
    let dir = TempDir::new("cifar-size");
    write_cifar(dir.path());
    // 32x32 grey records (1 + 1024 bytes) are not CIFAR-10 records.
    std::fs::write(dir.path().join("data_batch_3.bin"), vec![1u8; 2 * 1025]).unwrap();
    let err = load_cifar10_dir(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::RecordSize {
                len: 2050,
                record: 3073,
                ..
            }
        ),
        "{err}"
    );
    assert_mentions(&err, &["data_batch_3.bin"]);

    // A truncated last record is the same error.
    let mut bytes = cifar_record(1, 0, 0);
    bytes.extend(&cifar_record(2, 0, 1)[..100]);
    std::fs::write(dir.path().join("data_batch_3.bin"), bytes).unwrap();
    let err = load_cifar10_dir(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::RecordSize { .. }), "{err}");

    std::fs::write(dir.path().join("data_batch_3.bin"), []).unwrap();
    let err = load_cifar10_dir(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err}");
    assert_mentions(&err, &["data_batch_3.bin"]);
}

#[test]
fn cifar_label_out_of_range_and_missing_file() {
    let dir = TempDir::new("cifar-label");
    write_cifar(dir.path());
    let mut bytes = cifar_record(3, 5, 0);
    bytes.extend(cifar_record(12, 5, 1));
    std::fs::write(dir.path().join("test_batch.bin"), bytes).unwrap();
    let err = load_cifar10_dir(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 12,
                ..
            }
        ),
        "{err}"
    );
    assert_mentions(&err, &["test_batch.bin"]);

    std::fs::remove_file(dir.path().join("test_batch.bin")).unwrap();
    let err = load_cifar10_dir(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err}");
    assert_mentions(
        &err,
        &["test_batch.bin", "cifar-10-batches-bin/test_batch.bin"],
    );
}

#[test]
fn embedded_mnist_is_the_real_subset() {
    let start = Instant::now();
    let splits = embedded_mnist().unwrap();
    eprintln!("embedded_mnist: {:?}", start.elapsed());
    assert_eq!(splits.train.len(), 10_000);
    assert_eq!(splits.test.len(), 2_000);
    assert_eq!(splits.train.shape(), [1, 28, 28]);
    // Class counts of the first 10,000 / 2,000 MNIST items.
    assert_eq!(
        class_counts(splits.train.labels()),
        [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    );
    assert_eq!(
        class_counts(splits.test.labels()),
        [175, 234, 219, 207, 217, 179, 178, 205, 192, 194]
    );
    assert_eq!(&splits.train.labels()[..10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(&splits.test.labels()[..10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    for set in [&splits.train, &splits.test] {
        assert!(set.images().iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(set.images().iter().cloned().fold(0.0, f32::max), 1.0);
    }
    // The first training image is MNIST's "5": 166 ink pixels summing to 27525/255.
    let first = splits.train.image(0);
    let bytes: Vec<u8> = first.iter().map(|v| (v * 255.0).round() as u8).collect();
    assert_eq!(bytes.iter().filter(|&&b| b > 0).count(), 166);
    assert_eq!(bytes.iter().map(|&b| u32::from(b)).sum::<u32>(), 27525);
    assert_eq!(
        &bytes[14 * 28 + 13..14 * 28 + 19],
        [81, 240, 253, 253, 119, 25]
    );

    let via_load = load(DatasetName::Mnist, &DataSource::Default).unwrap();
    assert_eq!(via_load.train, splits.train);
    let via_embedded = load(DatasetName::Mnist, &DataSource::Embedded).unwrap();
    assert_eq!(via_embedded.test, splits.test);
}

fn class_counts(labels: &[u8]) -> [usize; 10] {
    let mut counts = [0; 10];
    for &l in labels {
        counts[usize::from(l)] += 1;
    }
    counts
}

/// A small dataset whose image i is filled with the value i (so items are recognisable).
fn numbered(len: usize) -> Dataset {
    let images = (0..len)
        .flat_map(|i| std::iter::repeat_n(i as f32, 4))
        .collect();
    let labels = (0..len).map(|i| (i % 10) as u8).collect();
    Dataset::new(images, labels, [1, 2, 2]).unwrap()
}

fn ids(set: &Dataset) -> Vec<usize> {
    (0..set.len()).map(|i| set.image(i)[0] as usize).collect()
}

#[test]
fn split_is_deterministic_disjoint_and_covering() {
    let set = numbered(1000);
    let (train, validation) = set.split(200, 7);
    assert_eq!((train.len(), validation.len()), (800, 200));
    let (train2, validation2) = set.split(200, 7);
    assert_eq!(ids(&train), ids(&train2));
    assert_eq!(ids(&validation), ids(&validation2));
    let (_, validation3) = set.split(200, 8);
    assert_ne!(ids(&validation), ids(&validation3));

    let mut all: Vec<usize> = ids(&train).into_iter().chain(ids(&validation)).collect();
    all.sort_unstable();
    assert_eq!(all, (0..1000).collect::<Vec<_>>());
    // Parts keep the original order, labels travel with their images.
    assert!(ids(&validation).windows(2).all(|w| w[0] < w[1]));
    for (i, id) in ids(&train).into_iter().enumerate() {
        assert_eq!(usize::from(train.labels()[i]), id % 10);
    }
    // Not just the first or last 200.
    assert!(
        ids(&validation).iter().any(|&i| i < 200) && ids(&validation).iter().any(|&i| i >= 800)
    );

    let (train, validation) = set.split(5000, 1);
    assert_eq!((train.len(), validation.len()), (0, 1000));
}

#[test]
fn split_is_pinned_across_machines() {
    // The permutation is our own (SplitMix64 + Fisher-Yates): these indices must never drift.
    let (_, validation) = numbered(20).split(5, 2024);
    let pinned = ids(&validation);
    assert_eq!(pinned, ids(&numbered(20).split(5, 2024).1));
    assert_eq!(data::permutation(10, 42), [0, 9, 5, 8, 6, 4, 7, 2, 1, 3]);
}

#[test]
fn take_and_sample() {
    let set = numbered(100);
    assert_eq!(ids(&set.take(3)), [0, 1, 2]);
    assert_eq!(set.take(1000).len(), 100);
    let a = set.sample(10, 3);
    assert_eq!(a.len(), 10);
    assert_eq!(ids(&a), ids(&set.sample(10, 3)));
    assert_ne!(ids(&a), ids(&set.sample(10, 4)));
    let mut unique = ids(&a);
    unique.dedup();
    assert_eq!(unique.len(), 10);
    // A smaller sample with the same seed is contained in the larger one.
    let small = ids(&set.sample(4, 3));
    assert!(small.iter().all(|i| ids(&a).contains(i)));
    assert_eq!(set.sample(500, 3).len(), 100);
    assert_eq!(ids(&set.subset(&[5, 2, 5])), [5, 2, 5]);
}

#[test]
fn shuffled_batches_cover_everything_once() {
    let batches = shuffled_batches(10, 4, 1);
    assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
    let mut all: Vec<usize> = batches.concat();
    assert_ne!(all, (0..10).collect::<Vec<_>>());
    all.sort_unstable();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    assert_eq!(batches, shuffled_batches(10, 4, 1));
    assert_ne!(batches, shuffled_batches(10, 4, 2));
    assert!(shuffled_batches(0, 4, 1).is_empty());
}

#[test]
fn batches_become_tensors() {
    let set = numbered(6);
    let (images, labels) = set.batch(&[4, 1]).unwrap();
    assert_eq!(images.dims(), [2, 1, 2, 2]);
    assert_eq!(images.dtype(), candle_core::DType::F32);
    assert_eq!(labels.dtype(), candle_core::DType::U32);
    assert_eq!(labels.to_vec1::<u32>().unwrap(), [4, 1]);
    let flat: Vec<f32> = images.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(flat, [4.0, 4.0, 4.0, 4.0, 1.0, 1.0, 1.0, 1.0]);
    let err = set.batch(&[0, 6]).unwrap_err();
    assert!(
        matches!(err, DataError::IndexOutOfRange { index: 6, len: 6 }),
        "{err}"
    );

    let (images, labels) = set.tensors().unwrap();
    assert_eq!(images.dims(), [6, 1, 2, 2]);
    assert_eq!(labels.to_vec1::<u32>().unwrap(), [0, 1, 2, 3, 4, 5]);
}

#[test]
fn dataset_new_validates_lengths() {
    assert!(matches!(
        Dataset::new(vec![0.0; 7], vec![1, 2], [1, 2, 2]),
        Err(DataError::InvalidDataset(_))
    ));
    assert!(matches!(
        Dataset::new(vec![], vec![], [0, 2, 2]),
        Err(DataError::InvalidDataset(_))
    ));
    let empty = Dataset::new(vec![], vec![], [1, 2, 2]).unwrap();
    assert!(empty.is_empty());
}

#[test]
fn dataset_names_describe_the_data() {
    assert_eq!(DatasetName::Mnist.input_shape(), [1, 28, 28]);
    assert_eq!(DatasetName::Cifar10.input_shape(), [3, 32, 32]);
    assert_eq!(DatasetName::FashionMnist.num_classes(), 10);
    assert_eq!(DatasetName::Mnist.normalization(), None);
    let (mean, std) = DatasetName::Cifar10.normalization().unwrap();
    assert_eq!(mean, [0.4914, 0.4822, 0.4465]);
    assert_eq!(std, [0.2470, 0.2435, 0.2616]);
    assert_eq!(
        "Fashion-MNIST".parse::<DatasetName>().unwrap().to_string(),
        "fashion-mnist"
    );
    let err = "svhn".parse::<DatasetName>().unwrap_err();
    assert!(matches!(err, DataError::UnknownDataset { .. }));
    assert_eq!(DataSource::from(None), DataSource::Default);
    let err = load(DatasetName::FashionMnist, &DataSource::Embedded).unwrap_err();
    assert!(matches!(err, DataError::NoSource { .. }), "{err}");
}

/// Uses the Debian package's files when they are installed; passes trivially otherwise.
#[test]
fn fashion_mnist_from_debian_if_installed() {
    if !Path::new(data::DEBIAN_FASHION_MNIST_DIR).is_dir() {
        eprintln!("skipping: {} not installed", data::DEBIAN_FASHION_MNIST_DIR);
        return;
    }
    let start = Instant::now();
    let splits = load(DatasetName::FashionMnist, &DataSource::Default).unwrap();
    eprintln!("fashion-mnist (gz, Debian): {:?}", start.elapsed());
    assert_eq!((splits.train.len(), splits.test.len()), (60_000, 10_000));
    assert_eq!(class_counts(splits.train.labels()), [6000; 10]);
    // Fashion-MNIST's first training item is an ankle boot (class 9).
    assert_eq!(splits.train.labels()[0], 9);
}

/// Full MNIST, where the team keeps it (`scripts/make_embedded_mnist.py --full-out`): the
/// embedded subset must be exactly its first 10,000 / 2,000 items.
#[test]
fn embedded_is_a_prefix_of_full_mnist_if_present() {
    let dir = std::env::var_os("CTHPO_MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/datasets/mnist"));
    if !dir.is_dir() {
        eprintln!("skipping: no full MNIST at {}", dir.display());
        return;
    }
    let start = Instant::now();
    let full = load(DatasetName::Mnist, &DataSource::Dir(dir)).unwrap();
    eprintln!("full MNIST (raw): {:?}", start.elapsed());
    assert_eq!((full.train.len(), full.test.len()), (60_000, 10_000));
    let embedded = embedded_mnist().unwrap();
    assert_eq!(full.train.take(10_000), embedded.train);
    assert_eq!(full.test.take(2_000), embedded.test);
}

/// Load-time measurement (best of 5): `cargo test --release --test data -- --ignored --nocapture load_times`.
#[test]
#[ignore]
fn load_times() {
    fn best(what: &str, mut f: impl FnMut()) {
        let best = (0..5)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .min()
            .unwrap();
        eprintln!("{what}: best of 5 = {best:?}");
    }
    best("embedded mnist (10k+2k, gz)", || {
        embedded_mnist().unwrap();
    });
    let full = PathBuf::from("/work/datasets/mnist");
    if full.is_dir() {
        best("full mnist (60k+10k, raw)", || {
            load_mnist_dir(&full).unwrap();
        });
    }
    let fashion = Path::new(data::DEBIAN_FASHION_MNIST_DIR);
    if fashion.is_dir() {
        best("fashion-mnist (60k+10k, gz)", || {
            load_mnist_dir(fashion).unwrap();
        });
    }
}
