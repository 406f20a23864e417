"""Which HTTP server for the front door: aiohttp's against uvicorn + httptools, measured.

Each server runs in its own process and answers ``POST /echo`` with a small
JSON body; one load generator (keep-alive HTTP/1.1 over raw asyncio
streams, ``CONNS`` connections, each request waits for its answer) measures
latency percentiles and requests/s. The generator's own ceiling is measured
in the same run against a trivial asyncio protocol that answers every
request with canned bytes (no HTTP parsing): a server close to that ceiling
is limited by the generator, not by itself.

    python benchmarks/http_servers.py [--seconds 3] [--conns 1 64]

uvicorn and httptools are not dependencies: the script skips them, saying
so, when they are absent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
ANSWER = b'{"ok": true}'
PATH = b"/echo"

SERVERS = {
    "raw-asyncio (generator ceiling)": "raw",
    "aiohttp.web": "aiohttp",
    "uvicorn+httptools": "uvicorn",
}


def _serve(kind: str, port: int, body: bytes | None = None) -> None:
    if body is not None:  # the raw server splits requests on the body it expects
        global BODY
        BODY = body
    if kind == "raw":
        reply = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
        )

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport
                self.buf = b""

            def data_received(self, data: bytes) -> None:
                self.buf += data
                # One request per round trip: a complete body ends each.
                while BODY in self.buf:
                    self.buf = self.buf.split(BODY, 1)[1]
                    self.t.write(reply)  # type: ignore[attr-defined]

        async def main() -> None:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(Proto, "127.0.0.1", port)
            await server.serve_forever()

        asyncio.run(main())
    elif kind == "aiohttp":
        from aiohttp import web

        async def echo(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=ANSWER, content_type="application/json")

        app = web.Application()
        app.router.add_post("/echo", echo)
        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
    elif kind == "uvicorn":
        import uvicorn

        async def asgi(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
            if scope["type"] != "http":
                return
            more = True
            while more:
                msg = await receive()  # type: ignore[operator]
                more = msg.get("more_body", False)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(ANSWER)),
            ]
            start = {"type": "http.response.start", "status": 200, "headers": headers}
            await send(start)  # type: ignore[operator]
            await send({"type": "http.response.body", "body": ANSWER})  # type: ignore[operator]

        uvicorn.run(asgi, host="127.0.0.1", port=port, http="httptools", loop="asyncio",
                    log_level="error", access_log=False, lifespan="off")  # fmt: skip


async def _load(
    port: int, conns: int, seconds: float, body: bytes | None = None, path: bytes | None = None
) -> tuple[list[float], float]:
    body = BODY if body is None else body
    request = (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (PATH if path is None else path, len(body), body)
    )
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    # An error answered fast is not a request served: never counted.
                    raise RuntimeError(f"expected HTTP 200, got {head[:300]!r}")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if not length:
                    raise RuntimeError(f"expected a Content-Length answer, got {head!r}")
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(conns)))
    return latencies, time.perf_counter() - t0


_CHILD_LOAD = """
import asyncio, json, sys
sys.path.insert(0, {here!r})
import http_servers as h
lat, took = asyncio.run(h._load({port}, {conns}, {seconds}, {body!r}, {path!r}))
print(json.dumps([lat, took]))
"""


async def load_in_child(
    port: int, conns: int, seconds: float, body: bytes, path: bytes
) -> tuple[list[float], float]:
    """:func:`_load` in a process of its own (the server's loop stays free to serve):
    each request's latency in seconds, and the seconds the run took."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = _CHILD_LOAD.format(
        here=here, port=port, conns=conns, seconds=seconds, body=body, path=path
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator exited {proc.returncode}")
    lat, took = json.loads(out)
    return lat, took


def start_raw_server(body: bytes) -> tuple[subprocess.Popen[bytes], int]:
    """The generator's ceiling: canned answers to ``body``, no HTTP parsing (a process)."""
    port = _free_port()
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import http_servers as h; "
    code += f"h._serve('raw', {port}, {body!r})"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        _wait(port)
    except BaseException:
        proc.kill()
        raise
    return proc, port


def summary(lat: list[float], took: float) -> tuple[float, float, float]:
    """p50 and p99 in ms, and requests/s."""
    lat = sorted(lat)
    if not lat:
        raise RuntimeError("no request completed")
    return statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99)] * 1e3, len(lat) / took


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--conns", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--only", choices=sorted(SERVERS.values()), help="one server only")
    args = parser.parse_args()
    print(f"{'server':34} {'conns':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9}")
    for name, kind in SERVERS.items():
        if args.only is not None and kind != args.only:
            continue
        if kind == "uvicorn":
            try:
                import httptools  # noqa: F401
                import uvicorn  # noqa: F401
            except ImportError:
                print(f"{name:34} skipped: uvicorn or httptools not installed")
                continue
        port = _free_port()
        env = dict(os.environ)
        here = os.path.dirname(os.path.abspath(__file__))
        code = f"import sys; sys.path.insert(0, {here!r}); import http_servers as h; "
        code += f"h._serve({kind!r}, {port})"
        proc = subprocess.Popen([sys.executable, "-c", code], env=env)
        try:
            _wait(port)
            asyncio.run(_load(port, 4, 0.3))  # warm-up
            for conns in args.conns:
                lat, took = asyncio.run(_load(port, conns, args.seconds))
                lat.sort()
                p50 = statistics.median(lat) * 1000
                p99 = lat[int(len(lat) * 0.99)] * 1000
                print(f"{name:34} {conns:>5} {p50:>8.3f} {p99:>8.3f} {len(lat) / took:>9.0f}")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
