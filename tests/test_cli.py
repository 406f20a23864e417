"""The ``fedgate`` command line: help, configuration errors, the gateway process and the demo.

The unmarked tests call ``main`` in-process and start nothing. The tests
marked ``process`` run ``fedgate gateway`` / ``fedgate demo`` as real
subprocesses with real worker processes and signals.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from rich.console import Console

from fedgate import cli
from fedgate.cli.demo import FEDERATION, REGIONS, DemoResult, Plan, render_summary
from fedgate.config import load_config, loads_config
from fedgate.gateway import Gateway
from fedgate.worker.backends.synthetic import synthetic_output, synthetic_token

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
EXAMPLE = REPO / "examples" / "federation.toml"


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH")) if p)
    out["PYTHONUNBUFFERED"] = "1"
    return out


@pytest.fixture
def no_start(monkeypatch: pytest.MonkeyPatch) -> list[Gateway]:
    """Gateways whose start() was called (it must not be, for a bad configuration)."""
    started: list[Gateway] = []

    async def start(self: Gateway) -> None:  # pragma: no cover - only runs on a bug
        started.append(self)
        raise AssertionError("a gateway started despite a bad configuration")

    monkeypatch.setattr(Gateway, "start", start)
    return started


# ------------------------------------------------------------------ help


def test_fedgate_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "gateway", "worker", "top", "dashboard"):
        assert re.search(rf"^  {name}\s+\S", out, re.M), name
    assert cli.main([]) == 2
    assert cli.main(["gatewy"]) == 2
    assert "expected a command" in capsys.readouterr().err


HELP = {
    "gateway": ["--config", "--check", "--bind", "--telemetry", "--no-telemetry", "--ingress",
                "--prometheus-port", "--region", "--origin", "--strategy", "--policy",
                "--max-retries", "--retry-delay", "--request-timeout", "--heartbeat-interval",
                "--heartbeat-liveness", "--failure-threshold", "--open-timeout",
                "REGION=CLEARANCE", "SIGHUP", "examples:"],
    "demo": ["--no-tui", "--duration", "--rate", "--seed", "--log-dir", "us-west-gpu-01",
             "eu-west-1", "Exit"],
    "worker": ["--gateway", "--node", "--region", "--model", "--capability", "--backend"],
    "top": ["--gateway", "--interval", "--once", "--key", "--gateway-key", "operators"],
    "dashboard": ["--gateway", "--interval", "--once"],
}  # fmt: skip


@pytest.mark.parametrize("name", list(HELP))
def test_every_command_explains_its_options(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps, and may break words at hyphens
    with pytest.raises(SystemExit) as info:
        cli.main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fedgate {name}")
    for option in HELP[name]:
        assert option in out, f"fedgate {name} --help does not mention {option}"


def test_help_through_the_real_entry_point_loads_no_numba() -> None:
    # `fedgate gateway --help` must be instant: nothing it imports compiles or loads Numba.
    code = (
        "import sys\n"
        "from fedgate.cli import main\n"
        "try:\n"
        "    main(['gateway', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "print('numba loaded:', 'numba' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "usage: fedgate gateway" in out.stdout
    assert "numba loaded: False" in out.stdout


# ------------------------------------------------------------------ gateway: bad configuration


def test_unknown_key_in_the_file_is_named_and_nothing_starts(
    no_start: list[Gateway], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["gateway", "--config", str(DATA / "bad_unknown_key.toml")]) == 2
    err = capsys.readouterr().err
    assert "policy.health.wieght: unknown key; expected one of weight" in err
    assert str(DATA / "bad_unknown_key.toml") in err
    assert no_start == []


def test_bad_value_in_the_file_is_named_and_nothing_starts(
    no_start: list[Gateway], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["gateway", "--config", str(DATA / "bad_value.toml")]) == 2
    err = capsys.readouterr().err
    assert "breaker.open_timeout: expected seconds in [0.001, 86400], got -1.0" in err
    assert no_start == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-retries", "-1"], "argument --max-retries: expected an integer in [0, 100], got -1"),  # noqa: E501
        (["--retry-delay", "nan"], "argument --retry-delay: expected seconds in [0, 86400], got nan"),  # noqa: E501
        (["--request-timeout", "0"], "argument --request-timeout: expected seconds in (0, 86400], got 0"),  # noqa: E501
        (["--open-timeout=-inf"], "argument --open-timeout: expected seconds in [0.001, 86400], got -inf"),  # noqa: E501
        (["--failure-threshold", "0"], "argument --failure-threshold: expected an integer in [1, 1023], got 0"),  # noqa: E501
        (["--heartbeat-interval", "inf"], "argument --heartbeat-interval: expected seconds in [0.001, 3600], got inf"),  # noqa: E501
        (["--heartbeat-liveness", "0"], "argument --heartbeat-liveness: expected an integer in [1, 100], got 0"),  # noqa: E501
        (["--policy", "health=nan"], "argument --policy: expected a number in [0, 1000000], got nan"),  # noqa: E501
        (["--policy", "cost=-1"], "argument --policy: expected a number in [0, 1000000], got -1"),
        (["--prometheus-port", "99999"], "argument --prometheus-port: expected an integer in"),
        (["--bind", "localhost:5555"], "argument --bind: expected a ZeroMQ endpoint"),
        (["--telemetry", "5556"], "argument --telemetry: expected a ZeroMQ endpoint"),
        (["--ingress", "x"], "argument --ingress: expected a ZeroMQ endpoint"),
        (["--origin", " "], "argument --origin: expected a non-empty string"),
    ],
)
def test_bad_flag_values_are_named_by_flag(
    flags: list[str], message: str, no_start: list[Gateway], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["gateway", "--config", str(EXAMPLE), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert no_start == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--region", "eu-west-1=SECRET"], "expected CLEARANCE one of PUBLIC"),
        (["--region", "eu-west-1"], "expected REGION=CLEARANCE"),
        (["--policy", "speed=1"], "expected NAME=WEIGHT with NAME one of health"),
        (["--policy", "health=high"], "expected a number as the weight"),
        (["--strategy", "fastest"], "invalid choice"),
        (["--max-retries", "three"], "expected an integer, got 'three'"),
        (["--telemetry", "tcp://a:1", "--no-telemetry"], "not allowed with"),
    ],
)
def test_malformed_flags_are_usage_errors(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["gateway", *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_config_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["gateway", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "absent.toml: cannot read" in capsys.readouterr().err


def test_check_prints_the_effective_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config", str(EXAMPLE), "--bind", "tcp://127.0.0.1:0", "--region",
            "ap-south-1=confidential", "--region", "me-central-1=PUBLIC", "--policy", "gpu=0.5",
            "--max-retries", "1", "--strategy", "round-robin", "--no-telemetry",
            "--failure-threshold", "2"]  # fmt: skip
    assert cli.main(["gateway", *argv, "--check"]) == 0
    out, err = capsys.readouterr()
    assert "configuration OK" in err
    cfg = loads_config(out)
    assert cfg.binds == ("tcp://127.0.0.1:*",)
    assert cfg.telemetry is None
    assert cfg.strategy == "round-robin"
    assert cfg.gateway.max_retries == 1
    assert cfg.breaker.failure_threshold == 2
    assert cfg.region("ap-south-1").clearance.name == "CONFIDENTIAL"  # type: ignore[union-attr]
    assert cfg.region("me-central-1").clearance.name == "PUBLIC"  # type: ignore[union-attr]
    assert cfg.policy.get("gpu").weight == 0.5  # type: ignore[union-attr]
    # everything else is the file's
    base = load_config(EXAMPLE)
    assert cfg.health == base.health and cfg.origin == base.origin
    assert cfg.policy.get("health") == base.policy.get("health")


# ------------------------------------------------------------------ demo (no processes)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--duration", "2"], "expected at least 4 seconds"),
        (["--duration", "nan"], "expected seconds in (0, 3600]"),
        (["--rate", "0"], "expected requests per second in (0, 1000]"),
        (["--rate", "inf"], "expected requests per second"),
        (["--seed", "x"], "expected an integer, got 'x'"),
    ],
)
def test_demo_rejects_bad_flags(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("duration", [4.0, 8.0, 20.0, 300.0, 3600.0])
def test_demo_plan_shows_the_whole_story_in_any_duration(duration: float) -> None:
    plan = Plan.for_duration(duration)
    # killed with traffic before and after, restarted after its breaker half-opened,
    # with time left to see it recover
    assert 0 < plan.kill_at < plan.restart_at < duration
    assert plan.kill_at + plan.open_timeout + 0.8 <= plan.restart_at  # + death noticed
    assert duration - plan.restart_at >= 0.3 * duration


def test_demo_federation_is_the_case_study_with_valid_worker_flags() -> None:
    from fedgate.cli.worker import build_parser, config_from_args

    assert [s.node for s in FEDERATION] == ["us-west-gpu-01", "eu-west-gpu-01", "ap-south-cpu-01"]
    clearance = {r.id: r.clearance.name for r in REGIONS}
    assert clearance == {"us-west-2": "INTERNAL", "eu-west-1": "RESTRICTED",
                         "ap-south-1": "INTERNAL"}  # fmt: skip
    for spec in FEDERATION:
        args = build_parser().parse_args(spec.argv("tcp://127.0.0.1:5555", 0.2))
        config, backend = config_from_args(args)
        assert (config.node, config.region, config.gpu) == (spec.node, spec.region, spec.gpu)
        assert config.capabilities == spec.capabilities
        assert config.heartbeat_interval == 0.2
        assert backend.ttft == spec.ttft  # type: ignore[attr-defined]
    ap = FEDERATION[2]
    assert not ap.gpu and ap.capabilities == ("generate",)
    assert ap.cost < min(s.cost for s in FEDERATION if s.gpu)


def _result(**kw: Any) -> DemoResult:
    r = DemoResult(duration=8.0, planned=8.0, rate=20.0, seed=1, sent=10, ok=9, failed=1,
                   failovers=3, resumes=2, retries=3, breaker_trips=1, tokens_verified=321,
                   restricted_requests=4, restricted_dispatches=4, open_timeout=1.2,
                   latency=(0.3, 0.9, 1.4), ttft=(0.04, 0.12, 0.13))  # fmt: skip
    r.errors["StreamInterruptedError"] = 1
    r.by_kind.update({"generate": 5, "transcribe": 3, "restricted": 2})
    r.transitions = [(2.56, "us-west-gpu-01", "CLOSED", "OPEN"),
                     (3.76, "us-west-gpu-01", "OPEN", "HALF_OPEN"),
                     (5.07, "us-west-gpu-01", "HALF_OPEN", "CLOSED")]  # fmt: skip
    r.events = [(2.4, "SIGKILL us-west-gpu-01 (pid 1) with 3 request(s) in flight"),
                (2.59, "breaker us-west-gpu-01: CLOSED -> OPEN")]  # fmt: skip
    r.nodes = [{"node": s.node, "region": s.region, "clearance": "X", "kind": "GPU",
                "requests": 1, "successes": 1, "failures": 0, "tokens": 5, "pids": [1, 2]}
               for s in FEDERATION]  # fmt: skip
    for key, value in kw.items():
        setattr(r, key, value)
    return r


def _render(result: DemoResult) -> str:
    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    render_summary(result, console)
    console.file.close()
    return console.export_text()


def test_demo_summary_reports_everything_and_passes() -> None:
    text = _render(_result())
    assert re.search(r"^failovers\s+3\b", text, re.M)
    assert re.search(r"^breaker trips\s+1\b", text, re.M)
    assert re.search(r"^sovereignty violations\s+0\b", text, re.M)
    assert re.search(r"^\s+\+\s*2\.56s\s+us-west-gpu-01\s+CLOSED -> OPEN$", text, re.M)
    assert "p50 300 ms  p95 900 ms  p99 1400 ms" in text
    assert "p50 40.0 ms" in text
    assert re.search(r"^tokens verified\s+321 \(0 wrong", text, re.M)
    assert "StreamInterruptedError 1" in text
    assert "ap-south-cpu-01" in text and "1,2" in text
    assert "SIGKILL us-west-gpu-01" in text
    assert text.count("CLOSED -> OPEN") == 1  # breaker lines are not repeated in the timeline
    assert "RESULT: PASS" in text


def test_demo_summary_shows_the_rogue_worker_refused() -> None:
    text = _render(_result(rogue_started=True, rogue_refusal="key 'rogue' has no grant"))
    assert re.search(r"^rogue worker\s+refused \(key 'rogue' has no grant\); 0 requests", text,
                     re.M)
    assert "RESULT: PASS" in text
    assert "rogue worker" not in _render(_result())


def test_demo_summary_explains_a_breaker_that_did_not_trip() -> None:
    text = _render(_result(breaker_trips=0, killed_inflight=1))
    assert "had only 1 request(s) in flight when killed: raise --rate" in text
    assert "raise --rate" not in _render(_result(killed_inflight=4))


def test_demo_summary_says_when_it_was_cut_short() -> None:
    assert "- interrupted (planned 20 s)" in _render(_result(interrupted=True, planned=20.0))
    assert "- stopped early (planned 20 s)" in _render(_result(stopped_early=True, planned=20.0))
    assert "planned" not in _render(_result())


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"sovereignty_violations": ["r1 dispatched to us-west-gpu-01"]}, "sovereignty"),
        ({"token_mismatches": ["r2 token 3"]}, "wrong, duplicated or reordered"),
        ({"truncations": ["r3 ended after 4 of 9"]}, "truncated"),
        ({"lost": 2}, "2 lost request(s)"),
        ({"ok": 0}, "no request succeeded"),
        ({"routes_unchecked": 1}, "could not be checked"),
        ({"rogue_started": True, "rogue_refusal": "no grant", "rogue_requests": 2},
         "2 request(s) reached the rogue worker"),
        ({"rogue_started": True}, "the rogue worker was not refused"),
    ],
)
def test_demo_summary_fails_on_any_broken_invariant(change: dict[str, Any], why: str) -> None:
    result = _result(**change)
    assert result.violations()
    text = _render(result)
    assert "RESULT: FAIL" in text and why in text
    assert "RESULT: PASS" not in text


# ------------------------------------------------------------------ processes


class _Lines:
    """A subprocess's stdout, line by line, with timeouts (a reader thread)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self.lines.put(line)
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"no line matching {pattern!r} in:\n{''.join(self.seen)}"
                ) from None
            if line is None:
                raise EOFError(f"output ended before {pattern!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found


def _wait_for(path: Path, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        time.sleep(0.05)
    raise TimeoutError(f"{pattern!r} not in {path.name}:\n{text}")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[Any]]]:
    """Processes a test starts; whatever is left is killed at the end."""
    started: list[subprocess.Popen[Any]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        if p.stdout is not None:
            p.stdout.close()


class _Client:
    """A DEALER client of the gateway's ingress."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 15_000)
        self.sock.connect(endpoint)

    def send(self, **request: Any) -> None:
        self.sock.send(msgspec.msgpack.encode(request))

    def recv(self) -> dict[str, Any]:
        reply: dict[str, Any] = msgspec.msgpack.decode(self.sock.recv())
        return reply

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@pytest.mark.process
@pytest.mark.chaos
@pytest.mark.timeout(240)
def test_gateway_process_serves_a_worker_reloads_and_stops_cleanly(
    tmp_path: Path, procs: list[subprocess.Popen[Any]]
) -> None:
    config = tmp_path / "federation.toml"
    config.write_text(EXAMPLE.read_text())
    err = tmp_path / "gateway.err"
    with err.open("w") as errf:
        gw = subprocess.Popen(
            [sys.executable, "-m", "fedgate", "gateway", "--config", str(config),
             "--bind", "tcp://127.0.0.1:0", "--telemetry", "tcp://127.0.0.1:0",
             "--ingress", "tcp://127.0.0.1:0", "--heartbeat-interval", "0.2"],
            stdout=subprocess.PIPE, stderr=errf, text=True, env=env(), cwd=tmp_path,
        )  # fmt: skip
    procs.append(gw)
    out = _Lines(gw)
    out.until(r"is running", timeout=120)
    endpoint = out.until(r"^\s+(tcp://127\.0\.0\.1:\d+)\s*$", 5).group(1)
    dashboard = out.until(r"fedgate top --gateway (tcp://\S+)", 5).group(1)
    ingress = out.until(r"clients:\s+(tcp://\S+)", 5).group(1)
    out.until(r"regions:\s+us-west-2 INTERNAL, eu-west-1 RESTRICTED", 5)

    wlog = tmp_path / "worker.log"
    with wlog.open("w") as wf:
        worker = subprocess.Popen(
            [sys.executable, "-m", "fedgate", "worker", "--gateway", endpoint, "--node",
             "eu-west-gpu-01", "--region", "eu-west-1", "--model", "llama-3-8b",
             "--capability", "generate", "--gpu", "--tokens", "6", "--heartbeat-interval", "0.2"],
            stdout=wf, stderr=wf, env=env(),
        )  # fmt: skip
    procs.append(worker)
    _wait_for(err, r"registered: node eu-west-gpu-01 region eu-west-1", timeout=60)

    client = _Client(ingress)
    try:
        # a RESTRICTED request, served in the cleared region
        client.send(id="req-001", capability="generate", input=b"hello", tenant="acme-corp",
                    privacy="RESTRICTED")  # fmt: skip
        done = client.recv()
        assert done["done"] is True and done["id"] == "req-001"
        assert (done["node"], done["region"], done["tokens"]) == ("eu-west-gpu-01", "eu-west-1", 6)
        assert done["output"] == synthetic_output("req-001", 6)
        # a stream, every token checked
        client.send(id="req-002", capability="generate", stream=True)
        tokens: list[bytes] = []
        while "done" not in (reply := client.recv()):
            assert "error" not in reply, reply
            tokens += reply["tokens"]
        assert tokens == [synthetic_token("req-002", i) for i in range(6)]
        assert reply["tokens"] == 6
        # typed errors come back by name
        client.send(id="req-003", capability="transcribe")
        assert client.recv()["error"] == "NoCapacityError"
        client.send(id="req-004", capability="generate", privacy="TOP-SECRET")
        assert client.recv()["error"] == "BadRequest"
    finally:
        client.close()

    from fedgate.telemetry import TelemetryClient

    with TelemetryClient(dashboard, timeout=5.0) as tele:
        snap = tele.fetch_sync()
        assert [w["node"] for w in snap["workers"] if w["alive"]] == ["eu-west-gpu-01"]
        assert snap["stats"]["successful_requests"] == 2
        assert snap["policy"]["strategy"] == "least-latency"

        # A failed reload changes nothing ...
        text = EXAMPLE.read_text().replace('strategy = "least-latency"', 'strategy = "round-robin"')
        typo = re.sub(r"(\[policy\.health\][^\n]*\n)weight", r"\1wieght", text)
        assert typo != text
        config.write_text(typo)
        gw.send_signal(signal.SIGHUP)
        _wait_for(err, r"reload rejected, configuration unchanged: .*policy\.health\.wieght", 10)
        snap = tele.fetch_sync()
        assert snap["policy"]["strategy"] == "least-latency"
        assert snap["policy"]["policies"][0] == {
            "name": "health", "weight": 2.0, "share": pytest.approx(2 / 6), "params": {}
        }  # fmt: skip
        # ... and a valid one applies.
        config.write_text(EXAMPLE.read_text().replace(
            'strategy = "least-latency"', 'strategy = "round-robin"'))  # fmt: skip
        gw.send_signal(signal.SIGHUP)
        _wait_for(err, r"reloaded .*strategy: round-robin", 10)
        # Snapshots are shared for a quarter of a second (TelemetryServer's
        # min_interval): the next one built after the reload shows it.
        deadline = time.monotonic() + 2.0
        while (strategy := tele.fetch_sync()["policy"]["strategy"]) != "round-robin":
            assert time.monotonic() < deadline, strategy
            time.sleep(0.05)

    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0
    assert "gateway stopped" in err.read_text()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0


@pytest.mark.process
@pytest.mark.timeout(60)
def test_gateway_process_with_a_bad_config_binds_nothing(tmp_path: Path) -> None:
    port = _free_port()
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[gateway]\nbind = "tcp://127.0.0.1:{port}"\n[breaker]\nopen_timeout = nan\n')
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "fedgate", "gateway", "--config", str(bad)],
        capture_output=True, text=True, env=env(), timeout=50,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"{bad}: breaker.open_timeout: expected seconds in [0.001, 86400], got nan" in out.stderr
    assert "running" not in out.stdout
    # It failed at the configuration, long before the kernels would have compiled.
    assert time.monotonic() - started < 30


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.process
@pytest.mark.chaos
@pytest.mark.timeout(300)
def test_demo_runs_a_failover_and_a_breaker_trip_without_violations(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fedgate", "demo", "--no-tui", "--duration", "8",
         "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, env=env(), timeout=280,
    )  # fmt: skip
    text = out.stdout
    assert out.returncode == 0, text + out.stderr
    # progress lines, then the summary
    assert re.search(r"^\[\s*\d+\.\d+s\] requests\s+\d+\s+ok\s+\d+", text, re.M)
    assert re.search(r"SIGKILL us-west-gpu-01 \(pid \d+\)", text)
    failovers = int(re.search(r"^failovers\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    trips = int(re.search(r"^breaker trips\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    assert failovers >= 1 and trips >= 1, text
    assert re.search(r"^\s+\+\s*\d+\.\d+s\s+us-west-gpu-01\s+CLOSED -> OPEN$", text, re.M), text
    assert re.search(r"^sovereignty violations\s+0 \(\d+ RESTRICTED requests", text, re.M), text
    verified = int(re.search(r"^tokens verified\s+(\d+) \(0 wrong", text, re.M).group(1))  # type: ignore[union-attr]
    assert verified > 0
    assert re.search(r"^lost\s+0\b", text, re.M)
    # The rogue worker, a trusted key with no grant claiming eu-west: refused, nothing reached it.
    assert re.search(r"rogue worker \(pid \d+\)", text)
    assert re.search(
        r"^rogue worker\s+refused \(key 'rogue' has no grant for node id 'eu-west-rogue-01'\); "
        r"0 requests reached it", text, re.M), text
    assert "RESULT: PASS" in text
    # every process it started is gone: the logs name their pids
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", text)]
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
