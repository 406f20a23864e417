"""The HTTP front door: the OpenAI API served from the gateway's own event loop (SPEC §6).

::

    client ──HTTP──► aiohttp server (same loop: no thread hop) ──► HttpFront handlers
                        │  bounded body (413), keep-alive idle timeout,
                        │  a client that goes away cancels its handler
                        ├─ POST /v1/chat/completions, /v1/completions
                        │     body + x-fedgate-* headers → InferenceRequest
                        │     stream=false: Gateway.infer()        → one JSON answer + usage
                        │     stream=true:  Gateway.stream_call()  → SSE chunks … data: [DONE]
                        ├─ GET /v1/models      the live catalog (regions, capabilities)
                        └─ GET /healthz, /readyz, /metrics

The request's JSON body goes to the worker unchanged as its input, so a
backend sees what the client sent (``messages``, ``max_tokens`` …). The
request id is the answer's ``id``; a synthetic worker's tokens derive from
it (:func:`fedgate.worker.backends.synthetic.synthetic_token`), so a client
can check each one.

Errors are OpenAI's body ``{"error": {"message", "type", "param", "code"}}``
with a status that says what happened (:func:`status_of`). A stream waits for
its first chunk before it answers, so anything that fails before the first
token is still a plain HTTP error; after it an error is an in-band SSE event
(``data: {"error": …}``) and the stream ends without ``[DONE]``, never a
silently shortened stream.

Aiohttp's server runs on the gateway's own loop: a request costs no thread
hop, and the handlers call the gateway directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from fedgate.errors import (
    AllNodesUnhealthyError,
    BackpressureError,
    CircuitOpenError,
    DeadlineExceededError,
    FederationError,
    NoCapacityError,
    NodeUnreachableError,
    PrivacyViolationError,
    QoSViolationError,
    QuotaExceededError,
    StreamInterruptedError,
    WorkerError,
)
from fedgate.gateway.config import HttpConfig, listen_address
from fedgate.transport import protocol as wire
from fedgate.types import Capability, InferenceRequest, ModelId, PrivacyLevel, QoSRequirements

if TYPE_CHECKING:
    from fedgate.gateway.gateway import Gateway

__all__ = ["HttpConfig", "HttpFront", "status_of"]

log = logging.getLogger("fedgate.http")

_JSON = "application/json"


class HttpError(Exception):
    """An answer in OpenAI's error body with ``status``."""

    def __init__(self, status: int, message: str, kind: str, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None
                 ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": str(self),
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def _bad(message: str, param: str | None = None) -> HttpError:
    return HttpError(400, message, "invalid_request_error", "invalid_request", param)


def status_of(exc: BaseException) -> HttpError:
    """The HTTP answer for an error of the federation (or a malformed request)."""
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, (ValueError, TypeError)):
        return _bad(str(exc))
    if isinstance(exc, QuotaExceededError):
        # Whole seconds, rounded up: a client that waits what it is told is admitted.
        wait = str(max(1, math.ceil(exc.retry_after)))
        return HttpError(429, str(exc), "rate_limit_exceeded", f"quota_{exc.limit}",
                         headers={"Retry-After": wait})  # fmt: skip
    if isinstance(exc, PrivacyViolationError):
        return HttpError(403, str(exc), "permission_error", "no_cleared_region")
    if isinstance(exc, DeadlineExceededError):
        return HttpError(504, str(exc), "timeout_error", "deadline_exceeded")
    if isinstance(exc, WorkerError):
        if exc.code in (wire.ERR_BAD_INPUT, wire.ERR_UNSUPPORTED):
            return HttpError(400, str(exc), "invalid_request_error", exc.code)
        return HttpError(502, str(exc), "server_error", exc.code)
    if isinstance(exc, StreamInterruptedError):
        return HttpError(502, str(exc), "server_error", "stream_interrupted")
    if isinstance(
        exc,
        (
            NoCapacityError,
            AllNodesUnhealthyError,
            QoSViolationError,
            CircuitOpenError,
            BackpressureError,
            NodeUnreachableError,
        ),
    ):
        return HttpError(503, str(exc), "service_unavailable", "no_capacity")
    if isinstance(exc, FederationError):
        return HttpError(502, str(exc), "server_error", "federation_error")
    return HttpError(500, f"internal error: {type(exc).__name__}", "server_error", "internal")


def _error_response(err: HttpError) -> web.Response:
    return web.Response(status=err.status, body=json.dumps(err.body()).encode(),
                        content_type=_JSON, headers=err.headers)  # fmt: skip


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _ms(headers: Any, name: str) -> float | None:
    text = headers.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise _bad(f"{name}: expected milliseconds, got {text!r}", name) from None
    if not 0 < value < 1e12:
        raise _bad(f"{name}: expected milliseconds > 0, got {text!r}", name)
    return value / 1000.0


def qos_from_headers(headers: Any) -> tuple[QoSRequirements, str | None, float | None]:
    """The request's QoS, origin region and deadline from its ``x-fedgate-*`` headers."""
    kwargs: dict[str, Any] = {}
    privacy = headers.get("x-fedgate-privacy")
    if privacy is not None:
        try:
            kwargs["privacy"] = PrivacyLevel.parse(privacy)
        except (TypeError, ValueError) as exc:
            raise _bad(f"x-fedgate-privacy: {exc}", "x-fedgate-privacy") from None
    latency = _ms(headers, "x-fedgate-max-latency-ms")
    if latency is not None:
        kwargs["max_latency"] = latency
    gpu = headers.get("x-fedgate-prefer-gpu")
    if gpu is not None:
        word = gpu.strip().lower()
        if word not in _TRUE + _FALSE:
            raise _bad(f"x-fedgate-prefer-gpu: expected true or false, got {gpu!r}")
        kwargs["prefer_gpu"] = word in _TRUE
    try:
        qos = QoSRequirements(**kwargs) if kwargs else QoSRequirements()
    except (TypeError, ValueError) as exc:
        raise _bad(str(exc)) from None
    origin = headers.get("x-fedgate-origin-region") or None
    return qos, origin, _ms(headers, "x-fedgate-deadline-ms")


def tenant_from_headers(headers: Any, keys: Mapping[str, str] | None = None) -> str | None:
    """The tenant of a request, from ``Authorization: Bearer KEY``.

    With ``keys`` (API key → tenant: ``[tenants.NAME] api_keys``), the key
    must be one of them and its tenant is the request's; no key or an unknown
    one is a 401. Without keys (none declared) nothing is authenticated and
    the bearer string names the tenant, as a label.
    """
    auth = headers.get("Authorization")
    if not auth:
        if keys:
            raise HttpError(401, "Authorization: expected 'Bearer KEY' with an API key",
                            "authentication_error", "invalid_api_key")  # fmt: skip
        return None
    scheme, _, key = auth.partition(" ")
    if scheme.lower() != "bearer" or not key.strip() or len(key.strip()) > 256:
        raise HttpError(401, "Authorization: expected 'Bearer KEY' (KEY at most 256 characters)",
                        "authentication_error",
                        "invalid_api_key")  # fmt: skip
    if keys:
        tenant = keys.get(key.strip())
        if tenant is None:  # never echo the key: it may be someone's typo of a real one
            raise HttpError(401, "Incorrect API key provided", "authentication_error",
                            "invalid_api_key")  # fmt: skip
        return tenant
    return key.strip()


def _chat_text(obj: dict[str, Any]) -> int:
    """A rough prompt size in tokens (4 characters each) for ``usage``."""
    messages = obj.get("messages")
    if not isinstance(messages, list):
        return 0
    chars = 0
    for m in messages:
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            chars += len(m["content"])
    return (chars + 3) // 4


class HttpFront:
    """Serve the OpenAI API of ``gateway`` on ``config.listen`` (``async with front:``).

    ``metrics`` renders Prometheus text for ``/metrics`` (the telemetry layer
    passes it in: it sits above the gateway).
    """

    def __init__(
        self,
        gateway: Gateway,
        config: HttpConfig | None = None,
        *,
        metrics: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self.gateway = gateway
        self.config = config or HttpConfig()
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self.requests = 0
        self.disconnects = 0

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` once started (the port resolved)."""
        if self._url is None:
            raise RuntimeError("HTTP front not started")
        return self._url

    async def __aenter__(self) -> HttpFront:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        return app

    async def start(self) -> None:
        """Listen. Raises OSError when the address cannot be bound."""
        runner = web.AppRunner(
            self.app(),
            # A client that goes away cancels its handler: the stream's CANCEL
            # reaches the worker now, not at the next token the server writes.
            handler_cancellation=True,
            keepalive_timeout=self.config.idle_timeout,
            access_log=None,
        )
        await runner.setup()
        host, port = listen_address(self.config.listen)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"cannot serve HTTP on {self.config.listen}: {exc}") from exc
        self._runner = runner
        server = site._server
        assert server is not None
        sockname = server.sockets[0].getsockname()  # type: ignore[attr-defined]
        shown = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
        self._url = f"http://{shown}:{sockname[1]}"
        log.info("HTTP front door on %s", self._url)

    async def stop(self) -> None:
        """Stop listening and close every connection. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ------------------------------------------------------------------ handlers
    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        workers = self.gateway.stats().workers
        if workers < 1:
            return web.json_response({"status": "no live worker", "workers": 0}, status=503)
        return web.json_response({"status": "ready", "workers": workers})

    async def _metrics_page(self, request: web.Request) -> web.Response:
        if self._metrics is None:
            return _error_response(HttpError(404, "metrics are not served", "not_found_error"))
        body = await self._metrics()
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def _models(self, request: web.Request) -> web.Response:
        catalog = self.gateway.catalog
        data = []
        for model in sorted({m for m, _ in catalog.deployments()}):
            try:
                meta = catalog.metadata(model)
            except KeyError:  # deregistered between the two reads
                continue
            data.append(
                {
                    "id": model,
                    "object": "model",
                    "created": 0,
                    "owned_by": "fedgate",
                    "regions": list(meta.regions),
                    "capabilities": sorted(meta.capabilities),
                    "nodes": len(meta.deployments),
                }
            )
        return web.json_response({"object": "list", "data": data})

    async def _embeddings(self, request: web.Request) -> web.Response:
        return _error_response(
            HttpError(
                404,
                "embeddings are not served yet: no backend returns vectors "
                "(the synthetic backend produces tokens only)",
                "not_found_error",
                "not_implemented",
            )
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _body(self, request: web.Request, *, chat: bool) -> tuple[dict[str, Any], bytes]:
        try:
            # A body that trickles in is a slow client holding a connection:
            # it gets the idle timeout, as a request head does.
            if request.content.is_eof():
                # Already whole (a small body comes with its head): no timer, and
                # no task from wait_for, which would cost the loop an iteration.
                raw = await request.read()
            else:
                raw = await asyncio.wait_for(request.read(), self.config.idle_timeout)
        except asyncio.TimeoutError:  # TimeoutError itself only from 3.11
            raise HttpError(
                408,
                f"request body: not received within {self.config.idle_timeout:g}s",
                "invalid_request_error",
                "body_timeout",
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise HttpError(
                413,
                f"request body: expected at most {self.config.max_body_bytes} bytes",
                "invalid_request_error",
                "body_too_large",
            ) from None
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise _bad(f"request body: expected JSON, {exc}") from None
        if not isinstance(obj, dict):
            raise _bad("request body: expected a JSON object")
        model = obj.get("model")
        if not isinstance(model, str) or not model:
            raise _bad("model: expected a model name", "model")
        if chat:
            messages = obj.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _bad("messages: expected a non-empty list of messages", "messages")
        elif "prompt" not in obj:
            raise _bad("prompt: required", "prompt")
        stream = obj.get("stream", False)
        if not isinstance(stream, bool):
            raise _bad("stream: expected true or false", "stream")
        return obj, raw

    def _request(self, request: web.Request, obj: dict[str, Any], raw: bytes, rid: str
                 ) -> InferenceRequest:  # fmt: skip
        headers = request.headers
        tenant = tenant_from_headers(headers, self.gateway.tenants.keys)
        qos, origin, deadline = qos_from_headers(headers)
        model = obj["model"]
        if not self.gateway.catalog.has_model(ModelId(model)):
            raise HttpError(
                404, f"model {model!r} is not served by any live worker", "not_found_error",
                "model_not_found", "model",
            )  # fmt: skip
        try:
            return InferenceRequest(
                Capability.GENERATE,
                raw,
                qos=qos,
                request_id=rid,
                tenant_id=tenant,
                model=ModelId(model),
                deadline=deadline,
                origin=origin,  # type: ignore[arg-type]
            )
        except (TypeError, ValueError) as exc:
            raise _bad(str(exc)) from None

    async def _serve(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        self.requests += 1
        prefix = "chatcmpl" if chat else "cmpl"
        rid = f"{prefix}-{secrets.token_hex(12)}"
        try:
            # The credential first: an unknown caller's body is never read (401).
            tenant_from_headers(request.headers, self.gateway.tenants.keys)
            obj, raw = await self._body(request, chat=chat)
            req = self._request(request, obj, raw, rid)
            if obj.get("stream", False):
                return await self._stream(request, req, obj, chat=chat)
            resp = await self.gateway.infer(req)
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        except Exception as exc:  # every failure is an answer, typed
            return _error_response(status_of(exc))
        text = resp.output.decode("utf-8", "replace")
        prompt_tokens = _chat_text(obj)
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        body = {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": obj["model"],
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": resp.tokens,
                "total_tokens": prompt_tokens + resp.tokens,
            },
        }
        return web.Response(
            body=json.dumps(body).encode(),
            content_type=_JSON,
            headers=_served(resp.node_id, resp.region_id, resp.attempts, rid),
        )

    async def _stream(
        self, request: web.Request, req: InferenceRequest, obj: dict[str, Any], *, chat: bool
    ) -> web.StreamResponse:
        call, chunks = self.gateway.stream_call(req)
        rid = req.request_id
        created = int(time.time())
        model = obj["model"]
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(tokens: list[bytes] | None, finish: str | None = None, first: bool = False
                  ) -> bytes:  # fmt: skip
            text = b"".join(tokens).decode("utf-8", "replace") if tokens else ""
            if chat:
                delta: dict[str, Any] = {"content": text} if tokens else {}
                if first:
                    delta["role"] = "assistant"
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            payload = {"id": rid, "object": kind, "created": created, "model": model,
                       "choices": [choice]}  # fmt: skip
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        async with contextlib.aclosing(chunks):
            # The first chunk before the status line: a request that fails before
            # any token is a plain HTTP error, and the headers can name the node.
            try:
                first = await chunks.__anext__()
            except StopAsyncIteration:
                first = []
            except asyncio.CancelledError:
                self.disconnects += 1
                raise
            except Exception as exc:
                return _error_response(status_of(exc))
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    **_served(call.node, call.region, call.attempts, rid),
                }
            )
            await response.prepare(request)
            try:
                await response.write(event(first, first=True))
                tokens = len(first)
                async for chunk in chunks:
                    tokens += len(chunk)
                    await response.write(event(chunk))
                await response.write(event(None, "stop"))
                options = obj.get("stream_options")
                if isinstance(options, dict) and options.get("include_usage"):
                    # OpenAI's usage chunk: no choices, after the last one.
                    prompt = _chat_text(obj)
                    usage = {"prompt_tokens": prompt, "completion_tokens": tokens,
                             "total_tokens": prompt + tokens}  # fmt: skip
                    payload = {"id": rid, "object": kind, "created": created, "model": model,
                               "choices": [], "usage": usage}  # fmt: skip
                    await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                await response.write(b"data: [DONE]\n\n")
            except asyncio.CancelledError:
                self.disconnects += 1
                raise
            except (ConnectionResetError, ConnectionError):
                # The client went away while we wrote: closing the chunks (the
                # `async with`) cancels the worker's generation.
                self.disconnects += 1
                return response
            except Exception as exc:
                err = status_of(exc)
                body = err.body()
                body["error"]["status"] = err.status
                with contextlib.suppress(ConnectionError):
                    await response.write(b"data: " + json.dumps(body).encode() + b"\n\n")
                return response
            await response.write_eof()
            return response


def _served(node: str, region: str, attempts: int, rid: str) -> dict[str, str]:
    return {
        "x-fedgate-node": node,
        "x-fedgate-region": region,
        "x-fedgate-attempts": str(attempts),
        "x-request-id": rid,
    }
