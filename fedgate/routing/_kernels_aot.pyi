"""Stub of the routing kernels compiled ahead of time (``_native/build_kernels_aot.py``).

The same functions as ``fedgate.routing._kernels._score_kernel`` and
``_components_kernel`` (their twin), with the argument types the router
passes: arrays must have exactly the dtypes of ``NodeArrays`` and be
one-dimensional (``components``: two-dimensional) and C-contiguous, which the
compiled entry points do not all check.
"""

import numpy as np
import numpy.typing as npt

def score(
    n: int,
    health: npt.NDArray[np.int8],
    p50: npt.NDArray[np.float64],
    p99: npt.NDArray[np.float64],
    region: npt.NDArray[np.int32],
    cost: npt.NDArray[np.float64],
    gpu: npt.NDArray[np.uint8],
    inflight: npt.NDArray[np.int32],
    breaker: npt.NDArray[np.int8],
    alive: npt.NDArray[np.uint8],
    mask: npt.NDArray[np.uint8],
    clearance: npt.NDArray[np.int8],
    weights: npt.NDArray[np.float64],
    params: npt.NDArray[np.float64],
    out_scores: npt.NDArray[np.float64],
    out_reasons: npt.NDArray[np.int8],
) -> int: ...
def components(
    n: int,
    health: npt.NDArray[np.int8],
    p50: npt.NDArray[np.float64],
    p99: npt.NDArray[np.float64],
    region: npt.NDArray[np.int32],
    cost: npt.NDArray[np.float64],
    gpu: npt.NDArray[np.uint8],
    inflight: npt.NDArray[np.int32],
    breaker: npt.NDArray[np.int8],
    alive: npt.NDArray[np.uint8],
    mask: npt.NDArray[np.uint8],
    clearance: npt.NDArray[np.int8],
    weights: npt.NDArray[np.float64],
    params: npt.NDArray[np.float64],
    out_components: npt.NDArray[np.float64],
    out_scores: npt.NDArray[np.float64],
    out_reasons: npt.NDArray[np.int8],
) -> int: ...
