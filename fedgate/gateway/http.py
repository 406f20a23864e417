"""The HTTP front door: the OpenAI API served from the gateway's own event loop (SPEC §6).

::

    client ──HTTP──► aiohttp server (same loop: no thread hop) ──► HttpFront handlers
                        │  bounded body (413), keep-alive idle timeout,
                        │  a client that goes away cancels its handler
                        ├─ POST /v1/chat/completions, /v1/completions
                        │     body + x-fedgate-* headers → InferenceRequest per model tried
                        │     stream=false: Gateway.infer()        → one JSON answer + usage
                        │     stream=true:  Gateway.stream_call()  → SSE chunks … data: [DONE]
                        ├─ POST /v1/embeddings  capability "embed"; the worker's answer is
                        │     OpenAI's JSON body (its vectors), passed on
                        ├─ GET /v1/models      the live catalog (regions, capabilities)
                        │     and the aliases (with their models)
                        └─ GET /healthz, /readyz, /metrics

The request's JSON body goes to the worker unchanged as its input, so a
backend sees what the client sent (``messages``, ``max_tokens`` …). The
request id is the answer's ``id``; a synthetic worker's tokens derive from
it (:func:`fedgate.worker.backends.synthetic.synthetic_token`), so a client
can check each one.

The ``model`` a client names is a catalog model or a public alias
(:mod:`fedgate.gateway.models`): an alias tries its models in order, and a
context-length error moves to a model with a larger context window. The
answer's ``model`` field, the ``x-fedgate-model`` header and the last
stream chunk's ``x_fedgate`` object name the catalog model that answered.

Which node answered: the headers ``x-fedgate-node``, ``-region`` and
``-attempts``. A stream sends them with its first chunk, so when a node dies
mid-stream and another finishes it, the headers name the first; the last
chunk (the one with ``finish_reason``) carries ``x_fedgate: {"node",
"region", "attempts", "model"}`` of the node that finished.

Errors are OpenAI's body ``{"error": {"message", "type", "param", "code"}}``
with a status that says what happened (:func:`status_of`; :func:`answer_of`
adds the model-name errors: ``context_length_exceeded`` is 400, and a node
that said it is busy for a while, when no other could answer, is 503 with
``Retry-After``). A stream waits for
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
import ipaddress
import json
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from fedgate.errors import (
    NO_NODE_NOW,
    DeadlineExceededError,
    FederationError,
    PrivacyViolationError,
    QuotaExceededError,
    StreamInterruptedError,
    WorkerError,
)
from fedgate.gateway.config import HttpConfig, listen_address
from fedgate.gateway.models import Fallback, ModelTable, is_context_error
from fedgate.transport import protocol as wire
from fedgate.types import (
    Capability,
    InferenceRequest,
    InferenceResponse,
    ModelId,
    PrivacyLevel,
    QoSRequirements,
)

if TYPE_CHECKING:
    from fedgate.gateway.call import Call
    from fedgate.gateway.gateway import Gateway

__all__ = ["HttpConfig", "HttpFront", "answer_of", "status_of"]

log = logging.getLogger("fedgate.http")

_JSON = "application/json"

# The hot path encodes and decodes with msgspec (a dependency already: the
# wire format), several times faster than the json module for these bodies.
_encode = msgspec.json.encode
_decode = msgspec.json.decode
_DecodeError = msgspec.DecodeError


class HttpError(Exception):
    """An answer in OpenAI's error body with ``status``."""

    def __init__(self, status: int, message: str, kind: str, code: str | None = None,
                 param: str | None = None, retry_after: float = 0.0,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param
        self.retry_after = retry_after  # seconds; > 0: sent as Retry-After
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
            # An upstream's own code (context_length_exceeded …) reaches the caller as it said it.
            return HttpError(400, str(exc), "invalid_request_error", exc.upstream_code or exc.code)
        return HttpError(502, str(exc), "server_error", exc.code)
    if isinstance(exc, StreamInterruptedError):
        return HttpError(502, str(exc), "server_error", "stream_interrupted")
    if isinstance(exc, NO_NODE_NOW):
        return HttpError(503, str(exc), "service_unavailable", "no_capacity")
    if isinstance(exc, FederationError):
        return HttpError(502, str(exc), "server_error", "federation_error")
    return HttpError(500, f"internal error: {type(exc).__name__}", "server_error", "internal")


def answer_of(exc: BaseException) -> HttpError:
    """:func:`status_of`, and the errors of model names and busy nodes.

    A context-length error is OpenAI's 400 ``context_length_exceeded``. A
    node's ``overloaded`` error reaches the caller only when no other node
    answered (each busy node cools down, and the request waits for one inside
    its deadline): 503, with ``Retry-After`` when the node said how long.
    """
    if is_context_error(exc):
        return HttpError(
            400, str(exc), "invalid_request_error", "context_length_exceeded", "messages"
        )
    if isinstance(exc, WorkerError) and exc.code == wire.ERR_OVERLOADED:
        return HttpError(
            503, str(exc), "service_unavailable", "overloaded", retry_after=exc.retry_after
        )
    return status_of(exc)


def _error_response(err: HttpError) -> web.Response:
    headers = err.headers
    if err.retry_after > 0:
        # Whole seconds (RFC 9110), rounded up: never earlier than the node asked.
        headers = {**(headers or {}), "Retry-After": str(max(1, math.ceil(err.retry_after)))}
    return web.Response(
        status=err.status, body=json.dumps(err.body()).encode(), content_type=_JSON,
        headers=headers,
    )  # fmt: skip


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
        # Most requests name no QoS: the shared (frozen) default, not validated again.
        qos = QoSRequirements(**kwargs) if kwargs else _DEFAULT_QOS
    except (TypeError, ValueError) as exc:
        raise _bad(str(exc)) from None
    origin = headers.get("x-fedgate-origin-region") or None
    return qos, origin, _ms(headers, "x-fedgate-deadline-ms")


_DEFAULT_QOS = QoSRequirements()


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


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"request body: expected at most {limit} bytes",
                     "invalid_request_error", "body_too_large")  # fmt: skip


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
    passes it in: it sits above the gateway). ``models`` holds the aliases and
    context windows (``[aliases.*]``, ``[models.*]``); by default every name
    is a catalog model.
    """

    def __init__(
        self,
        gateway: Gateway,
        config: HttpConfig | None = None,
        *,
        metrics: Callable[[], Awaitable[bytes]] | None = None,
        models: ModelTable | None = None,
    ) -> None:
        self.gateway = gateway
        self.config = config or HttpConfig()
        self.models = models or ModelTable()
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
        if not _is_loopback(request.remote):
            # Every tenant's counters and every node's name: for the host's own
            # scraper, as the Prometheus port (which binds 127.0.0.1 only) is.
            return _error_response(HttpError(
                403, f"/metrics is served to loopback clients only, not {request.remote}",
                "permission_error", "metrics_loopback_only",
            ))  # fmt: skip
        body = await self._metrics()
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def _models(self, request: web.Request) -> web.Response:
        try:
            # Once API keys are declared, the catalog is for their holders only.
            tenant_from_headers(request.headers, self.gateway.tenants.keys)
        except HttpError as err:
            return _error_response(err)
        catalog = self.gateway.catalog
        data = []
        for model in sorted({m for m, _ in catalog.deployments()}):
            try:
                meta = catalog.metadata(model)
            except KeyError:  # deregistered between the two reads
                continue
            row = {
                "id": model,
                "object": "model",
                "created": 0,
                "owned_by": "fedgate",
                "regions": list(meta.regions),
                "capabilities": sorted(meta.capabilities),
                "nodes": len(meta.deployments),
            }
            window = self.models.window(model)
            if window is not None:
                row["context_window"] = window
            data.append(row)
        for alias in self.models.aliases:
            # An alias is listed whether or not its models are up: it is a name
            # clients may use; live_models says which would answer now.
            data.append(
                {
                    "id": alias.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "fedgate",
                    "alias": True,
                    "models": list(alias.models),
                    "live_models": [m for m in alias.models if catalog.has_model(ModelId(m))],
                }
            )
        return web.json_response({"object": "list", "data": data})

    async def _embeddings(self, request: web.Request) -> web.Response:
        self.requests += 1
        rid = f"emb-{random.getrandbits(96):024x}"
        try:
            # The credential first: an unknown caller's body is never read (401).
            tenant_from_headers(request.headers, self.gateway.tenants.keys)
            obj, raw = await self._body(request, kind="embeddings")
            plan, build = self._plan(request, obj, raw, rid, Capability.EMBED)
            resp, model = await self._unary(plan, build)
            body = _embedding_body(resp.output, resp.node_id)
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        except Exception as exc:  # every failure is an answer, typed
            return _error_response(answer_of(exc))
        body["model"] = model
        return web.Response(
            body=json.dumps(body).encode(),
            content_type=_JSON,
            headers=_served(resp.node_id, resp.region_id, resp.attempts, rid, model),
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _body(self, request: web.Request, *, kind: str) -> tuple[dict[str, Any], bytes]:
        limit = self.config.max_body_bytes
        try:
            content = request.content
            if content.is_eof():
                # Already whole (a small body comes with its head): taken without a
                # coroutine or a timer; the size limit is read()'s, checked here.
                raw = content.read_nowait()
                if len(raw) > limit:
                    raise _too_large(limit)
            else:
                # A body that trickles in is a slow client holding a connection:
                # it gets the idle timeout, as a request head does.
                raw = await asyncio.wait_for(request.read(), self.config.idle_timeout)
        except asyncio.TimeoutError:  # TimeoutError itself only from 3.11
            raise HttpError(
                408,
                f"request body: not received within {self.config.idle_timeout:g}s",
                "invalid_request_error",
                "body_timeout",
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise _too_large(limit) from None
        try:
            obj = _decode(raw)
        except _DecodeError as exc:
            raise _bad(f"request body: expected JSON, {exc}") from None
        if not isinstance(obj, dict):
            raise _bad("request body: expected a JSON object")
        model = obj.get("model")
        if not isinstance(model, str) or not model:
            raise _bad("model: expected a model name", "model")
        if kind == "chat":
            messages = obj.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _bad("messages: expected a non-empty list of messages", "messages")
        elif kind == "embeddings":
            texts = obj.get("input")
            if not (isinstance(texts, str) or (isinstance(texts, list) and texts)):
                raise _bad(
                    "input: expected a string or a non-empty list of strings, "
                    f"got {json.dumps(texts)[:100]}",
                    "input",
                )
        elif "prompt" not in obj:
            raise _bad("prompt: required", "prompt")
        stream = obj.get("stream", False)
        if not isinstance(stream, bool):
            raise _bad("stream: expected true or false", "stream")
        return obj, raw

    def _plan(
        self,
        request: web.Request,
        obj: dict[str, Any],
        raw: bytes,
        rid: str,
        capability: Capability,
    ) -> tuple[Fallback, Callable[[str], InferenceRequest]]:
        """The models the request may try, and the request for each of them.

        Every model shares the request's one deadline: the first gets it as
        the client set it, a later one what is left of it.
        """
        headers = request.headers
        tenant = tenant_from_headers(headers, self.gateway.tenants.keys)
        qos, origin, deadline = qos_from_headers(headers)
        catalog = self.gateway.catalog
        plan = Fallback(self.models, obj["model"], lambda m: catalog.has_model(ModelId(m)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        budget = deadline if deadline is not None else self.gateway.config.request_timeout

        def build(model: str) -> InferenceRequest:
            left = deadline
            if len(plan.tried) > 1:
                left = budget - (loop.time() - started)
                if left <= 0:
                    last = plan.errors[-1][1] if plan.errors else None
                    raise DeadlineExceededError(
                        f"request {rid!r}: deadline passed before model {model!r} could be "
                        f"tried (after {', '.join(plan.tried[:-1])}): {last}"
                    )
            try:
                return InferenceRequest(
                    capability,
                    raw,
                    qos=qos,
                    request_id=rid,
                    tenant_id=tenant,
                    model=ModelId(model),
                    deadline=left,
                    origin=origin,  # type: ignore[arg-type]
                )
            except (TypeError, ValueError) as exc:
                raise _bad(str(exc)) from None

        return plan, build

    def _first_model(self, plan: Fallback) -> str:
        model = plan.next()
        if model is not None:
            return model
        name = plan.name
        if self.models.is_alias(name):
            models = ", ".join(self.models.candidates(name))
            raise HttpError(
                503, f"model {name!r}: no live worker serves any of its models ({models})",
                "service_unavailable", "no_capacity", "model",
            )  # fmt: skip
        raise HttpError(
            404, f"model {name!r} is not served by any live worker", "not_found_error",
            "model_not_found", "model",
        )  # fmt: skip

    def _next_model(self, plan: Fallback, model: str, exc: FederationError) -> str:
        """The model after ``model`` failed with ``exc``; raises the caller's error if none."""
        if not plan.failed(model, exc):
            raise exc
        following = plan.next()
        if following is None:
            raise plan.final_error(exc) from exc
        log.debug("model %s: %s; trying %s", model, exc, following)
        return following

    async def _unary(
        self, plan: Fallback, build: Callable[[str], InferenceRequest]
    ) -> tuple[InferenceResponse, str]:
        """The first answer among the plan's models, and the model that gave it."""
        model = self._first_model(plan)
        while True:
            try:
                return await self.gateway.infer(build(model)), model
            except FederationError as exc:
                model = self._next_model(plan, model, exc)

    async def _first_chunk(
        self, plan: Fallback, build: Callable[[str], InferenceRequest]
    ) -> tuple[Call, AsyncGenerator[list[bytes], None], list[bytes], str]:
        """Open the stream of the first model that produces a chunk (the commit point)."""
        model = self._first_model(plan)
        while True:
            call, chunks = self.gateway.stream_call(build(model))
            try:
                first = await chunks.__anext__()
            except StopAsyncIteration:
                return call, chunks, [], model
            except FederationError as exc:
                await chunks.aclose()
                model = self._next_model(plan, model, exc)
            except BaseException:
                await chunks.aclose()
                raise
            else:
                return call, chunks, first, model

    async def _serve(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        self.requests += 1
        # 96 random bits name the request (unique, not secret: nothing is
        # granted by knowing one), without os.urandom's system call.
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{random.getrandbits(96):024x}"
        try:
            # The credential first: an unknown caller's body is never read (401).
            tenant_from_headers(request.headers, self.gateway.tenants.keys)
            obj, raw = await self._body(request, kind="chat" if chat else "completions")
            plan, build = self._plan(request, obj, raw, rid, Capability.GENERATE)
            if obj.get("stream", False):
                return await self._stream(request, plan, build, rid, obj, chat=chat)
            resp, model = await self._unary(plan, build)
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        except Exception as exc:  # every failure is an answer, typed
            return _error_response(answer_of(exc))
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
            "model": model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": resp.tokens,
                "total_tokens": prompt_tokens + resp.tokens,
            },
        }
        headers = _served(resp.node_id, resp.region_id, resp.attempts, rid, model)
        headers["Content-Type"] = _JSON
        return web.Response(body=_encode(body), headers=headers)

    async def _stream(
        self,
        request: web.Request,
        plan: Fallback,
        build: Callable[[str], InferenceRequest],
        rid: str,
        obj: dict[str, Any],
        *,
        chat: bool,
    ) -> web.StreamResponse:
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"
        # The first chunk before the status line: a request that fails before any
        # token is a plain HTTP error (or moves to the alias's next model), and the
        # headers can name the node.
        try:
            call, chunks, first, model = await self._first_chunk(plan, build)
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        except Exception as exc:
            return _error_response(answer_of(exc))

        # Every event of the stream shares its fields but the choice: encoded once.
        head = b'data: {"id":%s,"object":%s,"created":%d,"model":%s,"choices":[' % (
            _encode(rid), _encode(kind), created, _encode(model))  # fmt: skip

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
            if finish is None:
                return head + _encode(choice) + b"]}\n\n"
            # The headers named the first node; after a mid-stream resume another
            # one finished, and this is where a client can see it.
            served = {"node": call.node, "region": call.region, "attempts": call.attempts,
                      "model": model}  # fmt: skip
            return head + _encode(choice) + b'],"x_fedgate":' + _encode(served) + b"}\n\n"

        async with contextlib.aclosing(chunks):
            headers = _served(call.node, call.region, call.attempts, rid, model)
            headers["Content-Type"] = "text/event-stream"
            headers["Cache-Control"] = "no-cache"
            response = web.StreamResponse(headers=headers)
            await response.prepare(request)
            try:
                # The status line leaves with the first event, in one write.
                await response.write(event(first, first=True))
                tokens = len(first)
                async for chunk in chunks:
                    tokens += len(chunk)
                    await response.write(event(chunk))
                tail = event(None, "stop")
                options = obj.get("stream_options")
                if isinstance(options, dict) and options.get("include_usage"):
                    # OpenAI's usage chunk: no choices, after the last one.
                    prompt = _chat_text(obj)
                    usage = {"prompt_tokens": prompt, "completion_tokens": tokens,
                             "total_tokens": prompt + tokens}  # fmt: skip
                    tail += head + b"]," + _encode({"usage": usage})[1:] + b"\n\n"
                # The last events and the chunked encoding's end: one write.
                await response.write_eof(tail + b"data: [DONE]\n\n")
            except asyncio.CancelledError:
                self.disconnects += 1
                raise
            except (ConnectionResetError, ConnectionError):
                # The client went away while we wrote: closing the chunks (the
                # `async with`) cancels the worker's generation.
                self.disconnects += 1
                return response
            except Exception as exc:
                err = answer_of(exc)
                body = err.body()
                body["error"]["status"] = err.status
                with contextlib.suppress(ConnectionError):
                    await response.write(b"data: " + json.dumps(body).encode() + b"\n\n")
                return response
            return response


def _is_loopback(remote: str | None) -> bool:
    """Whether a peer address is this host's own (127.0.0.0/8, ::1, a Unix socket)."""
    if not remote:
        return True  # no peer address: a Unix socket or an in-process test client
    try:
        return ipaddress.ip_address(remote.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _served(node: str, region: str, attempts: int, rid: str, model: str) -> dict[str, str]:
    return {
        "x-fedgate-node": node,
        "x-fedgate-region": region,
        "x-fedgate-attempts": str(attempts),
        "x-fedgate-model": model,
        "x-request-id": rid,
    }


def _embedding_body(output: bytes, node: str) -> dict[str, Any]:
    """The worker's answer to an embeddings request: OpenAI's JSON body, checked."""
    try:
        body = json.loads(output)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise HttpError(
            502, f"node {node} answered an embeddings request with something other than "
            f"OpenAI's body ({output[:100]!r})", "server_error", "bad_worker_answer",
        )  # fmt: skip
    return body
