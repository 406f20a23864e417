"""Real worker processes for the process-level tests and the benchmarks.

A :class:`Fleet` starts ``python -m fedgate worker …`` subprocesses against
one gateway endpoint, sends them signals, restarts them with the same flags,
and — whatever happens in the test — kills every process it started when it
closes (``with Fleet(...) as fleet:``). A frozen (SIGSTOPped) process is
killed too: SIGKILL needs no SIGCONT. Each worker's stderr goes to a log file
so that a failing test can show what the worker said
(:meth:`Fleet.logs`).

Only the standard library and the gateway's public view of its workers
(:meth:`fedgate.gateway.gateway.Gateway.workers`) are used, so the helpers work with
any gateway a test builds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Fleet", "Proc", "free_port", "wait_until"]

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


async def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, *, every: float = 0.002
) -> float:
    """Poll ``predicate`` until it is true; the seconds it took.

    The bounded wait of every event a test synchronises on (a stats counter
    reaching a value, a worker registered or lost): ``TimeoutError`` naming
    ``what`` after ``timeout`` seconds, never a fixed sleep.
    """
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"expected {what} within {timeout}s")
        await asyncio.sleep(every)
    return time.monotonic() - start


class _GatewayView(Protocol):
    def workers(self) -> list[dict[str, Any]]: ...


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The child imports this checkout's fedgate whatever the current directory is,
    # and ``--backend python --callable pybackend_fixture:…`` the tests' own callables.
    paths = (str(REPO), str(TESTS), env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a gateway to bind)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """One worker process: its node id, flags, Popen and log file."""

    __slots__ = ("argv", "log", "node", "popen", "region")

    def __init__(self, node: str, region: str, argv: list[str], log: Path) -> None:
        self.node = node
        self.region = region
        self.argv = argv
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.popen and self.popen.returncode}"
        return f"Proc({self.node!r}, pid={self.popen and self.popen.pid}, {state})"


class Fleet:
    """Worker processes serving one gateway endpoint; closing kills whatever is left.

    Parameters
    ----------
    endpoint : str
        The gateway's ROUTER endpoint (``tcp://127.0.0.1:PORT``).
    heartbeat_interval : float
        Passed to every worker as ``--heartbeat-interval``.
    model, capability : str
        Defaults for :meth:`start`.
    log_dir : Path, optional
        Where the workers' stderr logs go (default: a temporary directory).

    Examples
    --------
    ::

        with Fleet(gateway.endpoints[0]) as fleet:
            fleet.start("eu-1", "eu-west-1", "--gpu", "--tokens", "8")
            await fleet.wait_registered(gateway, "eu-1")
            fleet.kill("eu-1")                      # SIGKILL
            await fleet.wait_lost(gateway, "eu-1")  # heartbeats missed
            fleet.restart("eu-1")
    """

    def __init__(
        self,
        endpoint: str,
        *,
        heartbeat_interval: float = 0.1,
        model: str = "m",
        capability: str = "generate",
        log_dir: Path | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.heartbeat_interval = heartbeat_interval
        self.model = model
        self.capability = capability
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fedgate-fleet-")
            log_dir = Path(self._tmp.name)
        self.log_dir = log_dir
        self.procs: dict[str, Proc] = {}
        self._dead: list[subprocess.Popen[bytes]] = []

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """SIGKILL every process still running and reap them all (idempotent)."""
        popens = [p.popen for p in self.procs.values() if p.popen is not None] + self._dead
        for popen in popens:
            if popen.poll() is None:
                popen.kill()
        for popen in popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(5.0)
        self._dead.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ------------------------------------------------------------------ processes
    def start(
        self,
        node: str,
        region: str,
        *flags: str,
        model: str | None = None,
        capability: str | None = None,
        gateways: Sequence[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m fedgate worker`` for ``node`` with extra ``flags``.

        ``--heartbeat-interval``, ``--model`` and ``--capability`` are added
        unless given in ``flags``; ``--drain-timeout`` defaults to 1 s.
        """
        if node in self.procs and self.procs[node].running:
            raise RuntimeError(f"node {node!r} already running as pid {self.procs[node].pid}")
        argv = [sys.executable, "-m", "fedgate", "worker", "--node", node, "--region", region]
        for endpoint in gateways or (self.endpoint,):
            argv += ["--gateway", endpoint]
        if "--model" not in flags:
            argv += ["--model", model or self.model]
        if "--capability" not in flags:
            argv += ["--capability", capability or self.capability]
        if "--heartbeat-interval" not in flags:
            argv += ["--heartbeat-interval", str(self.heartbeat_interval)]
        if "--drain-timeout" not in flags:
            argv += ["--drain-timeout", "1"]
        if "--log-level" not in flags:
            argv += ["--log-level", "WARNING"]
        argv += list(flags)
        proc = Proc(node, region, argv, self.log_dir / f"{node}.log")
        old = self.procs.get(node)
        if old is not None and old.popen is not None:
            self._dead.append(old.popen)
        self.procs[node] = proc
        return self._spawn(proc)

    def _spawn(self, proc: Proc) -> subprocess.Popen[bytes]:
        with proc.log.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(proc.argv[1:])}\n".encode())
            log.flush()
            proc.popen = subprocess.Popen(
                proc.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_env(),
                cwd=REPO,
            )
        return proc.popen

    def restart(self, node: str) -> subprocess.Popen[bytes]:
        """Start ``node`` again with the same flags (after it exited or was killed)."""
        proc = self.procs[node]
        if proc.running:
            raise RuntimeError(f"node {node!r} still running as pid {proc.pid}")
        assert proc.popen is not None
        self._dead.append(proc.popen)
        return self._spawn(proc)

    def proc(self, node: str) -> Proc:
        return self.procs[node]

    def pid(self, node: str) -> int:
        return self.procs[node].pid

    def kill(self, node: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the node's process (SIGKILL by default)."""
        proc = self.procs[node]
        assert proc.popen is not None
        proc.popen.send_signal(sig)

    def wait_exit(self, node: str, timeout: float = 5.0) -> int:
        """Wait for the node's process to exit; its exit status (negative: signal)."""
        proc = self.procs[node]
        assert proc.popen is not None
        return proc.popen.wait(timeout)

    async def async_wait_exit(self, node: str, timeout: float = 5.0) -> int:
        """:meth:`wait_exit` without blocking the event loop."""
        proc = self.procs[node]
        assert proc.popen is not None
        deadline = time.monotonic() + timeout
        while (code := proc.popen.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node!r} (pid {proc.pid}) still running after {timeout}s")
            await asyncio.sleep(0.01)
        return code

    def logs(self, node: str | None = None) -> str:
        """The workers' stderr so far (one node, or all of them)."""
        nodes = [node] if node is not None else list(self.procs)
        out = []
        for name in nodes:
            path = self.procs[name].log
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"===== {name} =====\n{text}")
        return "\n".join(out)

    # ------------------------------------------------------------------ gateway view
    async def wait_registered(
        self, gateway: _GatewayView, *nodes: str, timeout: float = 15.0
    ) -> None:
        """Wait until the gateway has each node alive, served by this fleet's current pid."""
        wanted = {n: self.procs[n] for n in (nodes or tuple(self.procs))}
        deadline = time.monotonic() + timeout
        while True:
            live = {w["node"]: w["pid"] for w in gateway.workers() if w["alive"]}
            missing = [n for n, p in wanted.items() if live.get(n) != p.pid]
            if not missing:
                return
            for n in missing:
                popen = wanted[n].popen
                if popen is not None and popen.poll() is not None:
                    code = popen.returncode
                    raise RuntimeError(
                        f"worker {n!r} exited with status {code} before registering\n"
                        + self.logs(n)
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"expected {missing} registered within {timeout}s; gateway sees {live}\n"
                    + self.logs()
                )
            await asyncio.sleep(0.01)

    @staticmethod
    async def wait_lost(gateway: _GatewayView, node: str, timeout: float = 5.0) -> float:
        """Wait until the gateway no longer has ``node`` alive; the seconds it took."""
        start = time.monotonic()
        while True:
            if not any(w["node"] == node and w["alive"] for w in gateway.workers()):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"node {node!r} still alive at the gateway after {timeout}s")
            await asyncio.sleep(0.002)
