"""Added latency over the same upstream: fedgate beside LiteLLM's proxy, same generator, same run.

Every path ends at one fast OpenAI-compatible upstream
(``benchmarks/openai_upstream.py``, its own process), and one load generator
(``benchmarks/http_servers.py``, its own process, keep-alive) sends the same
non-streaming ``POST /v1/chat/completions`` along each:

- **direct**: to the upstream itself (the baseline; its req/s at 64
  connections shows it is not the bottleneck);
- **fedgate**: the HTTP front door (on this process's loop, uvloop when
  installed) → one ``openai``-backend worker process → the upstream;
- **LiteLLM**: its proxy (``litellm --config``, one uvicorn worker: its
  default) → the upstream; skipped, saying so, when ``litellm`` is not
  installed (``pip install 'fedgate[peers]'``; see the note in pyproject);
- **generator ceiling**: canned bytes from a trivial server, no HTTP parsing.

For each, p50 and p99 at 1 connection and req/s at 64; the added latency is a
path's p50 minus direct's, in the same round. Targets: fedgate's added p50 at
most 1/20 of LiteLLM's, and its req/s at least 20× LiteLLM's.

Nothing downloads at run time: LiteLLM runs with
``LITELLM_LOCAL_MODEL_COST_MAP=True`` (its bundled model cost map, not the
network's) and its telemetry off.

    python -m benchmarks.vs_litellm [--seconds 3] [--rounds 2] [--no-litellm]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks.gateway import Rig
from benchmarks.http_servers import _free_port, _wait, load_in_child, start_raw_server, summary
from fedgate.gateway.http import HttpConfig, HttpFront

HERE = Path(__file__).resolve().parent
BODY = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
).encode()
PATH = b"/v1/chat/completions"
CONNS = (1, 64)

Row = tuple[float, float, float]


class OpenAIRig(Rig):
    """:class:`Rig` whose one worker proxies to the upstream (``--backend openai``)."""

    def __init__(self, base_url: str) -> None:
        super().__init__(workers=1)
        self.base_url = base_url

    def worker_flags(self, index: int) -> list[str]:
        return [
            "--region", "us-west-2", "--model", "m", "--capability", "generate",
            "--backend", "openai", "--base-url", self.base_url, "--log-level", "WARNING",
            # Room above the 64 connections: at its limit a worker answers "overloaded",
            # and the gateway backs off the node (seconds with no node to ask).
            "--max-concurrency", "256",
        ]  # fmt: skip


def litellm_installed() -> bool:
    return importlib.util.find_spec("litellm") is not None


@contextlib.contextmanager
def upstream() -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "openai_upstream.py"), str(port)])
    try:
        _wait(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


def _http_ok(port: int, path: bytes, body: bytes, timeout: float) -> bool:
    """One POST answered 200 (LiteLLM accepts connections before it can route)."""
    request = (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (path, len(body), body)
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request)
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@contextlib.contextmanager
def litellm_proxy(upstream_port: int, log: Path) -> Iterator[int]:
    """LiteLLM's proxy in front of the upstream, with its defaults (one worker)."""
    port = _free_port()
    config = log.with_suffix(".yaml")
    # JSON is YAML: the model list without a YAML writer.
    config.write_text(json.dumps({
        "model_list": [{
            "model_name": "m",
            "litellm_params": {"model": "openai/m",
                               "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                               "api_key": "unused"},
        }],
        "litellm_settings": {"telemetry": False},
    }))  # fmt: skip
    env = dict(os.environ)
    env.update(
        # Its bundled model cost map: at import it would fetch one from the network.
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
        # No key on either side, as fedgate's front door here: on loopback only.
        LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true",
        NO_PROXY="127.0.0.1,localhost",
    )
    argv = [sys.executable, "-m", "litellm.proxy.proxy_cli", "--config", str(config),
            "--host", "127.0.0.1", "--port", str(port), "--telemetry", "False"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180.0  # importing the proxy takes many seconds
        while not _http_ok(port, PATH, BODY, 5.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"LiteLLM's proxy did not serve on {port}:\n{tail}")
            time.sleep(0.5)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _line(name: str, one: Row, many: Row, added: float | None) -> str:
    extra = f"{added:>9.3f}" if added is not None else f"{'—':>9}"
    return (f"{name:28} {one[0]:>8.3f} {one[1]:>8.3f} {extra} {many[2]:>10.0f} "
            f"{many[0]:>8.3f}")  # fmt: skip


HEADER = (f"{'path':28} {'p50 ms':>8} {'p99 ms':>8} {'added ms':>9} {'req/s@64':>10} "
          f"{'p50@64':>8}")  # fmt: skip


def run(
    seconds: float, rounds: int, *, litellm: bool = True, out: Callable[[str], None] = print
) -> dict[str, list[dict[int, Row]]]:
    """Measure every path ``rounds`` times; print each round; return the rows by path."""
    rows: dict[str, list[dict[int, Row]]] = {}
    if litellm and not litellm_installed():
        out("LiteLLM: skipped, not installed (pip install 'fedgate[peers]')")
        litellm = False
    elif not litellm:
        out("LiteLLM: skipped (--no-litellm)")
    with contextlib.ExitStack() as stack:
        up = stack.enter_context(upstream())
        raw, raw_port = start_raw_server(BODY)
        stack.callback(lambda: (raw.kill(), raw.wait()))
        if litellm:
            # Started first: the gateway's loop runs only while it measures, and
            # would miss its worker's heartbeats through LiteLLM's long start.
            log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "litellm.log"
            litellm_port = stack.enter_context(litellm_proxy(up, log))
        rig = stack.enter_context(OpenAIRig(f"http://127.0.0.1:{up}"))
        front = HttpFront(rig.gateway, HttpConfig(listen="127.0.0.1:0"))  # type: ignore[arg-type]
        rig.run(front.start())
        stack.callback(lambda: rig.run(front.stop()))
        paths = {
            "direct (upstream)": up,
            "fedgate": int(front.url.rsplit(":", 1)[1]),
            "generator ceiling": raw_port,
        }
        if litellm:
            paths["LiteLLM proxy"] = litellm_port
        for port in paths.values():  # warm every path (connections, first imports)
            rig.run(load_in_child(port, 4, min(seconds, 0.5), BODY, PATH))
        out(f"loop: {'uvloop' if rig.uvloop else 'asyncio'}; one openai-backend worker")
        for r in range(rounds):
            out(f"-- round {r + 1}/{rounds}")
            out(HEADER)
            this: dict[str, dict[int, Row]] = {}
            for name, port in paths.items():
                this[name] = {}
                for conns in CONNS:
                    lat, took = rig.run(load_in_child(port, conns, seconds, BODY, PATH))
                    this[name][conns] = summary(lat, took)
                rows.setdefault(name, []).append(this[name])
            base = this["direct (upstream)"][1][0]
            for name, by in this.items():
                added = by[1][0] - base if name in ("fedgate", "LiteLLM proxy") else None
                out(_line(name, by[1], by[64], added))
    _verdict(rows, out)
    return rows


def _added(rows: dict[str, list[dict[int, Row]]], name: str) -> list[float]:
    direct = rows["direct (upstream)"]
    return [r[1][0] - d[1][0] for r, d in zip(rows[name], direct, strict=True)]


def _verdict(rows: dict[str, list[dict[int, Row]]], out: Callable[[str], None]) -> None:
    n = len(rows["fedgate"])
    out(f"-- median over {n} rounds")
    out(HEADER)
    for name, per_round in rows.items():
        one = tuple(statistics.median(r[1][k] for r in per_round) for k in range(3))
        many = tuple(statistics.median(r[64][k] for r in per_round) for k in range(3))
        peer = name in ("fedgate", "LiteLLM proxy")
        added = statistics.median(_added(rows, name)) if peer else None
        out(_line(name, one, many, added))  # type: ignore[arg-type]
    if "LiteLLM proxy" not in rows:
        return
    ours, theirs = statistics.median(_added(rows, "fedgate")), statistics.median(
        _added(rows, "LiteLLM proxy")
    )
    rate_ours = statistics.median(r[64][2] for r in rows["fedgate"])
    rate_theirs = statistics.median(r[64][2] for r in rows["LiteLLM proxy"])
    out(f"added p50: fedgate {ours:.3f} ms, LiteLLM {theirs:.3f} ms: "
        f"LiteLLM's is {theirs / ours:.1f}x fedgate's (target >= 20)")  # fmt: skip
    out(f"req/s at 64: fedgate {rate_ours:.0f}, LiteLLM {rate_theirs:.0f}: "
        f"{rate_ours / rate_theirs:.1f}x (target >= 20)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-litellm", action="store_true", help="measure fedgate only")
    args = parser.parse_args()
    run(args.seconds, args.rounds, litellm=not args.no_litellm)


if __name__ == "__main__":
    main()
