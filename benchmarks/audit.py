"""What one audit line costs the event loop (``[trust] audit_log``, issue 14).

Calls :class:`~fedgate.gateway.audit.AuditLog` as the gateway does at the end
of an attempt — a RESTRICTED one (a line encoded and written with one
``write``) and a PUBLIC one (checked and skipped) — into a file in a
temporary directory, and prints the time per call: median and p99 of
batches, and the slowest single call seen.

    python -m benchmarks.audit [--lines 20000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fedgate.gateway.audit import AuditLog
from fedgate.transport import curve
from fedgate.types import Capability, InferenceRequest, PrivacyLevel, QoSRequirements


def _request(privacy: PrivacyLevel) -> InferenceRequest:
    return InferenceRequest(Capability.GENERATE, b"x", request_id="bench-17", tenant_id="acme",
                            qos=QoSRequirements(privacy=privacy))  # fmt: skip


def measure(audit: AuditLog, request: InferenceRequest, att: Any, lines: int) -> dict[str, float]:
    batch = 100
    per_call: list[float] = []
    worst = 0.0
    clock = time.perf_counter
    for _ in range(lines // batch):
        start = clock()
        for _ in range(batch):
            one = clock()
            audit(request, att, True, None)
            worst = max(worst, clock() - one)
        per_call.append((clock() - start) / batch)
    ordered = sorted(per_call)
    return {"p50": statistics.median(per_call) * 1e6,
            "p99": ordered[int(0.99 * (len(ordered) - 1))] * 1e6, "max": worst * 1e6}


def main(lines: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        curve.generate(tmp, "eu")
        key = curve.load_public(Path(tmp) / "eu.key")
        att = SimpleNamespace(worker=SimpleNamespace(node="eu-1", region="eu-west-1", key=key),
                              number=1)  # fmt: skip
        audit = AuditLog(Path(tmp) / "audit.jsonl", {key: "eu"})
        for name, level in (("RESTRICTED", PrivacyLevel.RESTRICTED),
                            ("PUBLIC", PrivacyLevel.PUBLIC)):  # fmt: skip
            got = measure(audit, _request(level), att, lines)
            print(f"{name:>10}: per call p50 {got['p50']:6.2f} us  p99 {got['p99']:6.2f} us  "
                  f"slowest single call {got['max']:7.1f} us")
        size = (Path(tmp) / "audit.jsonl").stat().st_size
        print(f"{audit.lines} lines, {size / max(audit.lines, 1):.0f} bytes each")
        audit.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20000)
    main(parser.parse_args().lines)
