//! IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed, and the embedded MNIST subset.

use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::dataset::bytes_to_unit_f32;
use super::{DataError, Dataset, Splits};

/// Standard IDX file names in the order train images, train labels, test images, test labels.
pub const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// What each of [`MNIST_FILES`] holds, for error messages.
const MNIST_FILE_ROLES: [&str; 4] = [
    "training images",
    "training labels",
    "test images",
    "test labels",
];

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
const IMAGE_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
const LABEL_MAGIC: u32 = 0x0000_0801;
/// Labels of the MNIST family are `0..CLASSES`.
const CLASSES: usize = 10;
/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Largest output buffer we pre-allocate from a gzip trailer's size field.
const MAX_PREALLOC: usize = 1 << 30;

/// Where the embedded files claim to live in error messages.
const EMBEDDED_PREFIX: &str = "<embedded mnist>";

static EMBEDDED: [&[u8]; 4] = [
    include_bytes!("../../data/embedded/mnist/train-images-idx3-ubyte.gz"),
    include_bytes!("../../data/embedded/mnist/train-labels-idx1-ubyte.gz"),
    include_bytes!("../../data/embedded/mnist/t10k-images-idx3-ubyte.gz"),
    include_bytes!("../../data/embedded/mnist/t10k-labels-idx1-ubyte.gz"),
];

/// The MNIST subset compiled into the binary: the first 10,000 training and 2,000 test images.
pub fn embedded_mnist() -> Result<Splits, DataError> {
    let paths = MNIST_FILES.map(|name| Path::new(EMBEDDED_PREFIX).join(format!("{name}.gz")));
    decode_splits(
        (&paths[0], Cow::Borrowed(EMBEDDED[0])),
        (&paths[1], Cow::Borrowed(EMBEDDED[1])),
        (&paths[2], Cow::Borrowed(EMBEDDED[2])),
        (&paths[3], Cow::Borrowed(EMBEDDED[3])),
    )
}

/// Load MNIST or Fashion-MNIST from a directory holding the four IDX files (raw or `.gz`).
///
/// Each file may be named the standard way (`train-images-idx3-ubyte`), with a dot before
/// `idx` (`train-images.idx3-ubyte`), and either with `.gz` appended.
pub fn load_mnist_dir(dir: &Path) -> Result<Splits, DataError> {
    if !dir.is_dir() {
        return Err(DataError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let mut paths = Vec::with_capacity(4);
    for (name, role) in MNIST_FILES.iter().zip(MNIST_FILE_ROLES) {
        paths.push(find_file(dir, name, role)?);
    }
    let read = |i: usize| -> Result<Vec<u8>, DataError> {
        std::fs::read(&paths[i]).map_err(|source| DataError::Io {
            path: paths[i].clone(),
            source,
        })
    };
    let ((train_images, train_labels), (test_images, test_labels)) = rayon::join(
        || rayon::join(|| read(0), || read(1)),
        || rayon::join(|| read(2), || read(3)),
    );
    decode_splits(
        (&paths[0], Cow::Owned(train_images?)),
        (&paths[1], Cow::Owned(train_labels?)),
        (&paths[2], Cow::Owned(test_images?)),
        (&paths[3], Cow::Owned(test_labels?)),
    )
}

/// The first existing file among the accepted spellings of `name` in `dir`.
fn find_file(dir: &Path, name: &str, role: &str) -> Result<PathBuf, DataError> {
    let dotted = name.replacen("-idx", ".idx", 1);
    let candidates = [
        name.to_string(),
        format!("{name}.gz"),
        dotted.clone(),
        format!("{dotted}.gz"),
    ];
    for candidate in &candidates {
        let path = dir.join(candidate);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(DataError::MissingFile {
        dir: dir.to_path_buf(),
        what: role.to_string(),
        looked_for: candidates.join(", "),
    })
}

/// A file's name and its raw (possibly compressed) bytes.
type Raw<'a> = (&'a Path, Cow<'a, [u8]>);

/// Decode the four files into train and test sets, in parallel.
fn decode_splits(
    train_images: Raw<'_>,
    train_labels: Raw<'_>,
    test_images: Raw<'_>,
    test_labels: Raw<'_>,
) -> Result<Splits, DataError> {
    let (train, test) = rayon::join(
        || decode_set(train_images, train_labels),
        || decode_set(test_images, test_labels),
    );
    let (train, test) = (train?, test?);
    if train.shape() != test.shape() {
        return Err(DataError::WrongShape {
            what: "test images".to_string(),
            found: test.shape(),
            expected: train.shape(),
        });
    }
    Ok(Splits { train, test })
}

/// Decode one image file and its label file into a dataset.
fn decode_set(images: Raw<'_>, labels: Raw<'_>) -> Result<Dataset, DataError> {
    let (image_path, label_path) = (images.0, labels.0);
    let (images, labels) = rayon::join(
        || -> Result<(Vec<f32>, usize, [usize; 3]), DataError> {
            let bytes = gunzip_if_needed(image_path, images.1)?;
            let (dims, header) = parse_header(image_path, &bytes, IMAGE_MAGIC)?;
            let (count, height, width) = (dims[0], dims[1], dims[2]);
            if height == 0 || width == 0 {
                return Err(DataError::Format {
                    path: image_path.to_path_buf(),
                    problem: format!("image size {height}x{width} has a zero side"),
                });
            }
            Ok((
                bytes_to_unit_f32(&bytes[header..]),
                count,
                [1, height, width],
            ))
        },
        || -> Result<Vec<u8>, DataError> {
            let bytes = gunzip_if_needed(label_path, labels.1)?;
            let (_, header) = parse_header(label_path, &bytes, LABEL_MAGIC)?;
            let labels = bytes[header..].to_vec();
            check_labels(label_path, &labels)?;
            Ok(labels)
        },
    );
    let (images, image_count, shape) = images?;
    let labels = labels?;
    if image_count != labels.len() {
        return Err(DataError::CountMismatch {
            images: image_path.to_path_buf(),
            image_count,
            labels: label_path.to_path_buf(),
            label_count: labels.len(),
        });
    }
    if image_count == 0 {
        return Err(DataError::Format {
            path: image_path.to_path_buf(),
            problem: "holds no images".to_string(),
        });
    }
    Dataset::new(images, labels, shape)
}

/// Fail on the first label that is not a class index.
pub(super) fn check_labels(path: &Path, labels: &[u8]) -> Result<(), DataError> {
    match labels.iter().position(|&l| usize::from(l) >= CLASSES) {
        Some(index) => Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            index,
            label: labels[index],
            classes: CLASSES,
        }),
        None => Ok(()),
    }
}

/// Decompress gzip data (recognised by its magic bytes); pass anything else through.
///
/// A file whose name ends in `.gz` but that is not gzip is an error rather than read raw.
pub(super) fn gunzip_if_needed<'a>(
    path: &Path,
    raw: Cow<'a, [u8]>,
) -> Result<Cow<'a, [u8]>, DataError> {
    let is_gz_name = path.extension().is_some_and(|ext| ext == "gz");
    if !raw.starts_with(&GZIP_MAGIC) {
        if is_gz_name {
            return Err(DataError::Gzip {
                path: path.to_path_buf(),
                problem: "not a gzip file (it does not start with the gzip magic bytes 1f 8b)"
                    .to_string(),
            });
        }
        return Ok(raw);
    }
    // The trailer's last four bytes hold the uncompressed size modulo 2^32: a good capacity hint.
    let hint = raw
        .len()
        .checked_sub(4)
        .map(|at| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]) as usize)
        .unwrap_or(0)
        .min(MAX_PREALLOC);
    let mut out = Vec::with_capacity(hint);
    MultiGzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .map_err(|e| DataError::Gzip {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
    Ok(Cow::Owned(out))
}

/// Check an IDX header against the expected magic and the data length; return (dims, header length).
fn parse_header(path: &Path, bytes: &[u8], magic: u32) -> Result<(Vec<usize>, usize), DataError> {
    let truncated = |expected: usize| DataError::Truncated {
        path: path.to_path_buf(),
        expected: expected as u64,
        actual: bytes.len() as u64,
    };
    if bytes.len() < 4 {
        return Err(truncated(4));
    }
    let found = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found,
            expected: magic,
            meaning: if magic == IMAGE_MAGIC {
                "IDX image file: unsigned bytes, 3 dimensions"
            } else {
                "IDX label file: unsigned bytes, 1 dimension"
            },
        });
    }
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(truncated(header));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let payload = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|p| p.checked_add(header))
        .ok_or_else(|| DataError::Format {
            path: path.to_path_buf(),
            problem: format!("header dimensions {dims:?} are impossibly large"),
        })?;
    if bytes.len() < payload {
        return Err(truncated(payload));
    }
    if bytes.len() > payload {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            problem: format!(
                "{} bytes after the {payload} that the header's dimensions {dims:?} account for",
                bytes.len() - payload
            ),
        });
    }
    Ok((dims, header))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn header_accepts_exact_sizes_only() {
        let p = Path::new("x");
        let ok = idx(IMAGE_MAGIC, &[2, 2, 3], &[0; 12]);
        assert_eq!(
            parse_header(p, &ok, IMAGE_MAGIC).unwrap(),
            (vec![2, 2, 3], 16)
        );
        let short = idx(IMAGE_MAGIC, &[2, 2, 3], &[0; 11]);
        assert!(matches!(
            parse_header(p, &short, IMAGE_MAGIC),
            Err(DataError::Truncated {
                expected: 28,
                actual: 27,
                ..
            })
        ));
        let long = idx(IMAGE_MAGIC, &[2, 2, 3], &[0; 13]);
        assert!(matches!(
            parse_header(p, &long, IMAGE_MAGIC),
            Err(DataError::Format { .. })
        ));
        let huge = idx(IMAGE_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[]);
        assert!(parse_header(p, &huge, IMAGE_MAGIC).is_err());
        assert!(matches!(
            parse_header(p, &ok, LABEL_MAGIC),
            Err(DataError::BadMagic {
                found: IMAGE_MAGIC,
                expected: LABEL_MAGIC,
                ..
            })
        ));
    }

    #[test]
    fn raw_bytes_pass_through_and_gz_name_must_be_gzip() {
        let raw = gunzip_if_needed(Path::new("a"), Cow::Borrowed(&[1u8, 2, 3][..])).unwrap();
        assert_eq!(&*raw, &[1, 2, 3]);
        let err = gunzip_if_needed(Path::new("a.gz"), Cow::Borrowed(&[1u8, 2, 3][..])).unwrap_err();
        assert!(err.to_string().starts_with("a.gz: bad gzip data"), "{err}");
    }

    #[test]
    fn embedded_files_are_gzip() {
        for bytes in EMBEDDED {
            assert!(bytes.starts_with(&GZIP_MAGIC));
        }
    }
}
