"""``fedgate top``: the Textual dashboard, driven by Textual's own testing tools.

* Pilot tests run the app against a REAL gateway with in-process workers
  (real sockets and frames) and press every key Help lists.
* Snapshot tests (pytest-textual-snapshot) render each tab from a snapshot
  recorded from a real gateway run (``tests/data/top_snapshot.json``), with
  ids, ports and times normalised so the SVGs in ``tests/__snapshots__`` are
  stable. Re-record it with ``PYTHONPATH=. python tests/test_top.py --record`` and update
  the SVGs with ``pytest tests/test_top.py --snapshot-update``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import inproc
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Sparkline, Static

from fedgate import Capability, InferenceRequest, PrivacyLevel, Region
from fedgate.cli import top as cli
from fedgate.federation.breaker import BreakerConfig, CircuitBreaker
from fedgate.gateway import Gateway, GatewayConfig
from fedgate.telemetry import TelemetryClient, TelemetryServer, snapshot, telemetry_for
from fedgate.top.app import KEYS, TABS, WIDE, TopApp, latency

FIXTURE = Path(__file__).parent / "data" / "top_snapshot.json"
SIZE = (132, 42)
NARROW, ROOMY = (100, 30), (200, 50)  # the smallest terminal every value must fit, and a big one
TAB_IDS = [tab for tab, _, _ in TABS]


# ---------------------------------------------------------------- a real federation


@contextlib.asynccontextmanager
async def federation(*nodes: dict[str, Any], **kw: Any) -> AsyncIterator[Gateway]:
    """A gateway with one in-process worker per node spec (see ``inproc.federation``)."""
    config = GatewayConfig(request_timeout=5.0, retry_delay=0.01, max_retries=1)
    async with inproc.federation(
        *nodes, config=config, model="llama-3-8b", options={"tokens": 4}, **kw
    ) as (gateway, _):
        yield gateway


SEED_NODES = (
    {"node": "us-west-gpu-01", "region": "us-west-2", "models": ["whisper-large-v3", "llama-3-8b"],
     "capabilities": ["transcribe", "generate"], "gpu": True, "cost": 2.0,
     "options": {"tokens": 4, "ttft": 0.004}},
    {"node": "eu-west-gpu-01", "region": "eu-west-1", "models": ["llama-3-8b"],
     "capabilities": ["generate"], "gpu": True, "cost": 1.5,
     "options": {"tokens": 4, "ttft": 0.012}},
    {"node": "ap-south-cpu-01", "region": "ap-south-1", "models": ["whisper-large-v3"],
     "capabilities": ["transcribe"], "cost": 0.5, "options": {"tokens": 4, "ttft": 0.03}},
)  # fmt: skip
SEED_REGIONS = (
    Region("us-west-2", clearance=PrivacyLevel.CONFIDENTIAL),
    Region("eu-west-1", clearance=PrivacyLevel.RESTRICTED),
)


def req(rid: str, cap: Capability = Capability.GENERATE, **kw: Any) -> InferenceRequest:
    return InferenceRequest(cap, b"x", request_id=rid, **kw)


def _request(i: int, prefix: str) -> InferenceRequest:
    cap = Capability.TRANSCRIBE if i % 3 == 2 else Capability.GENERATE
    return req(f"{prefix}-{i:03d}", cap, tenant_id=("acme-corp", "globex", None)[i % 3])


async def traffic(gw: Gateway, n: int, prefix: str = "req", *, concurrent: bool = False) -> None:
    """``n`` requests: generate for two tenants, transcribe without one, every third."""
    if concurrent:
        await asyncio.gather(*(gw.infer(_request(i, prefix)) for i in range(n)))
        return
    for i in range(n):
        await gw.infer(_request(i, prefix))


def live_app(gw: Gateway) -> TopApp:
    """The dashboard on a gateway's snapshots, refreshed only when asked (or by r)."""
    app = TopApp(lambda: snapshot(gw), interval=60.0)
    app.animation_level = "none"  # the pilot need not wait for tab underlines to glide
    return app


def cells(app: TopApp, table_id: str) -> list[list[str]]:
    table = app.query_one(f"#{table_id}", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def column(app: TopApp, table_id: str, index: int) -> list[str]:
    return [row[index] for row in cells(app, table_id)]


def text_of(app: TopApp, widget_id: str) -> str:
    return str(app.query_one(f"#{widget_id}", Static).render())


async def until(pilot: Pilot[Any], check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.02)


# ---------------------------------------------------------------- pilot tests: live gateway


async def test_every_tab_renders_live_data_from_a_real_gateway() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=5, open_timeout=30.0))
    async with federation(*SEED_NODES, regions=SEED_REGIONS, breaker=breaker) as gw:
        telemetry_for(gw)  # attached with the gateway, as TelemetryServer does: sees the trip
        await traffic(gw, 9)
        for _ in range(5):
            gw.breaker.record_failure("ap-south-cpu-01")
        app = live_app(gw)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.fetches >= 1)
            nodes = {"us-west-gpu-01", "eu-west-gpu-01", "ap-south-cpu-01"}

            await pilot.press("1")
            assert app.active_tab == "catalog"
            catalog = cells(app, "catalog-table")
            assert {(r[0], r[1]) for r in catalog} == {
                ("whisper-large-v3", "us-west-gpu-01"), ("llama-3-8b", "us-west-gpu-01"),
                ("llama-3-8b", "eu-west-gpu-01"), ("whisper-large-v3", "ap-south-cpu-01"),
            }  # fmt: skip
            assert all(r[4] == "alive" for r in catalog)

            await pilot.press("2")
            assert app.active_tab == "health"
            health = {r[0]: r for r in cells(app, "health-table")}
            assert set(health) == nodes
            served = [r for r in health.values() if r[1] == "HEALTHY"]
            assert served and all(r[2].endswith("ms") for r in served)  # a real p50

            await pilot.press("3")
            assert app.active_tab == "routing"
            recent = column(app, "routes-table", 1)
            assert recent[0] == "req-008" and len(recent) == 9
            breakdown = cells(app, "breakdown-table")
            assert {(r[0], r[1]) for r in breakdown} >= {
                ("generate", "us-west-gpu-01"), ("generate", "eu-west-gpu-01"),
                ("transcribe", "ap-south-cpu-01"),
            }  # fmt: skip
            ap = next(r for r in breakdown if r[1] == "ap-south-cpu-01")
            assert ap[3] == "no" and ap[-1] == "breaker: OPEN"

            await pilot.press("4")
            assert app.active_tab == "circuits"
            circuits = {r[0]: r for r in cells(app, "circuits-table")}
            assert set(circuits) == nodes
            assert circuits["ap-south-cpu-01"][1:3] == ["OPEN", "5"]
            assert circuits["ap-south-cpu-01"][7].endswith("s")  # time to reset
            assert circuits["us-west-gpu-01"][1] == "CLOSED"
            assert cells(app, "transitions-table")[0][1:] == ["ap-south-cpu-01", "CLOSED", "OPEN"]

            await pilot.press("5")
            assert app.active_tab == "stats"
            stats = dict((r[0], r[1]) for r in cells(app, "stats-table"))
            assert stats["Total requests"] == "9" and stats["Successful"] == "9"
            assert stats["Breaker trips"] == "1"
            split = {(r[0], r[1]): r for r in cells(app, "split-table")}
            assert split[("tenant", "acme-corp")][2] == "3"

            await pilot.press("6")
            assert app.active_tab == "policies"
            policies = [(r[0], r[1]) for r in cells(app, "policies-table")]
            assert policies == [("health", "2"), ("latency", "1"), ("privacy", "1"),
                                ("locality", "1"), ("cost", "1")]  # fmt: skip
            regions = {r[0]: r[1] for r in cells(app, "regions-table")}
            assert regions == {"ap-south-1": "INTERNAL", "eu-west-1": "RESTRICTED",
                               "us-west-2": "CONFIDENTIAL"}  # fmt: skip
            assert "least-latency" in text_of(app, "strategy")

            header = text_of(app, "header")
            assert gw.gateway_id in header and "3 live workers" in header and "● live" in header


async def test_every_key_does_what_help_says() -> None:
    async with federation(*SEED_NODES[:2]) as gw:
        await traffic(gw, 4)
        app = live_app(gw)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.fetches >= 1)
            # Help documents every key, and every key is bound.
            await pilot.press("question_mark")
            assert app.active_tab == "help"
            help_text = text_of(app, "help-text")
            bound = {b.key for b in app.BINDINGS}  # type: ignore[union-attr]
            for key, label, what in KEYS:
                assert label in help_text and what in help_text
                assert key in bound

            for key, tab in zip("1234567", TAB_IDS, strict=False):
                await pilot.press(key)
                assert app.active_tab == tab

            # Tab / Shift+Tab: next / previous, wrapping around the eight tabs (from 7).
            await pilot.press("tab")
            assert app.active_tab == "help"
            await pilot.press("tab")
            assert app.active_tab == "catalog"
            await pilot.press("shift+tab")
            assert app.active_tab == "help"
            await pilot.press("shift+tab")
            assert app.active_tab == "tenants"

            # j / k move the cursor in the active tab's table.
            await pilot.press("2")
            table = app.active_table()
            assert table is not None and table.id == "health-table" and table.row_count == 2
            assert table.cursor_row == 0
            await pilot.press("j")
            assert table.cursor_row == 1
            await pilot.press("j")  # the last row: stays
            assert table.cursor_row == 1
            await pilot.press("k")
            assert table.cursor_row == 0
            # The cursor survives a refresh.
            await pilot.press("j")
            await app.refresh_data()
            assert table.cursor_row == 1

            # r fetches now (the interval is a minute) and shows what changed.
            await pilot.press("5")
            before = app.fetches
            assert dict((r[0], r[1]) for r in cells(app, "stats-table"))["Total requests"] == "4"
            await traffic(gw, 2, prefix="more")
            await pilot.press("r")
            await until(pilot, lambda: app.fetches > before)
            stats = dict((r[0], r[1]) for r in cells(app, "stats-table"))
            assert stats["Total requests"] == "6"

            # q quits.
            assert app.return_code is None
            await pilot.press("q")
            await until(pilot, lambda: app.return_code is not None)
            assert app.return_code == 0


async def test_empty_federation_shows_how_to_start_a_worker() -> None:
    async with federation() as gw:
        app = live_app(gw)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.fetches >= 1)
            banner = text_of(app, "banner")
            assert "No workers registered yet" in banner
            assert f"fedgate worker --gateway {gw.endpoints[0]}" in banner
            assert app.query_one("#banner").display
            assert "0 live workers" in text_of(app, "header")
            for tab in TAB_IDS[:-1]:  # every tab still renders, empty
                app.action_show_tab(tab)
                await pilot.pause()
            assert cells(app, "catalog-table") == [] and cells(app, "health-table") == []
            assert column(app, "policies-table", 0)[0] == "health"


async def test_through_the_telemetry_endpoint_disconnect_and_reconnect() -> None:
    async with federation(*SEED_NODES[:1]) as gw:
        await traffic(gw, 2)
        server = TelemetryServer(gw, "tcp://127.0.0.1:0")
        await server.start()
        endpoint = server.endpoint
        client = TelemetryClient(endpoint, timeout=0.3)
        app = TopApp(client.fetch, interval=0.1, endpoint=endpoint)
        app.animation_level = "none"
        try:
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.fetches >= 2)
                await pilot.press("2")
                assert column(app, "health-table", 0) == ["us-west-gpu-01"]
                assert "● live" in text_of(app, "header")

                await server.stop()  # the gateway stops answering
                await until(pilot, lambda: app.connected is False)
                assert "disconnected — retrying" in text_of(app, "header")
                assert endpoint in text_of(app, "banner")
                assert column(app, "health-table", 0) == ["us-west-gpu-01"]  # last data stays

                server = TelemetryServer(gw, endpoint)  # back on the same port
                await server.start()
                fetched = app.fetches
                await until(pilot, lambda: app.connected is True and app.fetches > fetched)
                assert "● live" in text_of(app, "header")
                assert not app.query_one("#banner").display
        finally:
            await server.stop()
            client.close()


async def test_a_source_that_returns_garbage_is_reported_not_fatal() -> None:
    answers: list[Any] = [{"schema": 1}, "not a dict"]
    app = TopApp(lambda: answers.pop(0), interval=60.0)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected is not None)
        assert app.connected is False and "unreadable snapshot" in (app.last_error or "")
        assert not await app.refresh_data()
        assert "expected a snapshot dict, got str" in (app.last_error or "")
        assert "disconnected" in text_of(app, "header")


def test_app_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="source"):
        TopApp("nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval"):
        TopApp(dict, interval=0)


# ---------------------------------------------------------------- the command


def test_cli_help_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"], prog="fedgate top")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--gateway ENDPOINT" in out and "--interval SECONDS" in out and "--once" in out
    assert "tcp://127.0.0.1:5556" in out and "j/k" in out
    with pytest.raises(SystemExit) as exc:
        cli.main(["--interval", "0"])
    assert exc.value.code == 2
    assert "argument --interval: expected finite seconds > 0, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["--gateway", "localhost:5556"])
    assert exc.value.code == 2
    assert "argument --gateway: expected a ZeroMQ endpoint" in capsys.readouterr().err


async def test_cli_once_prints_a_snapshot_or_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with federation(*SEED_NODES[:1]) as gw, TelemetryServer(gw, "tcp://127.0.0.1:0") as srv:
        code = await asyncio.to_thread(cli.main, ["--once", "--gateway", srv.endpoint])
        assert code == 0
        data = json.loads(capsys.readouterr().out)
        assert data["gateway"]["id"] == gw.gateway_id
        assert [w["node"] for w in data["workers"]] == ["us-west-gpu-01"]
        endpoint = srv.endpoint
    code = await asyncio.to_thread(
        cli.main, ["--once", "--gateway", endpoint, "--timeout", "0.2"]
    )
    assert code == 1
    assert f"gateway telemetry at {endpoint} did not answer" in capsys.readouterr().err


# ---------------------------------------------------------------- snapshot tests (SVG)


def recorded() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


async def test_recorded_snapshot_has_the_live_schema() -> None:
    """The fixture must not rot: same sections and row keys as a live snapshot."""
    fixture = recorded()
    async with federation(*SEED_NODES[:1]) as gw:
        await traffic(gw, 1)
        live = snapshot(gw)
    assert fixture["schema"] == live["schema"]
    # "tenants" is optional (older gateways lack it; the fixture predates it): the
    # rows the Tenants tab is tested with must have the live rows' shape.
    assert set(fixture) | {"tenants"} == set(live) | {"tenants"}
    if live.get("tenants"):
        assert set(TENANT_ROWS[0]) == set(live["tenants"][0])
        assert set(TENANT_ROWS[0]["rejected"]) == set(live["tenants"][0]["rejected"])
    for section in ("gateway", "stats", "rates", "policy", "config", "routing"):
        assert set(fixture[section]) == set(live[section]), section
    for section in ("workers", "health", "breakers", "history"):
        assert set(fixture[section][0]) == set(live[section][0]), section
    assert set(fixture["routing"]["recent"][0]) == set(live["routing"]["recent"][0])
    assert fixture["transitions"], "the recording shows a breaker transition"


async def _ready(pilot: Pilot[Any], tab: str | None = None, keys: tuple[str, ...] = ()) -> None:
    app = pilot.app
    assert isinstance(app, TopApp)
    await app.refresh_data()
    if tab is not None:
        app.action_show_tab(tab)
    await pilot.press(*keys)
    await pilot.pause()


@pytest.mark.parametrize("size", [NARROW, ROOMY], ids=["100x30", "200x50"])
@pytest.mark.parametrize("tab", TAB_IDS)
def test_snapshot_each_tab(snap_compare: Any, tab: str, size: tuple[int, int]) -> None:
    data = troubled()
    app = TopApp(lambda: data, interval=3600.0)
    assert snap_compare(app, terminal_size=size, run_before=lambda p: _ready(p, tab))


def test_snapshot_empty_federation(snap_compare: Any) -> None:
    data = recorded()
    data["workers"] = []
    data["catalog"] = {"models": {}, "capabilities": [], "deployments": 0}
    data["health"] = data["breakers"] = data["transitions"] = []
    data["routing"] = {"recent": [], "breakdown": {}, "note": data["routing"]["note"]}
    assert snap_compare(TopApp(lambda: data, interval=3600.0), terminal_size=SIZE,
                        run_before=lambda p: _ready(p))  # fmt: skip


def test_snapshot_disconnected(snap_compare: Any) -> None:
    data = recorded()
    answers: list[Any] = [data]

    def source() -> dict[str, Any]:
        if answers:
            return answers.pop()
        raise TimeoutError("gateway telemetry at tcp://127.0.0.1:5556 did not answer")

    async def run_before(pilot: Pilot[Any]) -> None:
        await _ready(pilot, "health", ("j",))
        app = pilot.app
        assert isinstance(app, TopApp)
        await app.refresh_data()
        await pilot.pause()

    app = TopApp(source, interval=3600.0, endpoint="tcp://127.0.0.1:5556")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_stats_tab_has_sparklines_of_real_history() -> None:
    data = recorded()
    history = data["history"]
    assert len(history) >= 8 and max(h["rps"] for h in history) > 0

    async def check() -> None:
        app = TopApp(lambda: data, interval=3600.0)
        async with app.run_test(size=SIZE) as pilot:
            await _ready(pilot, "stats")
            spark = app.query_one("#rps-spark", Sparkline)
            assert list(spark.data or []) == [h["rps"] for h in history]
            p99 = app.query_one("#p99-spark", Sparkline)
            assert max(p99.data or [0]) > 0
            assert "Requests/s — now" in text_of(app, "rps-label")

    asyncio.run(check())


# ---------------------------------------------------------------- every value whole, 100-200 cols

TENANT_ROWS: list[dict[str, Any]] = [
    {"tenant": "acme-corp", "weight": 2.0, "in_flight": 12, "max_concurrent": 16, "waiting": 3,
     "admitted": 18234, "completed": 18190, "failed": 32, "tokens": 4718352,
     "rejected": {"concurrency": 41, "requests": 7, "tokens": 0}},
    {"tenant": "globex", "weight": 1.0, "in_flight": 0, "max_concurrent": None, "waiting": 0,
     "admitted": 977, "completed": 977, "failed": 0, "tokens": 250112,
     "rejected": {"concurrency": 0, "requests": 0, "tokens": 12}},
    {"tenant": "default", "weight": 0.5, "in_flight": 1, "max_concurrent": 4, "waiting": 0,
     "admitted": 55, "completed": 54, "failed": 0, "tokens": 9000,
     "rejected": {"concurrency": 0, "requests": 3, "tokens": 0}},
]  # fmt: skip
"""The Tenants tab's rows, in the telemetry snapshot's shape (``snapshot()["tenants"]``)."""


def troubled() -> dict[str, Any]:
    """The recorded snapshot with a federation in trouble: every health state, latencies
    from µs to s, a lost worker, an HTTP request id, a slow gateway and tenant rows."""
    data = recorded()
    h = data["health"]
    h[0].update(state="DEGRADED", p50=0.00085, p95=0.0123, p99=0.349)
    h[1].update(state="UNHEALTHY", p50=1.25, p95=2.5, p99=12.3, alive=False,
                heartbeat_age=754.0, last_check_age=95.0)  # fmt: skip
    h[2].update(state="UNKNOWN", p50=None, p95=None, p99=None)
    data["stats"].update(latency_p50=0.349, latency_p95=1.2, latency_p99=2.5,
                         ttft_p50=0.00042, ttft_p99=0.0871)  # fmt: skip
    data["routing"]["recent"][0]["request_id"] = "chatcmpl-3f9a0c1d2e4b5a6978c0d1e2"
    data["tenants"] = json.loads(json.dumps(TENANT_ROWS))
    return data


def fresh() -> dict[str, Any]:
    """The recorded snapshot as a gateway shows it before its first answers: nothing
    measured yet, every node HEALTHY (columns sized for "—" and "HEALTHY")."""
    data = recorded()
    for h in data["health"]:
        h.update(state="HEALTHY", p50=None, p95=None, p99=None)
    for key in ("avg_latency", "latency_p50", "latency_p95", "latency_p99", "ttft_p50",
                "ttft_p95", "ttft_p99"):  # fmt: skip
        data["stats"][key] = None
    return data


def screen_text(app: TopApp) -> str:
    """What the terminal shows now, as plain text (the SVG snapshot's content)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      record=True, legacy_windows=False, safe_box=False)  # fmt: skip
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text(styles=False)


def assert_every_cell_whole(app: TopApp, screen: str, where: str) -> int:
    """Each table of the active tab fits its width, and each row on screen shows every
    cell whole, in order, on one line. Returns how many rows were checked."""
    pane = app.query_one("#tabs").active_pane  # type: ignore[attr-defined]
    lines = screen.splitlines()
    checked = 0
    for table in pane.query(DataTable):
        if not table.display:
            continue
        assert table.max_scroll_x == 0, (
            f"{where}: #{table.id} is {table.virtual_size.width} columns wide in "
            f"{table.size.width}: part of it is off screen"
        )
        # Rows on screen: below the header line, inside what the tab's scroll view shows.
        geometry = app.screen.find_widget(table)
        top = geometry.region.y + 1 - table.scroll_offset.y
        clip = geometry.clip.intersection(geometry.region)
        for i in range(table.row_count):
            if not clip.y < top + i < clip.bottom:
                continue
            cells = [str(c) for c in table.get_row_at(i) if str(c)]
            pattern = r"\s+".join(re.escape(c) for c in cells)
            assert any(re.search(rf"(^|\s){pattern}(\s|$)", ln) for ln in lines), (
                f"{where}: #{table.id} row {i} is not shown whole: {cells}\n{screen}"
            )
            checked += 1
    return checked


LATENCY = re.compile(r"^(—|\d+(\.\d+)? (µs|ms|s))$")


def test_latency_carries_the_unit_that_suits_the_value() -> None:
    cases = {
        None: "—", 0.0: "0.0 µs", 4.2e-6: "4.2 µs", 0.00085: "850 µs", 0.0009996: "1.0 ms",
        0.0092: "9.2 ms", 0.0192: "19.2 ms", 0.349: "349 ms", 0.99996: "1.00 s", 1.25: "1.25 s",
        12.3: "12.3 s", 754.0: "754 s",
    }  # fmt: skip
    assert {x: latency(x) for x in cases} == cases
    for x in (1e-7, 3.3e-5, 0.0999, 0.0999999, 9.999, 99.99, 999.0):
        assert LATENCY.match(latency(x)) and len(latency(x)) <= 7, latency(x)


@pytest.mark.parametrize("size", [NARROW, ROOMY], ids=["100x30", "200x50"])
async def test_every_value_is_shown_whole(size: tuple[int, int]) -> None:
    """The federation starts fresh and gets into trouble: values that change in place
    (HEALTHY -> UNHEALTHY, — -> 2.50 s) must widen their columns, never be cut."""
    answers = [fresh(), troubled()]
    app = TopApp(lambda: answers[min(app.fetches, 1)], interval=3600.0)
    app.animation_level = "none"
    async with app.run_test(size=size) as pilot:
        await app.refresh_data()
        await app.refresh_data()
        data = answers[1]
        checked = 0
        for tab in TAB_IDS:
            app.action_show_tab(tab)
            await pilot.pause()
            screen = screen_text(app)
            checked += assert_every_cell_whole(app, screen, f"{tab} at {size}")
            if tab == "health":
                for h in data["health"]:
                    line = next(ln for ln in screen.splitlines() if f" {h['node']} " in ln)
                    assert f" {h['state']} " in line, line
                    for q in ("p50", "p95", "p99"):
                        assert f" {latency(h[q])} " in line, (q, line)
                row = cells(app, "health-table")[0]
                assert all(LATENCY.match(v) for v in row[2:5]), row
                lost = next(ln for ln in screen.splitlines() if " eu-west-gpu-01 " in ln).rstrip()
                assert ("✖ 12m 34s ago" in lost) if size == NARROW else lost.endswith(" no")
            if tab == "stats":
                assert "Latency p50 / p95 / p99    349 ms / 1.20 s / 2.50 s" in screen
                assert "TTFT p50 / p99             420 µs / 87.1 ms" in screen
                label = " ".join(screen.split())
                assert "Requests/s — now 18.5/s, peak 27.6/s (last 4.4s)" in label
            if tab == "routing":
                assert "chatcmpl-3f9a0c1d2e4b5a6978c0d1e2" in screen
                reason = "ap-south-cpu-01 (transcribe): breaker: OPEN"
                assert (reason in text_of(app, "breakdown-reasons")) == (size == NARROW)
        assert checked >= 40  # the check looked at the rows, not at empty tables

        # The same dashboard, resized: the tables take the other shape at once.
        other = ROOMY if size == NARROW else NARROW
        await pilot.resize_terminal(*other)
        await pilot.pause()
        app.action_show_tab("health")
        await pilot.pause()
        assert assert_every_cell_whole(app, screen_text(app), f"health resized to {other}")
        header = [str(c.label) for c in app.query_one("#health-table", DataTable).columns.values()]
        assert (header[-1] == "Alive") == (other[0] >= WIDE)


@pytest.mark.parametrize("size", [NARROW, ROOMY], ids=["100x30", "200x50"])
async def test_tenants_tab_shows_each_tenant_or_says_there_is_no_data(
    size: tuple[int, int],
) -> None:
    data = troubled()
    app = TopApp(lambda: data, interval=3600.0)
    app.animation_level = "none"
    async with app.run_test(size=size) as pilot:
        await app.refresh_data()
        await pilot.press("7")
        assert app.active_tab == "tenants"
        screen = screen_text(app)
        assert assert_every_cell_whole(app, screen, f"tenants at {size}") == 3
        rows = {r[0]: r for r in cells(app, "tenants-table")}
        assert set(rows) == {"acme-corp", "globex", "default"}
        acme, globex = rows["acme-corp"], rows["globex"]
        assert acme[1:8] == ["2", "12 / 16", "3", "18234", "18190", "32", "4718352"]
        assert globex[2] == "0 / —"  # no concurrency cap
        if size == NARROW:
            assert acme[8:] == ["41 / 7 / 0"] and globex[8:] == ["0 / 0 / 12"]
            assert "Rejected by limit: concurrency / requests per s / tokens per s" in " ".join(
                screen.split()
            )
        else:
            assert acme[8:] == ["41", "7", "0"] and globex[8:] == ["0", "0", "12"]
            assert "Rejected: concurrency  requests  tokens" in screen
        assert "No tenant data" not in screen

        del data["tenants"]  # an older gateway
        await app.refresh_data()
        await pilot.pause()
        screen = screen_text(app)
        assert "No tenant data" in screen and "acme-corp" not in screen
        assert not app.query_one("#tenants-table").display

        data["tenants"] = []  # tenants are counted from their first request
        await app.refresh_data()
        await pilot.pause()
        screen = screen_text(app)
        assert "No tenant has sent a request since the gateway started." in screen
        assert "No tenant data" not in screen and not app.query_one("#tenants-table").display

        data["tenants"] = TENANT_ROWS[1:]  # and back: the table returns
        await app.refresh_data()
        await pilot.pause()
        assert assert_every_cell_whole(app, screen_text(app), "tenants again") == 2


# ---------------------------------------------------------------- recording the fixture


def _normalise(snap: dict[str, Any]) -> dict[str, Any]:
    """Fixed ids, ports and clock readings; everything measured is kept (rounded)."""

    def tidy(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, dict):
            return {k: tidy(v) for k, v in value.items()}
        if isinstance(value, list):
            return [tidy(v) for v in value]
        return value

    snap = tidy(snap)
    snap["time"] = 1_750_000_000.0
    snap["gateway"].update(
        id="gw-demo", endpoints=["tcp://127.0.0.1:5555"], telemetry="tcp://127.0.0.1:5556",
        metrics="http://127.0.0.1:9464/metrics", uptime=754.2,
    )  # fmt: skip
    for i, worker in enumerate(snap["workers"]):
        worker.update(worker_id=f"{0xA1B2C3D4E5F60000 + i:016x}", pid=4242 + i)
    return snap


async def record_fixture() -> None:
    """Run the seed federation with traffic and a tripped breaker; store its snapshot."""
    from fedgate.telemetry import Telemetry

    breaker = CircuitBreaker(BreakerConfig(failure_threshold=5, open_timeout=30.0))
    async with federation(*SEED_NODES, regions=SEED_REGIONS, breaker=breaker,
                          origin="us-west-2") as gw:  # fmt: skip
        telemetry: Telemetry = telemetry_for(gw)
        for burst in range(16):
            await traffic(gw, 3 + (burst * 7) % 6, prefix=f"b{burst:02d}", concurrent=True)
            if burst == 8:
                for _ in range(5):
                    gw.breaker.record_failure("ap-south-cpu-01")
            await asyncio.sleep(0.26)
            telemetry.sample()
        data = _normalise(snapshot(gw))
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(data, indent=1, sort_keys=False, allow_nan=False) + "\n")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        raise SystemExit("usage: PYTHONPATH=. python tests/test_top.py --record")
    asyncio.run(record_fixture())
