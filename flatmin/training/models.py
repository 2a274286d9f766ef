"""The networks of Keskar et al. 2017 (F1, F2, C1-C4) and a small MLP, in flax.linen.

Every model maps images or features x, shape (batch, ...) float32, to logits (batch, num_classes)
and is called as ``model.apply(variables, x, train=...)``. Variables: ``params`` and
``batch_stats``. With ``train=True`` batch norm uses the batch's statistics and updates
``batch_stats`` (pass ``mutable=["batch_stats"]``) and dropout needs a ``"dropout"`` rng; with
``train=False`` batch norm uses the running statistics and dropout is off, so the output is a
deterministic function of the parameters, one example at a time.

The input shape is not fixed here: it comes from the array given to ``init``, so the conv nets
also run on 8x8 images. Layer order, widths and dropout rates follow the authors' Keras code
(docs/paper.md). Kernels use Glorot-uniform initialisation, Keras's default
that the authors' code relied on; biases start at zero.
"""

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from flatmin._checks import check_int, check_one_of

# The authors' Keras code normalised with per-batch statistics even at test time, so it never
# depended on the running averages. Here evaluation uses them, and momentum 0.9 (PyTorch's default)
# lets them track the weights within a few dozen steps: large-batch runs take only 10 steps per
# epoch, and a slower average (0.99) would lag behind the parameters being measured.
BN_MOMENTUM = 0.9

_kernel_init = nn.initializers.glorot_uniform()
_Dense = partial(nn.Dense, kernel_init=_kernel_init)
_Conv = partial(nn.Conv, kernel_init=_kernel_init, padding="SAME")
# A layer followed by batch norm has no bias of its own (the authors' Keras layers had one):
# in training mode BN cancels it, so its gradient is rounding noise, which Adam turns into steps
# of size ~lr. The bias then drifts at random with BN's running mean chasing it, and in
# evaluation mode, where BN does not cancel it, that drift reaches f and its sharpness.
_DenseBN = partial(_Dense, use_bias=False)
_ConvBN = partial(_Conv, use_bias=False)


def _bn_relu(x: jax.Array, train: bool) -> jax.Array:
    """BatchNorm over the last axis, then ReLU; x keeps its shape."""
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM)(x)
    return nn.relu(x)


def _dropout(x: jax.Array, rate: float, train: bool) -> jax.Array:
    """Inverted dropout with the ``"dropout"`` rng; the identity when not training."""
    return nn.Dropout(rate, deterministic=not train)(x)


def _flatten(x: jax.Array) -> jax.Array:
    """(batch, ...) -> (batch, features)."""
    return x.reshape((x.shape[0], -1))


class MLP(nn.Module):
    """Flatten -> [Dense -> BatchNorm -> ReLU] per hidden width -> Dense num_classes.

    F1 (MNIST) is ``hidden=(512,) * 5``; F2 (TIMIT) is ``hidden=(512,) * 7``. x: (batch, ...)
    float32; returns logits (batch, num_classes). ``batch_norm=False`` drops the BatchNorm layers.
    """

    hidden: Sequence[int] = (512, 512, 512)
    num_classes: int = 10
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = _flatten(x)
        for width in self.hidden:
            if self.batch_norm:
                x = _bn_relu(_DenseBN(width)(x), train)
            else:
                x = nn.relu(_Dense(width)(x))
        return _Dense(self.num_classes)(x)


class ShallowCNN(nn.Module):
    """C1 (CIFAR-10) / C3 (CIFAR-100), the paper's "AlexNet-like" network.

    2 x [Conv 64 5x5 stride 1 -> BN -> ReLU -> MaxPool 3x3 stride 2 same] -> Flatten
    -> Dense 384 -> BN -> ReLU -> Dropout 0.5 -> Dense 192 -> BN -> ReLU -> Dropout 0.5
    -> Dense num_classes. x: (batch, H, W, C) float32; returns logits (batch, num_classes).
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for _ in range(2):
            x = _bn_relu(_ConvBN(64, (5, 5))(x), train)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        x = _flatten(x)
        for width in (384, 192):
            x = _dropout(_bn_relu(_DenseBN(width)(x), train), 0.5, train)
        return _Dense(self.num_classes)(x)


# VGG-16-style blocks of 3x3 convolutions, each block followed by MaxPool 2x2 stride 2.
_VGG_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class DeepCNN(nn.Module):
    """C2 (CIFAR-10) / C4 (CIFAR-100), the paper's "VGG-like" network.

    Blocks [64, 64] [128, 128] [256 x 3] [512 x 3] [512 x 3] of Conv 3x3 same -> BN -> ReLU, each
    block ending in MaxPool 2x2 stride 2 same; Dropout 0.3 after the first conv and 0.4 after every
    conv that is not last in its block from block 2 on. Head: Flatten -> Dropout 0.5 -> Dense 512
    -> BN -> ReLU -> Dropout 0.5 -> Dense num_classes. Pooling pads ("same"), so 8x8 inputs shrink
    8 -> 4 -> 2 -> 1 -> 1 -> 1 instead of vanishing; on 32x32 it equals unpadded pooling.
    x: (batch, H, W, C) float32; returns logits (batch, num_classes).
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for block, widths in enumerate(_VGG_BLOCKS):
            for i, width in enumerate(widths):
                x = _bn_relu(_ConvBN(width, (3, 3))(x), train)
                if i < len(widths) - 1:
                    x = _dropout(x, 0.3 if block == 0 else 0.4, train)
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = _dropout(_flatten(x), 0.5, train)
        x = _dropout(_bn_relu(_DenseBN(512)(x), train), 0.5, train)
        return _Dense(self.num_classes)(x)


# name -> (class, default fields). c1/c3 and c2/c4 differ only in num_classes (10 / 100 in the
# paper), which comes from the data. F2's input features and per-layer BatchNorm are unverified:
# the paper gives only "7 layers of 512 units" and TIMIT is licensed.
_ARCHITECTURES: dict[str, tuple[type[nn.Module], dict]] = {
    "mlp": (MLP, {}),
    "f1": (MLP, {"hidden": (512,) * 5}),
    "f2": (MLP, {"hidden": (512,) * 7}),
    "c1": (ShallowCNN, {}),
    "c2": (DeepCNN, {}),
    "c3": (ShallowCNN, {}),
    "c4": (DeepCNN, {}),
}
MODELS = tuple(_ARCHITECTURES)  # ("mlp", "f1", "f2", "c1", "c2", "c3", "c4")


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """The network called ``name`` (one of MODELS) with ``num_classes`` outputs.

    kwargs override the architecture's fields (e.g. ``hidden`` or ``batch_norm`` for the MLPs).

    Raises:
      ValueError: naming the argument: an unknown name, num_classes not an integer >= 2, or
        hidden widths that are not integers >= 1.
    """
    check_one_of("name", name, MODELS)
    num_classes = check_int("num_classes", num_classes, minimum=2)
    if "hidden" in kwargs:
        hidden = kwargs["hidden"]
        if isinstance(hidden, str) or not isinstance(hidden, Sequence):
            raise ValueError(f"hidden must be a sequence of integers >= 1, got {hidden!r}")
        kwargs["hidden"] = tuple(
            check_int(f"hidden[{i}]", w, minimum=1) for i, w in enumerate(hidden)
        )
    cls, defaults = _ARCHITECTURES[name]
    return cls(num_classes=num_classes, **(defaults | kwargs))


def init_variables(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict:
    """``{"params": ..., "batch_stats": ...}`` for inputs of shape (batch, *input_shape);
    ``batch_stats`` is {} for a model without batch norm."""
    if isinstance(input_shape, str) or not isinstance(input_shape, Sequence):
        raise ValueError(f"input_shape must be a sequence of integers >= 1, got {input_shape!r}")
    input_shape = [check_int(f"input_shape[{i}]", d, minimum=1) for i, d in enumerate(input_shape)]
    variables = model.init({"params": key}, jnp.zeros((1, *input_shape)), train=False)
    return {"batch_stats": {}, **variables}
