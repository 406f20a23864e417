"""Run a benchmark scenario in a fresh interpreter and read back its JSON result.

Memory and loop-latency figures are only honest in a process that has imported
nothing else: :mod:`benchmarks.memory` and :mod:`benchmarks.dashboard` each run
their scenario as ``python -m benchmarks.<name> ARGS…``, which prints one JSON
line last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_scenario(module: str, args: list[str], timeout: float) -> dict[str, Any]:
    """``python -m module *args`` from the repository root; its last JSON line as a dict."""
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{module} scenario failed ({out.returncode}): {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
