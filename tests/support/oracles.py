"""Independent oracles for the sharpness tests (Keskar et al. 2017, Metric 2.1).

Everything here is computed in float64 NumPy/SciPy from the float32 numbers the tests hand to
flatmin, so it never shares code or arithmetic with the implementation under test.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.special
from jax.flatten_util import ravel_pytree

U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32


def flat64(tree) -> np.ndarray:
    """The pytree's leaves in ravel_pytree order, as one float64 vector."""
    return np.asarray(ravel_pytree(tree)[0], dtype=np.float64)


def halfwidths(x64: np.ndarray, eps: float, A=None) -> np.ndarray:
    """Box half-widths eps (|(A^+ x)_i| + 1) in float64 (A = None: the identity)."""
    z = x64 if A is None else np.linalg.pinv(np.asarray(A, dtype=np.float64)) @ x64
    return eps * (np.abs(z) + 1.0)


def phi(max_f: float, f0: float) -> float:
    """Metric 2.1 from the maximal and the central loss."""
    return (max_f - f0) / (1.0 + f0) * 100.0


def spacing32(v) -> np.ndarray:
    """float32 spacing (one ulp) at |v|, as float64."""
    return np.spacing(np.abs(np.asarray(v)).astype(np.float32)).astype(np.float64)


def vertices(r: np.ndarray) -> np.ndarray:
    """All 2^p corners of the box prod_i [-r_i, r_i], shape (2^p, p)."""
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=r.shape[0])))
    return signs * r[None, :]


def tree_inside_box(y_tree, x_tree, eps: float, rtol: float = 1e-6) -> bool:
    """Whether a params-shaped y satisfies |y_i| <= eps (|x_i| + 1) (full space)."""
    y = flat64(y_tree)
    r = halfwidths(flat64(x_tree), eps)
    return bool(np.all(np.abs(y) <= r * (1.0 + rtol)))


def scipy_lbfgsb_phi(loss_fn, params, eps: float, A=None, maxiter: int = 10) -> float:
    """The paper's route, phi alone (see `scipy_lbfgsb_route`)."""
    return scipy_lbfgsb_route(loss_fn, params, eps, A, maxiter)[0]


def scipy_lbfgsb_route(loss_fn, params, eps: float, A=None, maxiter: int = 10) -> tuple:
    """The paper's route: scipy's fmin_l_bfgs_b on -f(x + A y) from y = 0, maxiter iterations,
    its default stopping rules (pgtol 1e-5, factr 1e7) and line search.

    f is evaluated in float32 by JAX (jitted value and gradient), handed to scipy in float64;
    the bounds are +-eps (|A^+ x| + 1) with A^+ from numpy.linalg.pinv in float64.
    Returns (phi, scipy's info dict: nit, funcalls, task, grad, warnflag).
    """
    x32, unravel = ravel_pytree(params)
    A32 = None if A is None else jnp.asarray(A, dtype=x32.dtype)

    def neg_f(y):
        w = x32 + (y if A32 is None else A32 @ y)
        return -loss_fn(unravel(w))

    value_and_grad = jax.jit(jax.value_and_grad(neg_f))

    def fun(y64):
        v, g = value_and_grad(jnp.asarray(y64, dtype=x32.dtype))
        return float(v), np.asarray(g, dtype=np.float64)

    r = halfwidths(np.asarray(x32, dtype=np.float64), eps, A)
    bounds = list(zip(-r, r, strict=True))
    _, fmin, info = scipy.optimize.fmin_l_bfgs_b(
        fun, np.zeros_like(r), bounds=bounds, maxiter=maxiter
    )
    return phi(-float(fmin), float(loss_fn(params))), info


def ibp_relu_mlp_ce_upper_bound(layers, X, labels, eps: float) -> float:
    """Rigorous upper bound on max over the full-space box of the mean cross-entropy of a ReLU MLP.

    Interval bound propagation in float64 with center/radius intervals: every weight and bias
    may move by eps (|theta| + 1); for h in [hc +- hr] and W in [W0 +- RW],
    |h W - hc W0| <= hr |W0| + |hc| RW + hr RW. The logits' intervals [lo, hi] give
    CE <= log(1 + sum_{k != y} exp(hi_k - lo_y)).
    """
    hc = np.asarray(X, dtype=np.float64)
    hr = np.zeros_like(hc)
    for i, layer in enumerate(layers):
        W = np.asarray(layer["w"], dtype=np.float64)
        b = np.asarray(layer["b"], dtype=np.float64)
        zc = hc @ W + b[None, :]
        zr = (
            hr @ np.abs(W) + np.abs(hc) @ (eps * (np.abs(W) + 1.0)) + hr @ (eps * (np.abs(W) + 1.0))
        )
        zr = zr + eps * (np.abs(b) + 1.0)[None, :]
        if i < len(layers) - 1:
            lo, hi = np.maximum(zc - zr, 0.0), np.maximum(zc + zr, 0.0)
            hc, hr = (lo + hi) / 2, (hi - lo) / 2
    lo, hi = zc - zr, zc + zr
    rows = np.arange(lo.shape[0])
    labels = np.asarray(labels)
    gap = hi - lo[rows, labels][:, None]
    gap[rows, labels] = -np.inf
    ce_upper = np.logaddexp(0.0, scipy.special.logsumexp(gap, axis=1))
    return float(np.mean(ce_upper))
