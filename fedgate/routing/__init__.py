"""Choosing a node: node arrays, the scoring kernels, load balancing and the router.

- :mod:`~fedgate.routing.scoring`: the struct-of-arrays node data and the kernels' contract;
- :mod:`~fedgate.routing._kernels`: the Numba kernels (source of the ahead-of-time module);
- :mod:`~fedgate.routing.kernels`: which compiled kernels run;
- :mod:`~fedgate.routing.router`: :class:`~fedgate.routing.router.Router`, fed by the
  federation's catalog, health and breaker.

The codes the kernels share with the federation live in :mod:`fedgate._core.codes`.
Importing this package loads neither Numba nor the kernels.
"""
