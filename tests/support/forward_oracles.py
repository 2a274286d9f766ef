"""Forward passes of flatmin's networks written out in float64 NumPy, sharing no code with flax.

Each takes the flax variables ({"params", "batch_stats"} pytrees of arrays) and returns the
logits. Layer names follow flax's automatic naming (Dense_0, BatchNorm_0, Conv_0, ... in call
order). Batch norm is (h - mean) / sqrt(var + 1e-5) * scale + bias over the last axis, with
the running statistics (evaluation mode) or, with ``batch_statistics=True``, the batch's own
mean and biased variance over every axis but the last (training mode). Dropout is left out,
so training mode is only meaningful for networks without it (the MLPs).
"""

import numpy as np
import scipy.special

BN_EPS = 1e-5  # flax's BatchNorm epsilon

# VGG-16-style blocks of flatmin.training.models.DeepCNN, written out again here.
VGG_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def f64(a) -> np.ndarray:
    return np.asarray(a, np.float64)


class _Layers:
    """Hands out a network's parameters and statistics in call order, as flax names them."""

    def __init__(self, variables: dict, batch_statistics: bool, eps: float):
        self.params, self.stats = variables["params"], variables.get("batch_stats", {})
        self.batch_statistics, self.eps = batch_statistics, eps
        self.count = {"Dense": 0, "Conv": 0, "BatchNorm": 0}

    def _next(self, kind: str) -> str:
        name = f"{kind}_{self.count[kind]}"
        self.count[kind] += 1
        return name

    def dense(self, h: np.ndarray) -> np.ndarray:
        layer = self.params[self._next("Dense")]
        out = h @ f64(layer["kernel"])
        return out + f64(layer["bias"]) if "bias" in layer else out

    def conv(self, h: np.ndarray) -> np.ndarray:
        return conv_same(h, f64(self.params[self._next("Conv")]["kernel"]))

    def bn_relu(self, h: np.ndarray) -> np.ndarray:
        name = self._next("BatchNorm")
        if self.batch_statistics:
            axes = tuple(range(h.ndim - 1))
            mean, var = h.mean(axis=axes), h.var(axis=axes)
        else:
            mean, var = f64(self.stats[name]["mean"]), f64(self.stats[name]["var"])
        scale, bias = f64(self.params[name]["scale"]), f64(self.params[name]["bias"])
        return np.maximum((h - mean) / np.sqrt(var + self.eps) * scale + bias, 0.0)


def same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    """XLA's "SAME" padding: output ceil(size / stride); the odd pixel goes at the end."""
    total = max((-(-size // stride) - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def conv_same(h: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Stride-1 "SAME" cross-correlation (no kernel flip), NHWC inputs, HWIO kernel."""
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = same_pads(h.shape[1], kh, 1), same_pads(h.shape[2], kw, 1)
    padded = np.pad(h, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out = np.zeros((*h.shape[:3], kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            window = padded[:, i : i + h.shape[1], j : j + h.shape[2], :]
            out += np.einsum("nhwc,co->nhwo", window, kernel[i, j])
    return out


def max_pool_same(h: np.ndarray, window: int, stride: int) -> np.ndarray:
    """ "SAME" max pooling, padded with -inf (never the maximum)."""
    (top, bottom), (left, right) = (same_pads(h.shape[a], window, stride) for a in (1, 2))
    padded = np.pad(h, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-np.inf)
    rows, cols = -(-h.shape[1] // stride), -(-h.shape[2] // stride)
    out = np.full((h.shape[0], rows, cols, h.shape[3]), -np.inf)
    for r in range(rows):
        for c in range(cols):
            patch = padded[:, r * stride : r * stride + window, c * stride : c * stride + window]
            out[:, r, c] = patch.max(axis=(1, 2))
    return out


def mlp_logits(
    variables: dict, x, num_hidden: int, *, batch_statistics: bool = False, eps: float = BN_EPS
) -> np.ndarray:
    """flatmin.training.models.MLP with batch norm: flatten -> [Dense (no bias) -> BN -> ReLU] per
    hidden layer -> Dense with bias."""
    layers = _Layers(variables, batch_statistics, eps)
    h = f64(x).reshape(len(x), -1)
    for _ in range(num_hidden):
        h = layers.bn_relu(layers.dense(h))
    return layers.dense(h)


def shallow_cnn_logits(variables: dict, x, *, eps: float = BN_EPS) -> np.ndarray:
    """ShallowCNN (C1/C3) in evaluation mode: 2 x [Conv 5x5 -> BN -> ReLU -> MaxPool 3x3/2]
    -> flatten -> Dense 384 -> BN -> ReLU -> Dense 192 -> BN -> ReLU -> Dense."""
    layers = _Layers(variables, False, eps)
    h = f64(x)
    for _ in range(2):
        h = max_pool_same(layers.bn_relu(layers.conv(h)), 3, 2)
    h = h.reshape(len(h), -1)  # (n, H, W, C) row-major, as the model flattens
    for _ in range(2):
        h = layers.bn_relu(layers.dense(h))
    return layers.dense(h)


def deep_cnn_logits(variables: dict, x, *, eps: float = BN_EPS) -> np.ndarray:
    """DeepCNN (C2/C4) in evaluation mode: per block, [Conv 3x3 -> BN -> ReLU] per width, then
    MaxPool 2x2/2; flatten -> Dense 512 -> BN -> ReLU -> Dense."""
    layers = _Layers(variables, False, eps)
    h = f64(x)
    for widths in VGG_BLOCKS:
        for _ in widths:
            h = layers.bn_relu(layers.conv(h))
        h = max_pool_same(h, 2, 2)
    h = layers.bn_relu(layers.dense(h.reshape(len(h), -1)))
    return layers.dense(h)


def loss_and_accuracy(logits: np.ndarray, y) -> tuple[float, float]:
    """Mean cross-entropy (float64) and the fraction of rows whose argmax is the label."""
    y = np.asarray(y)
    rows = np.arange(len(y))
    cross_entropy = scipy.special.logsumexp(logits, axis=1) - logits[rows, y]
    return float(cross_entropy.mean()), float(np.mean(np.argmax(logits, axis=1) == y))
