"""Datasets: the IDX reader on tiny files the test writes (raw and gzip), the Fashion-MNIST loader on
such files, the missing-data message, the fixed digits split and the stated normalisation."""

import gzip
import struct

import numpy as np
import pytest

from simulate.train.data import (
    FASHION_APT,
    FASHION_DIR,
    MissingDataError,
    load_dataset,
    normalise,
    read_idx,
)

TYPE_BYTES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def write_idx(path, array, dtype, gz=False):
    """The IDX format written by hand: 0, 0, type byte, ndim, big-endian uint32 sizes, values."""
    array = np.asarray(array)
    header = bytes([0, 0, TYPE_BYTES[dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    raw = header + array.astype(dtype).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(raw)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype", list(TYPE_BYTES))
def test_idx_round_trip(tmp_path, dtype, gz):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 4, 5)) * 50).astype(np.dtype(dtype).newbyteorder("="))
    if dtype == "u1":
        a = np.abs(a)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, a, dtype, gz)
    b = read_idx(path)
    assert b.shape == a.shape
    assert b.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(b, a)


def test_idx_reader_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    write_idx(short, np.arange(10), "u1")
    short.write_bytes(short.read_bytes()[:-3])
    with pytest.raises(ValueError, match="expected 18 for shape"):
        read_idx(short)


def fake_fashion(directory, n_train=40, n_test=12, gz=True):
    """Four IDX files in the Fashion-MNIST layout, 28 x 28 uint8 images, half of them gzipped."""
    rng = np.random.default_rng(1)
    directory.mkdir(exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    arrays["train-images-idx3-ubyte"][:, 0, 0] = 7  # a constant pixel
    for i, (stem, a) in enumerate(arrays.items()):
        zipped = gz and i % 2 == 0
        write_idx(directory / (stem + (".gz" if zipped else "")), a, "u1", zipped)
    return arrays


def test_fashion_loader_reads_and_normalises(tmp_path):
    arrays = fake_fashion(tmp_path / "fm")
    data = load_dataset("fashion-mnist", tmp_path / "fm", train_size=30, test_size=10)
    assert data.x_train.shape == (30, 784) and data.x_test.shape == (10, 784)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    np.testing.assert_array_equal(data.y_train, arrays["train-labels-idx1-ubyte"][:30])
    np.testing.assert_array_equal(data.y_test, np.arange(10))
    # per-pixel centred on the training set, one scale to mean square 1, constant pixel -> 0
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
    assert np.mean(data.x_train.astype(float) ** 2) == pytest.approx(1.0, rel=1e-6)
    assert not np.any(data.x_train[:, 0])
    sd = data.x_train.std(axis=0)[1:]
    np.testing.assert_allclose(sd, sd[0], rtol=1e-4)  # every non-constant pixel has one scale


def test_normalisation_uses_training_statistics():
    x_train = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    x_test = np.array([[6.0, 3.0]])
    a, b = normalise(x_train, x_test)
    # pixel 0: mean 2, sd sqrt(8/3); pixel 1 constant (centred only); mean square of z is 1/2
    c = np.sqrt(2.0)
    np.testing.assert_allclose(a[:, 0], c * np.array([-2.0, 0.0, 2.0]) / np.sqrt(8 / 3), rtol=1e-6)
    np.testing.assert_allclose(b, [[c * 4.0 / np.sqrt(8 / 3), c * 2.0]], rtol=1e-6)


def test_missing_fashion_files_give_one_line_with_the_apt_command(tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    message = str(err.value)
    assert "\n" not in message and FASHION_APT in message and "nowhere" in message
    assert isinstance(err.value, ValueError)


def test_digits_split_is_fixed_and_normalised():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.x_train.shape == (1437, 64) and a.x_test.shape == (360, 64)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert np.mean(a.x_train.astype(float) ** 2) == pytest.approx(1.0, rel=1e-6)
    assert a.n_classes == 10 and set(np.unique(a.y_test)) == set(range(10))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "mnist"}, "dataset"),
        ({"data_dir": "/tmp"}, "data"),
        ({"train_size": 0}, "train_size"),
        ({"test_size": 2.5}, "test_size"),
    ],
)
def test_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}="):
        load_dataset(**kwargs)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_installed_fashion_mnist():
    data = load_dataset("fashion-mnist", train_size=1000, test_size=500)
    assert data.x_train.shape == (1000, 784) and data.x_test.shape == (500, 784)
    assert data.n_classes == 10
