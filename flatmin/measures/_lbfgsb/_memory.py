"""L-BFGS-B's limited memory: the curvature pairs, their products, and the compact matrix B.

B = theta I - W M W^T with W = [Y, theta S] (Byrd, Lu, Nocedal & Zhu 1995). The pairs live in
fixed slots of (m, n) arrays, written one row in place per accepted pair: a `cond` or `where`
around the arrays would copy both every iteration.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# scipy's machine epsilon (float64), used in the pair-skip, curvature and factr tests whatever
# the dtype, as scipy's Fortran does.
EPSMCH = float(np.finfo(np.float64).eps)


class Memory(NamedTuple):
    """The limited-memory pairs, stored in slots; `head` is the slot of the oldest pair.

    s, y: (m, n); sy[i, j] = s_i . y_j and ss[i, j] = s_i . s_j, (m, m), kept up to date as
    pairs arrive, so forming M costs O(m^3), never O(m^2 n).
    """

    s: jax.Array
    y: jax.Array
    sy: jax.Array
    ss: jax.Array
    theta: jax.Array
    count: jax.Array
    head: jax.Array


def empty_memory(m: int, n: int, dtype) -> Memory:
    zeros = jnp.zeros((m, n), dtype)
    square = jnp.zeros((m, m), dtype)
    one, zero = jnp.ones((), dtype), jnp.zeros((), jnp.int32)
    return Memory(zeros, zeros, square, square, one, zero, zero)


def reset_memory(memory: Memory) -> Memory:
    """scipy's "refresh the lbfgs memory": no pairs, theta = 1 (stale slots are masked)."""
    return memory._replace(
        theta=jnp.ones_like(memory.theta),
        count=jnp.zeros_like(memory.count),
        head=jnp.zeros_like(memory.head),
    )


def push_pair(
    memory: Memory,
    s: jax.Array,
    y: jax.Array,
    sy: jax.Array,
    yy: jax.Array,
    update=True,
    w_s: jax.Array | None = None,
) -> Memory:
    """Stores the pair (s, y) with s.y = sy, y.y = yy, dropping the oldest when full; with
    `update` False (traced or not) the memory is returned unchanged.

    w_s = W^T s = [Y^T s, theta S^T s], (2m,), over the pairs stored before this one, when
    the caller has it (`minimize` gets it from the step, where it costs a product over the
    coordinates that moved only); otherwise it is computed here (two passes over (m, n)).
    The (m, n) arrays get one row written in place whatever `update` is (the row is the old
    one when False); a `cond` or `where` around them would copy both every iteration.
    """
    m = memory.s.shape[0]
    update = jnp.asarray(update)
    full = memory.count >= m
    slot = jnp.where(full, memory.head, (memory.head + memory.count) % m)
    w_s = w_dot(memory, s) if w_s is None else w_s
    s_mat = memory.s.at[slot].set(jnp.where(update, s, memory.s[slot]))
    y_mat = memory.y.at[slot].set(jnp.where(update, y, memory.y[slot]))

    def dots(s_mat):
        # s_i . y_new: the one product over all n that the step cannot give (y is dense).
        return s_mat @ y, jnp.sum(s * s)

    zeros = jnp.zeros((m,), memory.sy.dtype)
    s_dot_y, ss_new = jax.lax.cond(
        update, dots, lambda _: (zeros, jnp.zeros((), zeros.dtype)), s_mat
    )
    # Products with the pairs kept; the new pair's own slot gets sy and s.s.
    y_dot_s = w_s[:m].astype(zeros.dtype)
    s_dot_s = (w_s[m:] / memory.theta).astype(zeros.dtype).at[slot].set(ss_new)
    pushed = memory._replace(
        sy=memory.sy.at[:, slot].set(s_dot_y).at[slot, :].set(y_dot_s).at[slot, slot].set(sy),
        ss=memory.ss.at[:, slot].set(s_dot_s).at[slot, :].set(s_dot_s),
        theta=(yy / sy).astype(memory.theta.dtype),
        count=jnp.minimum(memory.count + 1, m),
        head=jnp.where(full, (memory.head + 1) % m, memory.head),
    )
    kept = jax.tree.map(lambda a, b: jnp.where(update, a, b), pushed, memory)
    return kept._replace(s=s_mat, y=y_mat)


def middle_matrix(memory: Memory) -> jax.Array:
    """M = [[-D, L^T], [L, theta S^T S]]^{-1}, (2m, 2m), in slot order (rows y-slots, then
    s-slots), with the rows and columns of empty slots zero.

    D = diag(s_i . y_i), L_ij = s_i . y_j for pair i newer than pair j.
    """
    m = memory.s.shape[0]
    rank = (jnp.arange(m) - memory.head) % m  # 0 = oldest
    valid = rank < memory.count
    lower = jnp.where(rank[:, None] > rank[None, :], memory.sy, 0.0)
    K = jnp.block(
        [
            [-jnp.diag(jnp.diag(memory.sy)), lower.T],
            [lower, memory.theta * memory.ss],
        ]
    )
    keep = jnp.concatenate([valid, valid])
    keep = keep[:, None] & keep[None, :]
    eye = jnp.eye(2 * m, dtype=K.dtype)
    M = jnp.linalg.inv(jnp.where(keep, K, eye))
    return jnp.where(keep, M, 0.0)


def w_dot(memory: Memory, v: jax.Array) -> jax.Array:
    """W^T v, (2m,), for v (n,) or (n, k) -> (2m, k)."""
    return jnp.concatenate([memory.y @ v, memory.theta * (memory.s @ v)])


class Model(NamedTuple):
    """B = theta I - W M W^T on the coordinates at hand: W = [Y, theta S] there, transposed,
    (2m, k), built once per step (the GCP and the subspace step both read it)."""

    W: jax.Array
    theta: jax.Array
    M: jax.Array


def model_of(memory: Memory, M: jax.Array) -> Model:
    return Model(jnp.concatenate([memory.y, memory.theta * memory.s]), memory.theta, M)
