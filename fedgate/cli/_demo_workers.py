"""The demo's worker processes: start, SIGKILL, restart, and always clean up.

Each node of :data:`~fedgate.cli._demo_federation.FEDERATION` runs as a real
``python -m fedgate worker`` process, its output in ``LOG_DIR/NODE.log``. On
Linux a small launcher first ties the child's life to the demo's
(``PR_SET_PDEATHSIG``), so no worker outlives a demo that is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedgate.cli._demo_federation import HEARTBEAT_INTERVAL, NodeSpec

__all__ = ["Workers", "free_port"]


# Linux: the worker dies with the demo even if the demo is SIGKILLed
# (PR_SET_PDEATHSIG survives exec), then becomes `python -m fedgate.worker`
# under the same pid, so the pid the gateway reports is the one we signal.
_LAUNCH = """\
import os, signal, sys
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    os._exit(1)
os.execv(sys.executable, [sys.executable, "-m", "fedgate", "worker", *sys.argv[2:]])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Workers:
    """The demo's worker processes: start, SIGKILL, restart, and always clean up."""

    def __init__(self, endpoint: str, log_dir: Path) -> None:
        self.endpoint = endpoint
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pids: dict[str, list[int]] = {}
        self._all: list[subprocess.Popen[bytes]] = []
        self._env = dict(os.environ)
        # The children import this very fedgate, installed or not.
        root = str(Path(__file__).resolve().parents[2])
        self._env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, self._env.get("PYTHONPATH")) if p
        )
        self._env.setdefault("PYTHONUNBUFFERED", "1")
        # Per node: flags added to its command line (its CURVE key files).
        self.extra: dict[str, list[str]] = {}

    def start(self, spec: NodeSpec) -> subprocess.Popen[bytes]:
        args = spec.argv(self.endpoint, HEARTBEAT_INTERVAL) + self.extra.get(spec.node, [])
        if sys.platform.startswith("linux"):
            argv = [sys.executable, "-c", _LAUNCH, str(os.getpid()), *args]
        else:
            argv = [sys.executable, "-m", "fedgate", "worker", *args]
        with (self.log_dir / f"{spec.node}.log").open("ab") as logf:
            logf.write(
                f"--- {time.strftime('%H:%M:%S')} fedgate worker {' '.join(args)}\n".encode()
            )
            logf.flush()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=self._env
            )
        self.procs[spec.node] = proc
        self.pids.setdefault(spec.node, []).append(proc.pid)
        self._all.append(proc)
        return proc

    def kill(self, node: str) -> int:
        proc = self.procs[node]
        proc.send_signal(signal.SIGKILL)
        return proc.pid

    def exited(self) -> list[tuple[str, int]]:
        return [(n, p.returncode) for n, p in self.procs.items() if p.poll() is not None]

    def log_tail(self, node: str, lines: int = 15) -> str:
        path = self.log_dir / f"{node}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """SIGTERM (drain) every worker still running, SIGKILL what is left after 2 s, reap all."""
        running = [p for p in self._all if p.poll() is None]
        for p in running:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        for p in running:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        for p in self._all:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(2.0)
