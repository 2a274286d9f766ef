"""L-BFGS-B in JAX: minimise F over a box [lower, upper] with a fixed-size, vmappable program.

The algorithm is scipy's (L-BFGS-B 3.0: Byrd, Lu, Nocedal & Zhu 1995, with the subspace
projection of Morales & Nocedal 2011), one concept per module:

    _memory         the curvature pairs and the compact B = theta I - W M W^T, W = [Y, theta S]
    _cauchy         the generalized Cauchy point (GCP) along the projected gradient path
    _subspace_step  the Newton step over the variables free at the GCP, off the box's faces
    _line_search    scipy's Moré-Thuente search (MINPACK-2 dcsrch / dcstep)
    _driver         `minimize`: the fixed-length loop, scipy's pgtol / factr stops per lane

How it differs from a transliteration, and why (the measurements behind each choice are in
docs/benchmarks.md, "Where the solver's time goes"):

* The GCP has no loop over breakpoints: after k breakpoints the model's slope and curvature
  are closed forms of prefix sums over the sorted breakpoints, so cumulative sums give every
  segment at once. jaxopt walks the breakpoints in a `while_loop`, which under `vmap` runs to
  the slowest lane and selects every lane's state at every step.
* The step with pairs is computed on the coordinates off the faces, gathered: maximising
  sharpness, most coordinates sit on a face with the gradient pushing out, and those neither
  move at the GCP nor enter the subspace step.
* Only the smallest breakpoints are sorted (`lax.top_k`, `chunk_sizes`), all of them only
  when the GCP lies beyond those.
* W is built once per step, and a new pair's products with the stored ones come from the
  step's own W^T d: only S^T y, y being dense, reads all of S when a pair is pushed.
* The (m, n) pair arrays are never the output of a `cond` or a `where` in the loop (either
  copies them every iteration); a new pair is written into its row in place.
* With no pairs stored (B = theta I) the GCP is simply P(x - g / theta). Maximising near a
  minimiser means minimising a concave -f, where every pair has s.y <= 0 and is rejected, so
  this is the common case; `flatmin._vmap.dispatch` keeps it a real branch under `vmap`.
* The line search's trip count is bounded by `maxls` and independent of n.
"""

from flatmin.measures._lbfgsb._cauchy import (
    CHUNK_MIN,
    cauchy_point,
    cauchy_point_no_memory,
    chunk_sizes,
    path,
    walk_breakpoints,
)
from flatmin.measures._lbfgsb._driver import Result, minimize
from flatmin.measures._lbfgsb._line_search import search_next, search_start
from flatmin.measures._lbfgsb._memory import (
    EPSMCH,
    Memory,
    empty_memory,
    middle_matrix,
    push_pair,
    reset_memory,
    w_dot,
)
from flatmin.measures._lbfgsb._subspace_step import (
    compact_index,
    open_capacity,
    step_off_the_faces,
    step_point,
    step_target,
    subspace_point,
)

__all__ = [
    "CHUNK_MIN",
    "EPSMCH",
    "Memory",
    "Result",
    "cauchy_point",
    "cauchy_point_no_memory",
    "chunk_sizes",
    "compact_index",
    "empty_memory",
    "middle_matrix",
    "minimize",
    "open_capacity",
    "path",
    "push_pair",
    "reset_memory",
    "search_next",
    "search_start",
    "step_off_the_faces",
    "step_point",
    "step_target",
    "subspace_point",
    "w_dot",
    "walk_breakpoints",
]
