"""The wire between gateway and workers: messages, the socket pump, binding.

:mod:`~fedgate.transport.protocol` is the versioned msgspec wire format shared by the
gateway, the worker, the ingress and telemetry. :mod:`~fedgate.transport.pump` drives
one ZeroMQ socket from the event loop (reads, wake-ups, send batching, backlog) for
the gateway's ROUTER and each worker DEALER; :mod:`~fedgate.transport.bind` binds a
ROUTER or raises a clear error (gateway, ingress, telemetry). Nothing here routes or
schedules.
"""
