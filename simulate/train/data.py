"""Datasets for the training experiments, with fixed train/test splits and one normalisation.

- ``digits`` (default): scikit-learn's bundled 8 x 8 digits (1797 images, 10 classes, no download).
  Fixed split by position: the first 1437 images train, the last 360 test (the images are grouped by
  writer, so the test writers are mostly unseen; 33 to 37 test images per class).
- ``fashion-mnist``: 28 x 28 images from IDX files (the standard 60000 / 10000 split), by default
  from /usr/share/datasets/fashion-mnist, as installed by ``apt-get install dataset-fashion-mnist``.
  ``train_size`` / ``test_size`` keep the first images of each split.

Normalisation (both): each pixel is standardised with the training set's mean and standard
deviation (pixels constant on the training set are only centred), then every value is multiplied by
one constant c so that the training inputs have mean square 1:

    x'_ij = c (x_ij - mu_j) / s_j,   s_j = sd_j or 1 if sd_j = 0,   c^-2 = mean_ij ((x_ij - mu_j) / s_j)^2

over the training set; the test set uses the same mu, s and c. So mean(x'^2) = 1 on the training
set (on the test set it comes out near 1: 0.85 for digits), which is what
:func:`simulate.train.init.initialise` assumes by default (``input_ms = 1``).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("digits", "fashion-mnist")
"""Allowed dataset names."""

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_APT = "apt-get install dataset-fashion-mnist"
FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
DIGITS_TEST = 360
"""The last DIGITS_TEST digits images are the test set."""

_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
"""IDX type byte -> numpy dtype (big-endian, as the format stores numbers)."""


class MissingDataError(ValueError):
    """A dataset's files are not where they were looked for (the message says how to get them)."""


@dataclass(frozen=True)
class Dataset:
    """Normalised float32 inputs (n, d) and int32 labels (n,) of a fixed train/test split."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def input_dim(self) -> int:
        return self.x_train.shape[1]


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw, told apart by the gzip magic bytes 1f 8b).

    Format: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions D, D big-endian uint32 sizes, then the values, big-endian,
    in C order. Raises ValueError on a malformed or truncated file.
    """
    path = Path(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with (gzip.open if gzipped else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions)")
    shape = tuple(int(n) for n in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX size {len(raw)} bytes, expected {expected} for shape {shape} {dtype}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_dataset(
    name: str = "digits",
    data_dir=None,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
) -> Dataset:
    """The named dataset (module docstring), normalised. ``data_dir`` (fashion-mnist only) replaces
    the default directory; ``train_size`` / ``test_size`` keep the first images of each split.

    Raises ValueError on a bad argument and MissingDataError (a ValueError) with a one-line message
    naming the apt command when the Fashion-MNIST files are missing.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r}: must be one of {', '.join(DATASETS)}")
    for field, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ValueError(f"{field}={size!r}: must be an integer >= 1 or None (all)")
    if name == "digits":
        if data_dir is not None:
            raise ValueError(
                f"data={data_dir!r}: only for fashion-mnist (digits ships with sklearn)"
            )
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        split = x.shape[0] - DIGITS_TEST
        arrays = x[:split], y[:split], x[split:], y[split:]
    else:
        arrays = _fashion_arrays(Path(data_dir) if data_dir is not None else FASHION_DIR)
    x_train, y_train, x_test, y_test = arrays
    x_train, y_train = x_train[:train_size], y_train[:train_size]
    x_test, y_test = x_test[:test_size], y_test[:test_size]
    x_train, x_test = normalise(x_train, x_test)
    return Dataset(name, x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32))


def _fashion_arrays(directory: Path):
    """(x_train, y_train, x_test, y_test) from the four IDX files (each .gz or raw) in ``directory``,
    images flattened to rows."""
    paths = {}
    for key, stem in FASHION_FILES.items():
        found = [directory / f"{stem}{ext}" for ext in (".gz", "")]
        found = [p for p in found if p.is_file()]
        if not found:
            raise MissingDataError(
                f"data={os.fspath(directory)!r}: no Fashion-MNIST file {stem}[.gz] there; "
                f"install it with `{FASHION_APT}` or pass --data DIR"
            )
        paths[key] = found[0]
    out = []
    for key in FASHION_FILES:
        a = read_idx(paths[key])
        out.append(a.reshape(a.shape[0], -1) if key.startswith("x") else a)
    return tuple(out)


def normalise(x_train, x_test) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel standardisation with training statistics, then one scale so that the training inputs
    have mean square 1 (module docstring). Returns float32 arrays."""
    x_train = np.asarray(x_train, dtype=np.float64)
    x_test = np.asarray(x_test, dtype=np.float64)
    mu = x_train.mean(axis=0)
    sd = x_train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    z_train = (x_train - mu) / sd
    c = 1.0 / np.sqrt(np.mean(z_train**2))
    return (c * z_train).astype(np.float32), (c * (x_test - mu) / sd).astype(np.float32)
