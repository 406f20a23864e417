"""``fedgate top``: the terminal dashboard of a running gateway (Textual).

The app knows nothing of ZeroMQ: it polls a *source* — any callable that
returns a telemetry snapshot (:mod:`fedgate.telemetry`), directly or as an
awaitable — every ``interval`` seconds. ``fedgate top`` passes
``TelemetryClient(endpoint).fetch_page`` with ``paged=True`` (the source is
then called with ``offset=`` and ``limit=``: the gateway sends one page of
each per-node table, whatever the federation's size, so a table shows at
most ``page_size`` rows; the header says which of how many, and n/p turn the
page); tests and the demo pass a gateway's ``snapshot`` or a recorded one,
shown whole. A source that raises marks the connection "disconnected —
retrying" and the last data stays on screen.

Tabs (the case study's): Catalog, Health, Routing, Circuits, Stats, Policies,
Tenants, Help. Keys: :data:`KEYS` (the Help tab is rendered from it).

Every value is shown whole from 100 columns up: below :data:`WIDE` columns the
tables that would not fit take a narrower shape (fewer, merged or moved
columns, never cut cells); from :data:`WIDE` up they spread out. Latencies
carry their unit, chosen per value (µs, ms or s).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import textwrap
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.widget import Widget
from textual.widgets import DataTable, Sparkline, Static, TabbedContent, TabPane

__all__ = ["KEYS", "TABS", "WIDE", "PagedSource", "Snapshot", "Source", "TopApp", "latency"]

Snapshot = dict[str, Any]
Source = Callable[[], "Snapshot | Awaitable[Snapshot]"]
PagedSource = Callable[..., "Snapshot | Awaitable[Snapshot]"]

TABS: tuple[tuple[str, str, str], ...] = (
    # (pane id, title, key)
    ("catalog", "Catalog", "1"),
    ("health", "Health", "2"),
    ("routing", "Routing", "3"),
    ("circuits", "Circuits", "4"),
    ("stats", "Stats", "5"),
    ("policies", "Policies", "6"),
    ("tenants", "Tenants", "7"),
    ("help", "Help", "?"),
)
"""The dashboard's tabs, in order."""

_TAB_IDS = tuple(t[0] for t in TABS)

KEYS: tuple[tuple[str, str, str], ...] = (
    # (key as pressed, as shown, what it does) — the Help tab and the bindings both read this.
    ("1", "1", "Catalog tab: which models run on which nodes"),
    ("2", "2", "Health tab: node states and latency percentiles"),
    ("3", "3", "Routing tab: recent decisions and each node's score breakdown"),
    ("4", "4", "Circuits tab: breaker states, failures, time to reset, transitions"),
    ("5", "5", "Stats tab: request rates, latency percentiles, per node and tenant"),
    ("6", "6", "Policies tab: the live policy, its weights, strategy, region clearances"),
    ("7", "7", "Tenants tab: each tenant's share, queue, admissions and quota rejections"),
    ("question_mark", "?", "Help tab (this one)"),
    ("tab", "Tab", "next tab"),
    ("shift+tab", "Shift+Tab", "previous tab"),
    ("j", "j", "move the cursor down in the table"),
    ("k", "k", "move the cursor up in the table"),
    ("n", "n", "next page of nodes (large federations: the header says which)"),
    ("p", "p", "previous page of nodes"),
    ("r", "r", "refresh now"),
    ("q", "q", "quit"),
)
"""Every key of the dashboard: (key name, label, what it does)."""

_ACTIONS = {
    "1": "show_tab('catalog')",
    "2": "show_tab('health')",
    "3": "show_tab('routing')",
    "4": "show_tab('circuits')",
    "5": "show_tab('stats')",
    "6": "show_tab('policies')",
    "7": "show_tab('tenants')",
    "question_mark": "show_tab('help')",
    "tab": "next_tab",
    "shift+tab": "previous_tab",
    "j": "cursor_down",
    "k": "cursor_up",
    "n": "next_page",
    "p": "previous_page",
    "r": "refresh_now",
    "q": "quit",
}
_FOOTER = {"1", "2", "3", "4", "5", "6", "7", "question_mark", "r", "q"}
_SHORT = {
    "1": "Catalog", "2": "Health", "3": "Routing", "4": "Circuits", "5": "Stats",
    "6": "Policies", "7": "Tenants", "question_mark": "Help", "r": "Refresh", "q": "Quit",
}  # fmt: skip

_STATE_STYLE = {
    "HEALTHY": "bold green",
    "DEGRADED": "bold yellow",
    "UNHEALTHY": "bold red",
    "UNKNOWN": "dim",
    "CLOSED": "bold green",
    "HALF_OPEN": "bold yellow",
    "OPEN": "bold red",
}

WIDE = 132
"""From this many columns up the tables spread out (Region, In flight and Reason
columns in Routing, Alive beside Heartbeat in Health, one column per rejection
kind in Tenants, charts beside the Stats table); below it they take a shape that
fits 100 columns whole."""

_CATALOG_WIDE = ("Model", "Node", "Region", "Capabilities", "Worker", "GPU", "Cost",
                 "In flight")  # fmt: skip
_CATALOG_NARROW = (*_CATALOG_WIDE[:-1], "Active")
_HEALTH_WIDE = ("Node", "State", "p50", "p95", "p99", "Samples", "Fails", "Last report",
                "Heartbeat", "Alive")  # fmt: skip
# Alive folds into Heartbeat (a lost worker's age is marked ✖): ten columns need ~105.
_HEALTH_NARROW = _HEALTH_WIDE[:-1]
_ROUTES_WIDE = ("When", "Request", "Tenant", "Capability", "Node", "Region", "Score", "Attempt")
# The node names its region (Catalog, Policies); request ids may be 33 characters.
_ROUTES_NARROW = ("Age", "Request", "Tenant", "Capability", "Node", "Score", "Try")
_TENANTS_WIDE = ("Tenant", "Weight", "In flight / max", "Waiting", "Admitted", "Completed",
                 "Failed", "Tokens", "Rejected: concurrency", "requests", "tokens")  # fmt: skip
_TENANTS_NARROW = ("Tenant", "Weight", "In flight", "Waiting", "Admitted", "Completed",
                   "Failed", "Tokens", "Rejected")  # fmt: skip
_NO_TENANTS = ("No tenant data: this gateway's telemetry has no \"tenants\" rows "
               "(a gateway older than tenant quotas).")  # fmt: skip

_NO_TENANT_YET = "No tenant has sent a request since the gateway started."

_EMPTY = "No workers registered yet — start one with `fedgate worker --gateway {endpoint} …`"


# ---------------------------------------------------------------- formatting


def latency(seconds: float | None) -> str:
    """A latency with its unit chosen for the value: ``850 µs``, ``19.2 ms``, ``1.25 s``.

    Three significant digits at most, so a cell needs no more than 7 columns
    below 1000 s; ``—`` for no measurement.
    """
    if seconds is None:
        return "—"
    s = max(0.0, float(seconds))
    # Thresholds on the rounded value, so 999.96 µs reads "1.0 ms", never "1000 µs".
    if s < 999.5e-6:
        value, unit = s * 1e6, "µs"
    elif s < 0.9995:
        value, unit = s * 1e3, "ms"
    else:
        value, unit = s, "s"
    digits = 0 if value >= 99.95 else 1 if value >= 9.995 or unit != "s" else 2
    return f"{value:.{digits}f} {unit}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f}s"
    minutes, secs = divmod(int(s), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _ago(seconds: float | None, never: str = "never") -> str:
    return never if seconds is None else f"{_duration(seconds)} ago"


def _state(name: str) -> Text:
    return Text(name, style=_STATE_STYLE.get(name, ""))


def _score(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _rate(x: float) -> str:
    return f"{x:.1f}/s"


def _bar(share: float, width: int = 12) -> Text:
    filled = round(max(0.0, min(1.0, share)) * width)
    return Text.assemble(("█" * filled, "green"), ("░" * (width - filled), "dim"), f" {share:4.0%}")


def _nodes(region: dict[str, Any], room: int) -> str:
    """A region's nodes: as many names as ``room`` columns hold, then how many
    there are (a region may hold thousands)."""
    nodes = region["nodes"]
    count = region.get("node_count", len(nodes))
    more = f" … ({count} nodes)"
    shown: list[str] = []
    for name in nodes:
        rest = count - len(shown) - 1
        if shown and len(", ".join([*shown, name])) + (len(more) if rest else 0) > room:
            break
        shown.append(name)
    text = ", ".join(shown) or "—"
    return text if len(shown) >= count else f"{text}{more}"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if v is not None) or "—"


# ---------------------------------------------------------------- tables


def _ensure_columns(table: DataTable[Any], columns: Sequence[str]) -> None:
    if [str(c.label) for c in table.columns.values()] != list(columns):
        table.clear(columns=True)
        for name in columns:
            table.add_column(name, key=name)


def _fill(table: DataTable[Any], rows: Iterable[tuple[str, Sequence[Any]]]) -> None:
    """Show ``rows`` (key, cells) in ``table``, keeping the cursor on the same row.

    Rows whose keys did not change are updated cell by cell (no flicker, the
    cursor stays put); otherwise the table is rebuilt and the cursor follows
    its row's key, or stays at its index.
    """
    rows = list(rows)
    keys = [key for key, _ in rows]
    current = [rk.value for rk in table.rows]
    columns = list(table.columns)
    if keys == current:
        for key, cells in rows:
            for column, value in zip(columns, cells, strict=False):
                if table.get_cell(key, column) != value:
                    # update_width: without it the column keeps the width of the old
                    # value and cuts the new one (HEALTHY -> "UNHEALT").
                    table.update_cell(key, column, value, update_width=True)
        return
    old_row = table.cursor_row
    old_key = current[old_row] if 0 <= old_row < len(current) else None
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if rows:
        row = keys.index(old_key) if old_key in keys else min(old_row, len(rows) - 1)
        table.move_cursor(row=max(0, row), animate=False)


def _table(id_: str, columns: Sequence[str]) -> DataTable[Any]:
    table: DataTable[Any] = DataTable(id=id_, cursor_type="row", zebra_stripes=True)
    for name in columns:
        table.add_column(name, key=name)
    return table


def _key_line() -> Text:
    text = Text()
    # The tab bar already pairs each tab with its digit: one "1-7" entry keeps the
    # line inside 100 columns.
    digits = [label for key, label, _what in KEYS if key.isdigit()]
    shown = [(label, _SHORT[key]) for key, label, _what in KEYS
             if key in _FOOTER and not key.isdigit()]  # fmt: skip
    tabs = (f"{digits[0]}-{digits[-1]}", "Tabs")
    for label, what in [tabs, *shown, ("Tab", "Next tab"), ("j/k", "Move"), ("n/p", "Page")]:
        text.append(f" {label} ", style="bold reverse")
        text.append(f" {what} ")
    return text


def _help_text(width: int = 200) -> Text:
    text = Text()
    text.append("fedgate top", style="bold")
    text.append(" — the live dashboard of a running gateway\n\n")
    text.append("Keys\n", style="bold underline")
    for _key, label, what in KEYS:
        text.append(f"  {label:<10}", style="bold cyan")
        text.append(f" {what}\n")
    text.append("\nTabs\n", style="bold underline")
    notes = {
        "catalog": "every model deployment (node, region, capabilities) and its worker",
        "health": "state, p50/p95/p99 latency over the sliding window, consecutive "
        "failures, last report and heartbeat",
        "routing": "the last routing decisions; then, per capability, how the router "
        "scores each node now (default QoS), policy by policy",
        "circuits": "breaker state, counted failures, last failure, time until it may "
        "half-open; recent transitions",
        "stats": "requests/s and latency sparklines (last ~30 s), counters, per node "
        "and per tenant",
        "policies": "the composite policy in force: weights, shares, parameters; "
        "load-balancing strategy; region clearances",
        "tenants": "per tenant: weight, in flight / max concurrent, waiting, admitted, "
        "completed, failed, tokens, requests rejected by each quota limit",
    }
    # Wrapped under its own column, not under the tab names, at any terminal width.
    indent = " " * 14
    for pane, title, key in TABS[:-1]:
        text.append(f"  {key} {title:<9}", style="bold")
        lines = textwrap.wrap(notes[pane], max(30, width - 4 - len(indent)))
        text.append(" " + f"\n{indent}".join(lines) + "\n")
    text.append(
        "\nData refreshes several times a second from the gateway's telemetry endpoint;\n"
        "when the gateway stops answering the header says so and the last data stays.\n"
    )
    return text


# ---------------------------------------------------------------- the app


class TopApp(App[None]):
    """The dashboard.

    Parameters
    ----------
    source : callable
        Returns a snapshot dict, or an awaitable of one (e.g.
        ``TelemetryClient(endpoint).fetch``). Exceptions mean "disconnected".
    interval : float
        Seconds between refreshes.
    endpoint : str, optional
        Shown when the source fails (where the dashboard is looking).
    paged : bool
        Call the source with ``offset=`` and ``limit=`` (rows of each
        per-node table), as ``TelemetryClient.fetch_page`` takes them; else
        call it with no arguments and show what it returns whole.
    page_size : int
        Rows of each per-node table asked for at once (paged sources).
    """

    TITLE = "fedgate top"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { layout: vertical; }
    #header { height: 1; padding: 0 1; background: $primary; color: $text; text-style: bold; }
    #banner { height: auto; padding: 0 1; background: $warning-darken-3; color: $text;
              display: none; }
    #banner.shown { display: block; }
    #banner.error { background: $error-darken-2; }
    TabbedContent { height: 1fr; }
    TabPane { padding: 0 1; }
    DataTable { height: auto; max-height: 16; scrollbar-size-vertical: 1; }
    VerticalScroll { scrollbar-size-vertical: 1; }
    .section { margin-top: 1; text-style: bold; color: $accent; }
    .note { color: $text-muted; }
    #stats-top { height: auto; }
    #stats-table { width: auto; max-height: 24; }
    #charts { width: 1fr; height: auto; padding-left: 2; }
    #charts Static { height: auto; }
    Screen.-narrow #stats-top { layout: vertical; }
    Screen.-narrow #charts { width: 100%; padding-left: 0; margin-top: 1; }
    #tenants-empty { display: none; }
    #tenants-empty.shown { display: block; }
    #charts Sparkline { height: 3; margin-bottom: 1; }
    #keys { dock: bottom; height: 1; background: $panel; color: $text; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            key,
            _ACTIONS[key],
            _SHORT.get(key, what),
            show=key in _FOOTER,
            key_display=label,
            # Textual binds Tab to "focus next widget"; here it cycles tabs, so ours goes first.
            priority=key in ("tab", "shift+tab"),
        )
        for key, label, what in KEYS
    ]

    def __init__(
        self,
        source: Source | PagedSource,
        *,
        interval: float = 0.25,
        endpoint: str | None = None,
        paged: bool = False,
        page_size: int = 200,
    ) -> None:
        super().__init__()
        if not callable(source):
            raise TypeError(f"source: expected a callable returning a snapshot, got {source!r}")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not (
            0 < interval < float("inf")
        ):
            raise ValueError(f"interval: expected finite seconds > 0, got {interval!r}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size: expected an int >= 1, got {page_size!r}")
        self.source: PagedSource = source
        self.paged = bool(paged)
        self.page_size = page_size
        self.offset = 0
        self.interval = float(interval)
        self.endpoint = endpoint
        self.data: Snapshot | None = None
        self.connected: bool | None = None  # None: not yet asked
        self.last_error: str | None = None
        self.fetches = 0
        self.failures = 0
        self._lock = asyncio.Lock()
        self._width: int | None = None

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Static("fedgate top │ connecting…", id="header")
        yield Static("", id="banner")
        with TabbedContent(initial="catalog", id="tabs"):
            with TabPane("1 Catalog", id="catalog"):
                yield _table("catalog-table", _CATALOG_NARROW)
            with TabPane("2 Health", id="health"):
                yield _table("health-table", _HEALTH_NARROW)
                yield Static("", id="health-note", classes="note")
            with TabPane("3 Routing", id="routing"), VerticalScroll():
                yield Static("Recent routing decisions (newest first)", classes="section")
                yield _table("routes-table", _ROUTES_NARROW)
                yield Static("Score breakdown per capability", classes="section")
                yield Static("", id="breakdown-note", classes="note")
                yield _table("breakdown-table",
                             ("Capability", "Node", "Region", "Eligible", "Total"))  # fmt: skip
                yield Static("", id="breakdown-reasons", classes="note")
            with TabPane("4 Circuits", id="circuits"), VerticalScroll():
                yield _table("circuits-table",
                             ("Node", "State", "Failures", "Probes", "Trips", "Last failure",
                              "Open timeout", "Reset in"))  # fmt: skip
                yield Static("Recent transitions (newest first)", classes="section")
                yield _table("transitions-table", ("When", "Node", "From", "To"))
            with TabPane("5 Stats", id="stats"), VerticalScroll():
                with Horizontal(id="stats-top"):
                    yield _table("stats-table", ("Metric", "Value"))
                    with Vertical(id="charts"):
                        yield Static("Requests/s", id="rps-label")
                        yield Sparkline([], id="rps-spark")
                        yield Static("Latency p50", id="p50-label")
                        yield Sparkline([], id="p50-spark")
                        yield Static("Latency p99", id="p99-label")
                        yield Sparkline([], id="p99-spark")
                yield Static("Per node and per tenant", classes="section")
                yield _table("split-table",
                             ("Kind", "Name", "Requests", "OK", "Failed", "Tokens"))  # fmt: skip
            with TabPane("6 Policies", id="policies"), VerticalScroll():
                yield Static("", id="strategy")
                yield _table("policies-table", ("Policy", "Weight", "Share", "Parameters"))
                yield Static("Region clearances (from the gateway's configuration; "
                             "unconfigured regions are INTERNAL)", classes="section")  # fmt: skip
                yield _table("regions-table", ("Region", "Clearance", "Nodes"))
            with TabPane("7 Tenants", id="tenants"), VerticalScroll():
                yield Static(_NO_TENANTS, id="tenants-empty", classes="note")
                yield _table("tenants-table", _TENANTS_NARROW)
                yield Static("", id="tenants-note", classes="note")
            with TabPane("? Help", id="help"), VerticalScroll():
                yield Static(_help_text(self.term_width), id="help-text")
        # A fixed key line rather than Textual's Footer: the Footer recomposes on
        # every focus change, which is most of the cost of switching tabs.
        yield Static(_key_line(), id="keys")

    async def on_mount(self) -> None:
        self.screen.set_class(not self.wide, "-narrow")
        self._focus_table()
        self.set_interval(self.interval, self._tick)
        self.run_worker(self.refresh_data(), group="refresh")

    # ------------------------------------------------------------ data

    def _tick(self) -> None:
        if not self._lock.locked():
            self.run_worker(self.refresh_data(), group="refresh")

    async def refresh_data(self) -> bool:
        """Fetch one snapshot from the source and show it.

        Returns True on success; a failure marks the dashboard disconnected
        (the last data stays on screen) and never raises.
        """
        async with self._lock:
            try:
                if self.paged:
                    result = self.source(offset=self.offset, limit=self.page_size)
                else:
                    result = self.source()
                if inspect.isawaitable(result):
                    result = await result
                if not isinstance(result, dict):
                    raise TypeError(f"expected a snapshot dict, got {type(result).__name__}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self.connected = False
                self.last_error = str(exc) or type(exc).__name__
                with contextlib.suppress(NoMatches):  # NoMatches: the app is closing
                    self._show_header()
                return False
            self.fetches += 1
            self.connected = True
            self.last_error = None
            previous, self.data = self.data, result
            try:
                self._render_all(result)
            except NoMatches:
                return False  # the app closed while the source answered
            except (KeyError, TypeError, ValueError) as exc:
                # A snapshot of another schema: say so instead of crashing.
                self.data = previous
                self.connected = False
                self.last_error = f"unreadable snapshot: {type(exc).__name__}: {exc}"
                with contextlib.suppress(NoMatches):
                    self._show_header()
                return False
            nodes = (result.get("page") or {}).get("nodes", 0)
            if self.paged and self.offset and self.offset >= nodes:
                # The nodes this page showed are gone: back to the last page there is.
                self.offset = max(0, (nodes - 1) // self.page_size * self.page_size)
                self.call_later(self.action_refresh_now)
            return True

    # ------------------------------------------------------------ rendering

    def _show_header(self) -> None:
        data = self.data or {}
        gw = data.get("gateway") or {}
        cut = data.get("page") or {}
        live = cut.get("live_workers")
        if live is None:
            live = sum(1 for w in data.get("workers", []) if w.get("alive"))
        parts = ["fedgate top"]
        if gw:
            parts.append(f"gateway {gw.get('id', '?')}")
            parts.append(f"up {_duration(gw.get('uptime'))}")
            parts.append(f"{live} live worker{'s' if live != 1 else ''}")
        nodes, offset = cut.get("nodes", 0), cut.get("offset", 0)
        if offset or nodes > cut.get("limit", nodes):
            last = min(nodes, offset + cut["limit"])
            parts.append(f"nodes {offset + 1}–{last} of {nodes} (n/p: page)")
        if self.connected is None:
            status = "connecting…"
        elif self.connected:
            status = "● live"
        else:
            status = "✖ disconnected — retrying"
        parts.append(status)
        self.query_one("#header", Static).update(" │ ".join(parts))
        banner = self.query_one("#banner", Static)
        if self.connected is False:
            where = f" at {self.endpoint}" if self.endpoint else ""
            banner.update(
                f"Gateway{where} is not answering ({self.last_error}); "
                f"retrying every {self.interval:g}s — showing the last data received."
            )
            banner.set_classes("shown error")
        elif data and not data.get("workers") and not data.get("catalog", {}).get("models"):
            endpoints = gw.get("endpoints") or []
            banner.update(_EMPTY.format(endpoint=endpoints[0] if endpoints else "tcp://HOST:PORT"))
            banner.set_classes("shown")
        else:
            banner.set_classes("")

    def _render_all(self, data: Snapshot) -> None:
        self._show_header()
        self._render_catalog(data)
        self._render_health(data)
        self._render_routing(data)
        self._render_circuits(data)
        self._render_stats(data)
        self._render_policies(data)
        self._render_tenants(data)

    def _render_catalog(self, data: Snapshot) -> None:
        workers = {w["node"]: w for w in data["workers"]}
        rows: list[tuple[str, Sequence[Any]]] = []
        for model, deployments in sorted(data["catalog"]["models"].items()):
            for dep in deployments:
                w = workers.get(dep["node"])
                worker: str | Text
                if w is None:
                    worker, gpu, cost, inflight = "—", "—", "—", "—"
                else:
                    worker = Text("alive", "green") if w["alive"] else Text("lost", "red")
                    gpu = "GPU" if w["gpu"] else "CPU"
                    cost = f"{w['cost']:g}" if w["cost"] is not None else "—"
                    inflight = str(w["inflight"])
                rows.append(
                    (f"{model}@{dep['node']}",
                     (model, dep["node"], dep["region"], ", ".join(dep["capabilities"]), worker,
                      gpu, cost, inflight))
                )  # fmt: skip
        table = self.query_one("#catalog-table", DataTable)
        _ensure_columns(table, _CATALOG_WIDE if self.wide else _CATALOG_NARROW)
        _fill(table, rows)

    def _render_health(self, data: Snapshot) -> None:
        table = self.query_one("#health-table", DataTable)
        wide = self.wide
        _ensure_columns(table, _HEALTH_WIDE if wide else _HEALTH_NARROW)
        rows: list[tuple[str, Sequence[Any]]] = []
        lost = False
        for h in data["health"]:
            cells: list[Any] = [
                h["node"], _state(h["state"]), latency(h["p50"]), latency(h["p95"]),
                latency(h["p99"]), str(h["samples"]), str(h["consecutive_failures"]),
                _ago(h["last_check_age"]),
            ]  # fmt: skip
            beat = _ago(h["heartbeat_age"], "—")
            if wide:
                alive = Text("yes", "green") if h["alive"] else Text("no", "bold red")
                cells += [beat, alive]
            else:
                cells.append(beat if h["alive"] else Text(f"✖ {beat}", "bold red"))
                lost = lost or not h["alive"]
            rows.append((h["node"], cells))
        _fill(table, rows)
        note = "✖ lost: no heartbeat in time, the worker is not alive" if lost else ""
        self.query_one("#health-note", Static).update(note)

    def _render_routing(self, data: Snapshot) -> None:
        wide = self.wide
        routing = data.get("routing") or {"recent": [], "breakdown": {}, "note": ""}
        routes = self.query_one("#routes-table", DataTable)
        _ensure_columns(routes, _ROUTES_WIDE if wide else _ROUTES_NARROW)
        recent: list[tuple[str, Sequence[Any]]] = []
        for i, r in enumerate(routing["recent"]):
            when = _ago(r["age"], "—") if wide else _duration(r["age"])
            cells = [when, r["request_id"], r["tenant"] or "—", r["capability"], r["node"],
                     r["region"], _score(r["score"]), str(r["attempt"])]  # fmt: skip
            if not wide:
                del cells[5]  # region
            recent.append((f"{i}:{r['request_id']}:{r['attempt']}", cells))
        _fill(routes, recent)
        names = [p["name"] for p in data["policy"]["policies"]]
        table = self.query_one("#breakdown-table", DataTable)
        if wide:
            columns = ["Capability", "Node", "Region", "Eligible", "Total", *names, "In flight",
                       "Reason"]  # fmt: skip
        else:
            # Reasons go below the table, where a long one wraps instead of widening it.
            columns = ["Capability", "Node", "Eligible", "Total", *names]
        _ensure_columns(table, columns)
        rows = []
        reasons = []
        for cap, candidates in sorted(routing["breakdown"].items()):
            for c in candidates:
                eligible = Text("yes", "green") if c["eligible"] else Text("no", "bold red")
                scores = [_score(c["scores"].get(name)) for name in names]
                if wide:
                    cells = [cap, c["node"], c["region"], eligible, _score(c["total"]),
                             *scores, str(c["inflight"]), c["reason"] or ""]  # fmt: skip
                else:
                    cells = [cap, c["node"], eligible, _score(c["total"]), *scores]
                    if c["reason"]:
                        reasons.append(f"  {c['node']} ({cap}): {c['reason']}")
                rows.append((f"{cap}@{c['node']}", cells))
        _fill(table, rows)
        self.query_one("#breakdown-note", Static).update(routing.get("note") or "")
        self.query_one("#breakdown-reasons", Static).update(
            "\n".join(["Not eligible:", *reasons]) if reasons else ""
        )

    def _render_circuits(self, data: Snapshot) -> None:
        rows: list[tuple[str, Sequence[Any]]] = [
            (b["node"],
             (b["node"], _state(b["state"]), str(b["failures"]), str(b["probes"]),
              str(b["trips"]), _ago(b["last_failure_age"]), _duration(b["open_timeout"]),
              _duration(b["time_to_reset"]) if b["time_to_reset"] is not None else "—"))
            for b in data["breakers"]
        ]  # fmt: skip
        _fill(self.query_one("#circuits-table", DataTable), rows)
        transitions = data["transitions"]
        n = len(transitions)
        events: list[tuple[str, Sequence[Any]]] = [
            # Keyed by position from the oldest, so a new transition does not rename the rest.
            (str(n - i),
             (_ago(t["age"], "—"), t["node"], _state(t["old"]), _state(t["new"])))
            for i, t in enumerate(transitions)
        ]  # fmt: skip
        _fill(self.query_one("#transitions-table", DataTable), events)

    def _render_stats(self, data: Snapshot) -> None:
        s = data["stats"]
        rates = data["rates"]
        total = s["total_requests"]
        success = f"{s['successful_requests'] / total:.1%}" if total else "—"
        metrics = (
            ("Requests/s", _rate(rates["requests_per_s"])),
            ("Tokens/s", _rate(rates["tokens_per_s"])),
            ("Failures/s", _rate(rates["failed_per_s"])),
            ("Total requests", str(total)),
            ("Successful", str(s["successful_requests"])),
            ("Failed", str(s["failed_requests"])),
            ("Cancelled", str(s["cancelled_requests"])),
            ("Success rate", success),
            ("Total tokens", str(s["total_tokens"])),
            ("Avg latency", latency(s["avg_latency"] if s["successful_requests"] else None)),
            ("Latency p50 / p95 / p99",
             " / ".join(latency(s[f"latency_{q}"]) for q in ("p50", "p95", "p99"))),
            ("TTFT p50 / p99", f"{latency(s['ttft_p50'])} / {latency(s['ttft_p99'])}"),
            ("Active requests / streams", f"{s['active_requests']} / {s['active_streams']}"),
            ("Retries / failovers", f"{s['retries']} / {s['failovers']}"),
            ("Stream resumes", str(s["resumes"])),
            ("Breaker trips", str(s["breaker_trips"])),
            ("Local rejections", str(s["local_rejections"])),
            ("Stale / malformed frames", f"{s['stale_frames']} / {s['malformed_frames']}"),
            ("Live workers", str(s["workers"])),
        )  # fmt: skip
        _fill(self.query_one("#stats-table", DataTable), [(k, (k, v)) for k, v in metrics])
        history = data["history"]
        span = -history[0]["t"] if history else 0.0
        rps = [h["rps"] for h in history]
        p50 = [(h["p50"] or 0.0) * 1000 for h in history]
        p99 = [(h["p99"] or 0.0) * 1000 for h in history]
        self.query_one("#rps-spark", Sparkline).data = rps
        self.query_one("#p50-spark", Sparkline).data = p50
        self.query_one("#p99-spark", Sparkline).data = p99
        window = f"last {_duration(span)}"
        self.query_one("#rps-label", Static).update(
            f"Requests/s — now {_rate(rates['requests_per_s'])}, "
            f"peak {max(rps, default=0.0):.1f}/s ({window})"
        )
        self.query_one("#p50-label", Static).update(
            f"Latency p50 — now {latency(s['latency_p50'])}, "
            f"peak {latency(max(p50, default=0.0) / 1000)} ({window})"
        )
        self.query_one("#p99-label", Static).update(
            f"Latency p99 — now {latency(s['latency_p99'])}, "
            f"peak {latency(max(p99, default=0.0) / 1000)} ({window})"
        )
        rows = []
        for kind, table in (("node", s["per_node"]), ("tenant", s["per_tenant"])):
            for name, c in table.items():
                rows.append(
                    (f"{kind}:{name}",
                     (kind, name, str(c["requests"]), str(c["successes"]), str(c["failures"]),
                      str(c["tokens"])))
                )  # fmt: skip
        _fill(self.query_one("#split-table", DataTable), rows)

    def _render_policies(self, data: Snapshot) -> None:
        policy = data["policy"]
        origin = policy.get("origin") or "—"
        self.query_one("#strategy", Static).update(
            Text.assemble(
                ("Strategy ", "bold"), (policy["strategy"], "cyan"),
                ("   Origin ", "bold"), (origin, "cyan"),
                ("   Total weight ", "bold"), (f"{policy['total_weight']:g}", "cyan"),
            )
        )  # fmt: skip
        rows: list[tuple[str, Sequence[Any]]] = [
            (p["name"],
             (p["name"], f"{p['weight']:g}", _bar(p["share"]), _params(p["params"])))
            for p in policy["policies"]
        ]  # fmt: skip
        _fill(self.query_one("#policies-table", DataTable), rows)
        # The Nodes column takes what the Region and Clearance columns leave.
        room = max(24, self.term_width - 40)
        regions: list[tuple[str, Sequence[Any]]] = [
            (r["region"], (r["region"], r["clearance"], _nodes(r, room)))
            for r in policy["regions"]
        ]
        _fill(self.query_one("#regions-table", DataTable), regions)

    def _render_tenants(self, data: Snapshot) -> None:
        rows = data.get("tenants")
        empty = self.query_one("#tenants-empty", Static)
        table = self.query_one("#tenants-table", DataTable)
        note = self.query_one("#tenants-note", Static)
        if not rows:
            # None: a gateway older than tenant quotas; []: the gateway counts a tenant
            # from its first request, and none has come yet.
            empty.update(_NO_TENANTS if rows is None else _NO_TENANT_YET)
            empty.set_classes("note shown")
            table.display = False
            note.update("")
            return
        empty.set_classes("note")
        table.display = True
        wide = self.wide
        _ensure_columns(table, _TENANTS_WIDE if wide else _TENANTS_NARROW)
        out: list[tuple[str, Sequence[Any]]] = []
        for t in rows:
            cap = t["max_concurrent"]
            rejected = t["rejected"]
            kinds = [str(rejected.get(k, 0)) for k in ("concurrency", "requests", "tokens")]
            cells = [t["tenant"], f"{t['weight']:g}",
                     f"{t['in_flight']} / {'—' if cap is None else cap}", str(t["waiting"]),
                     str(t["admitted"]), str(t["completed"]), str(t["failed"]),
                     str(t["tokens"])]  # fmt: skip
            cells += kinds if wide else [" / ".join(kinds)]
            out.append((t["tenant"], cells))
        _fill(table, out)
        note.update(
            "In flight: running now / the tenant's max_concurrent (— none). "
            + ("Rejected: by which limit." if wide
               else "Rejected by limit: concurrency / requests per s / tokens per s.")
        )  # fmt: skip

    # ------------------------------------------------------------ width

    @property
    def term_width(self) -> int:
        """The terminal's width in columns (as of the latest resize)."""
        return self._width if self._width is not None else self.size.width

    @property
    def wide(self) -> bool:
        """Whether the tables take their wide shape (:data:`WIDE` columns or more)."""
        return self.term_width >= WIDE

    def on_resize(self, event: events.Resize) -> None:
        # Runs before App._on_resize records the new size: keep it here.
        self._width = event.size.width
        self.screen.set_class(not self.wide, "-narrow")
        with contextlib.suppress(NoMatches):
            self.query_one("#help-text", Static).update(_help_text(self._width))
        if self.data is not None:
            with contextlib.suppress(NoMatches, KeyError, TypeError, ValueError):
                self._render_all(self.data)

    # ------------------------------------------------------------ actions

    @property
    def active_tab(self) -> str:
        """The id of the tab on screen."""
        return self.query_one("#tabs", TabbedContent).active

    def action_show_tab(self, tab: str) -> None:
        """Switch to ``tab`` (a pane id of :data:`TABS`)."""
        self.query_one("#tabs", TabbedContent).active = tab
        self._focus_table()

    def action_next_tab(self) -> None:
        i = _TAB_IDS.index(self.active_tab)
        self.action_show_tab(_TAB_IDS[(i + 1) % len(_TAB_IDS)])

    def action_previous_tab(self) -> None:
        i = _TAB_IDS.index(self.active_tab)
        self.action_show_tab(_TAB_IDS[(i - 1) % len(_TAB_IDS)])

    def active_table(self) -> DataTable[Any] | None:
        """The table j/k move in: the focused one on the active tab, else its first."""
        pane = self.query_one("#tabs", TabbedContent).active_pane
        if pane is None:
            return None
        focused = self.focused
        if isinstance(focused, DataTable) and pane in focused.ancestors:
            return focused
        tables = list(pane.query(DataTable))
        return tables[0] if tables else None

    def _focus_table(self) -> None:
        # Focus must leave the hidden pane: TabbedContent follows the focus, and
        # a table left focused on another tab would pull that tab back.
        target: Widget | None = self.active_table()
        pane = self.query_one("#tabs", TabbedContent).active_pane
        if target is None and pane is not None:
            target = next((w for w in pane.query("*") if w.focusable), None)
        if target is not None:
            target.focus()
        else:
            self.set_focus(None)

    def action_cursor_down(self) -> None:
        table = self.active_table()
        if table is not None:
            table.action_cursor_down()

    def action_cursor_up(self) -> None:
        table = self.active_table()
        if table is not None:
            table.action_cursor_up()

    def action_next_page(self) -> None:
        """Show the next ``page_size`` nodes (no-op on the last page)."""
        cut = (self.data or {}).get("page") or {}
        if self.offset + self.page_size < cut.get("nodes", 0):
            self.offset += self.page_size
            self.action_refresh_now()

    def action_previous_page(self) -> None:
        """Show the previous ``page_size`` nodes (no-op on the first page)."""
        if self.offset > 0:
            self.offset = max(0, self.offset - self.page_size)
            self.action_refresh_now()

    def action_refresh_now(self) -> None:
        self.run_worker(self.refresh_data(), group="refresh")

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # A click on a tab title: focus its table too, so j/k and the arrows work.
        self.call_after_refresh(self._focus_table)
