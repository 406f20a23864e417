"""The wire between gateway and workers: message structs and their codec.

:mod:`~fedgate.transport.protocol` is the versioned msgspec wire format shared by the
gateway, the worker, the ingress and telemetry. Nothing here routes or schedules.
"""
