"""The federation's state, as in the seed: what runs where, who is well, who may be called.

- :mod:`~fedgate.federation.catalog`: models, nodes, regions, capabilities;
- :mod:`~fedgate.federation.health`: liveness (heartbeats) and latency percentiles;
- :mod:`~fedgate.federation.breaker`: per-node circuit breakers (failures);
- :mod:`~fedgate.federation.policy`: the weighted routing policies;
- :mod:`~fedgate.federation.statemachine`: the request lifecycle.

Nothing here knows about sockets, kernels or processes.
"""
