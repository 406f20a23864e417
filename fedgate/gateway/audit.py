"""The audit log: every CONFIDENTIAL or RESTRICTED dispatch as one JSON line (SPEC §5).

``[trust] audit_log = PATH`` makes the gateway append one line per *attempt*
of such a request, written when the attempt's outcome is known, so a request
that failed over shows each node it reached::

    {"time": "2026-12-02T14:03:07.118204+00:00", "tenant": "acme",
     "request_id": "r-17", "attempt": 1, "privacy": "RESTRICTED",
     "node": "eu-1", "region": "eu-west-1", "key": "eu",
     "fingerprint": "SHA256:4f0c…", "outcome": "WorkerError"}

``region`` is the region the node was routed as (its key's grant), ``key`` and
``fingerprint`` name the node's worker key (:func:`fedgate.transport.curve.digest`;
null on a plain link), ``outcome`` is ``ok``, ``cancelled`` (the caller
stopped) or the failure's error type. PUBLIC and INTERNAL requests write
nothing.

Each line is one ``write`` on a descriptor opened ``O_APPEND``: appended
whole even when several gateways share the file, and handed to the kernel at
once (no user-space buffer to lose in a crash), without waiting for the disk
— a few microseconds on the event loop per line
(``python -m benchmarks.audit``). The file is created mode 0600.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from fedgate.transport import curve
from fedgate.types import PrivacyLevel

if TYPE_CHECKING:
    from fedgate.gateway.attempt import Attempt
    from fedgate.types import InferenceRequest

__all__ = ["AuditLog"]

log = logging.getLogger("fedgate.gateway.audit")

_AUDITED = PrivacyLevel.CONFIDENTIAL
_UTC = datetime.timezone.utc


class AuditLog:
    """Append audited dispatches to ``path`` (the gateway calls it per attempt).

    Parameters
    ----------
    path : str or path
        The log file: created (mode 0600) if missing, always appended to.
    keys : dict of bytes to str, optional
        Trusted worker keys and their names (``[trust]``), to name a node's key.
    clock : callable
        Wall-clock seconds (injected by tests).

    Raises
    ------
    ValueError
        The file cannot be opened for appending (names the path).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        keys: dict[bytes, str] | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.path = os.fspath(path)
        self._keys = keys or {}
        self._clock = clock or time.time
        self._digests: dict[bytes, str] = {}
        self._encoder = msgspec.json.Encoder()
        self.lines = 0
        self.errors = 0  # lines that could not be written (logged)
        self._fd = -1
        self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ValueError(f"audit_log: cannot append to {self.path!r}: {exc}") from exc

    def __call__(
        self, request: InferenceRequest, att: Attempt, finished: bool, failure: Any
    ) -> None:
        """Record one attempt of ``request`` if its privacy is audited (else nothing)."""
        privacy = request.qos.privacy
        if privacy < _AUDITED:
            return
        worker = att.worker
        key = worker.key
        if finished:
            outcome = "ok"
        elif failure is not None:
            outcome = type(failure.error).__name__
        else:
            outcome = "cancelled"
        if key is not None:
            fp = self._digests.get(key)
            if fp is None:
                fp = self._digests[key] = curve.digest(key)
        else:
            fp = None
        line = self._encoder.encode({
            "time": datetime.datetime.fromtimestamp(self._clock(), _UTC).isoformat(),
            "tenant": request.tenant_id,
            "request_id": request.request_id,
            "attempt": att.number,
            "privacy": privacy.name,
            "node": worker.node,
            "region": worker.region,
            "key": self._keys.get(key) if key is not None else None,
            "fingerprint": fp,
            "outcome": outcome,
        })  # fmt: skip
        try:
            if self._fd < 0:
                self._open()
            os.write(self._fd, line + b"\n")
        except (OSError, ValueError) as exc:
            # The dispatch has happened: failing the request would not undo it.
            self.errors += 1
            if self.errors <= 10:
                log.error("audit log %s: a line was not written: %s", self.path, exc)
            return
        self.lines += 1

    def close(self) -> None:
        """Close the file (the next line opens it again). Idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
