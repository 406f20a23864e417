"""The openai backend: proxy to any OpenAI-compatible server, streaming.

Works with vLLM, llama.cpp's server, Ollama, TGI and OpenAI itself: the worker
POSTs ``{base_url}/v1/chat/completions`` with ``"stream": true`` and turns the
server-sent events into tokens (each content delta is one token; every delta
that arrived in the same network read becomes one chunk, i.e. one frame).

The request's input is either a JSON object, used as the request body (its
``model`` and ``stream`` are overridden; a body with ``prompt`` and no
``messages`` goes to ``/v1/completions``), or plain UTF-8 text, sent as one
user message.

Errors, by class (SPEC §2 Gateway, R24):

* HTTP 400 with the code ``context_length_exceeded`` is the input being too
  long for this model (``context_length``: a model with a larger context
  window may take it, no node of this one will).
* HTTP 400, 413 and 422 are the caller's input (``bad_input``, never the
  node's fault): the upstream's status and message travel in the error's
  text unchanged, and its error code in the error's ``upstream_code``, so the
  caller reads the upstream's own reason and code.
* 429 and 503 say the upstream is busy (``overloaded``: try another node),
  carrying the upstream's ``Retry-After`` in seconds when it sent one, so the
  gateway does not ask this node again before then.
* Every other status, a refused or reset connection, no first token within
  ``first_token_timeout``, no token for ``stall_timeout`` once streaming, a
  malformed event and a stream that ends without ``[DONE]`` or a finish
  reason are the node's failure (``backend``; a stall is ``stall``) — never a
  short success. A worker whose key or model name is wrong (401, 403, 404)
  is misconfigured, and that should count against it.

Continuing a stream (SPEC §2 Gateway, R24)
-------------------------------------------
A generation cannot be *resumed* (replayed exactly from a token index), so
``resumable`` is False; but it can be *continued*: ``continuable`` is True,
and a stream cut, stalled or corrupted on another node after its first token
comes here with the text the caller already has (``req.delivered``). The
upstream is asked to continue it:

* a chat request gets that text as a final assistant message (a *prefill*;
  appended to the caller's own final assistant message when there is one),
  with vLLM's ``continue_final_message: true, add_generation_prompt: false``.
  Without them vLLM would open a new assistant turn and answer afresh after
  the text, which the caller would read as a duplicated answer; llama.cpp's
  server and Ollama continue a final assistant message anyway and ignore the
  two fields, and a server that rejects unknown fields rejects the
  continuation, which ends as below rather than as a wrong answer;
* a completions request gets the text appended to its prompt (a prompt that
  is not one string cannot be continued);
* ``max_tokens`` / ``max_completion_tokens`` shrink by the tokens already
  delivered (one content delta is one token), and a stream already at its
  limit ends at once.

Every 400, 413 or 422 on a continuation is ``cannot_continue`` (the input was
good: another node streamed from it, so what was refused is the prefill):
nobody's fault, and the gateway reports the interruption that asked for the
continuation to the caller, never the refusal.

Embeddings: a request for capability ``embed`` is POSTed (not streamed) to
``{base_url}/v1/embeddings`` with its ``model`` set as above, and the
upstream's JSON answer is the worker's answer, unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import email.utils
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec

from fedgate.errors import WorkerError
from fedgate.transport.protocol import ERR_OVERLOADED, ERR_STALL
from fedgate.worker.backends.base import (
    BackendRequest,
    backend_failure,
    bad_input,
    cannot_continue,
    context_too_long,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = ["OpenAIBackend", "add_arguments", "create", "options_from_args"]

_BAD_INPUT_STATUSES = frozenset({400, 413, 422})
_BUSY_STATUSES = frozenset({429, 503})
_MAX_RETRY_AFTER = 3600.0
_DETAIL_BYTES = 512
_CONTEXT_CODE = "context_length_exceeded"  # OpenAI's (and vLLM's) code for a too-long input
_JSON_BODY = {"Content-Type": "application/json"}
_decode = msgspec.json.decode
_encode = msgspec.json.encode
_DecodeError = msgspec.DecodeError


def _loads(data: bytes | str) -> tuple[Any, bool]:
    """``data`` parsed as JSON, and whether msgspec parsed it (then msgspec may write it back).

    msgspec first (a few times faster: the hot path parses every request and
    every event); what it refuses goes to ``json.loads``, which decides as
    before (it also reads ``NaN`` and ``Infinity``, which msgspec would write
    back as ``null``: such a body is written back by ``json.dumps``).
    """
    try:
        return _decode(data), True
    except _DecodeError:
        return json.loads(data), False


class OpenAIBackend:
    """Stream completions from an OpenAI-compatible HTTP server.

    Parameters
    ----------
    base_url : str
        The server, e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is accepted).
    api_key_env : str, optional
        Name of the environment variable holding the API key; when it is unset
        or empty no ``Authorization`` header is sent (local servers).
    upstream_model : str, optional
        The model name the server knows; defaults to the request's model.
    connect_timeout : float
        Seconds to establish a connection. Reads have no timeout of their own:
        the worker's per-attempt deadline bounds the whole call.
    max_connections : int
        Size of the connection pool.
    first_token_timeout : float, optional
        Seconds from sending the request to the first token (a silent upstream
        fails the attempt then, not at the request's deadline); None: no limit.
    stall_timeout : float, optional
        Longest silence between two reads once tokens flow; None: no limit.
    """

    resumable = False
    continuable = True

    def __init__(
        self,
        base_url: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        upstream_model: str | None = None,
        connect_timeout: float = 10.0,
        max_connections: int = 256,
        first_token_timeout: float | None = None,
        stall_timeout: float | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: expected an http:// or https:// URL, got {base_url!r}")
        root = base_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[:-3]
        self.base_url = root
        self.api_key_env = api_key_env or None
        if upstream_model is not None and (
            not isinstance(upstream_model, str) or not upstream_model
        ):
            raise ValueError(f"upstream_model: expected a non-empty str, got {upstream_model!r}")
        self.upstream_model = upstream_model
        if not (connect_timeout > 0):
            raise ValueError(f"connect_timeout: expected seconds > 0, got {connect_timeout!r}")
        self.connect_timeout = float(connect_timeout)
        self.max_connections = int(max_connections)
        for name, value in (
            ("first_token_timeout", first_token_timeout),
            ("stall_timeout", stall_timeout),
        ):
            if value is not None and not (0 < value < float("inf")):
                raise ValueError(f"{name}: expected seconds > 0, got {value!r}")
        self.first_token_timeout = first_token_timeout
        self.stall_timeout = stall_timeout
        self._client: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.base_url!r}, upstream_model={self.upstream_model!r})"

    def _http(self) -> aiohttp.ClientSession:
        if self._client is None:
            # aiohttp, not httpx: measured on the same upstream (benchmarks/vs_litellm.py),
            # httpx cost the worker ~1-2 ms a request and ~400 req/s at 64 in flight.
            import aiohttp  # imported on first use: the worker starts without it

            # Every request of this session is a JSON POST: its Content-Type is the
            # session's, not merged in per request.
            headers = {"Accept": "text/event-stream", **_JSON_BODY}
            key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
            if key:
                headers["Authorization"] = f"Bearer {key}"
            self._client = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
                connector=aiohttp.TCPConnector(limit=self.max_connections),
            )
        return self._client

    def request_body(self, req: BackendRequest) -> tuple[str, dict[str, Any]]:
        """The endpoint path and JSON body for ``req``; raises ``bad_input`` when unusable.

        For a continuation (``req.delivered``) the body asks to continue that
        text, and a ``max_tokens`` it leaves at 0 means nothing is left to ask.
        """
        path, body, _ = self._request_body(req)
        return path, body

    def _request_body(self, req: BackendRequest) -> tuple[str, dict[str, Any], bool]:
        """:meth:`request_body`, and whether msgspec may encode the body (see :func:`_loads`)."""
        data = req.input
        body: dict[str, Any] | None = None
        exact = True
        if data.lstrip()[:1] == b"{":
            try:
                parsed, exact = _loads(data)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                body = parsed
        if body is None:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise bad_input(
                    f"openai: expected UTF-8 text or a JSON object, got {exc}"
                ) from None
            body = {"messages": [{"role": "user", "content": text}]}
        model = self.upstream_model or req.model or body.get("model")
        if not model:
            raise bad_input("openai: expected a model (request model, --upstream-model or body)")
        body["model"] = model
        body["stream"] = True
        if "messages" in body:
            path = "/v1/chat/completions"
        elif "prompt" in body:
            path = "/v1/completions"
        else:
            raise bad_input('openai: expected a JSON body with "messages" or "prompt"')
        if req.delivered:
            _continue_from(body, req.delivered, req.resume_from)
        return path, body, exact

    async def generate(self, req: BackendRequest) -> AsyncIterator[list[bytes]]:
        """Yield the upstream's content deltas; every network read becomes one chunk.

        The first-token clock runs from the send (a server that accepts the
        request and then says nothing is as silent as one that never answers);
        once tokens flow, each read must come within ``stall_timeout``.
        """
        if req.capability == "embed":
            yield [await self.embed(req)]
            return
        path, body, exact = self._request_body(req)
        url = self.base_url + path
        continuing = bool(req.delivered)
        if continuing and any(body.get(name) == 0 for name in _LIMITS):
            return  # a continuation of a stream that had reached its max_tokens: done
        data = _encode(body) if exact else json.dumps(body).encode()
        if self.first_token_timeout is None and self.stall_timeout is None:
            # No clock of its own to run: the reads go straight to the caller, in this task
            # (only a cancellation ends them, and that ends the whole call anyway). A read
            # that arrives while the caller is busy with the last chunk is the next chunk.
            reads = self._reads(data, url, continuing)
            try:
                async for tokens in reads:
                    yield tokens
            finally:
                await reads.aclose()
            return
        # The HTTP exchange runs in a task of its own, so that a timeout here never
        # cancels the HTTP client midway through a read in this task; it hands over what it
        # read through a queue (a finished or failed read ends with its outcome).
        queue: asyncio.Queue[list[bytes] | BaseException | None] = asyncio.Queue()
        reader = asyncio.ensure_future(self._read_into(queue, data, url, continuing))
        loop = asyncio.get_running_loop()
        first_by = (
            None if self.first_token_timeout is None else loop.time() + self.first_token_timeout
        )
        flowing = False
        try:
            while True:
                if flowing:
                    limit = self.stall_timeout
                else:
                    limit = None if first_by is None else max(first_by - loop.time(), 0.0)
                try:
                    item = await asyncio.wait_for(queue.get(), limit)
                except asyncio.TimeoutError:
                    if flowing:
                        raise WorkerError(
                            f"openai: {url} stalled: no data for {self.stall_timeout}s mid-stream",
                            code=ERR_STALL,
                            node_caused=True,
                        ) from None
                    raise backend_failure(
                        f"openai: {url} sent no first token within {self.first_token_timeout}s"
                    ) from None
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                # Everything read since the last ask is one chunk (one frame).
                while not queue.empty():
                    more = queue.get_nowait()
                    if not isinstance(more, list):
                        queue.put_nowait(more)  # the end comes after these tokens
                        break
                    item = item + more
                flowing = True
                yield item
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _read_into(
        self,
        queue: asyncio.Queue[list[bytes] | BaseException | None],
        data: bytes,
        url: str,
        continuing: bool,
    ) -> None:
        try:
            async for tokens in self._reads(data, url, continuing):
                queue.put_nowait(tokens)
        except Exception as exc:
            queue.put_nowait(exc)
        else:
            queue.put_nowait(None)

    async def _reads(
        self, data: bytes, url: str, continuing: bool
    ) -> AsyncGenerator[list[bytes], None]:
        """The upstream's tokens for the JSON body ``data``, one list per network read."""
        import aiohttp

        session = self._http()
        try:
            async with session.post(url, data=data) as resp:
                if resp.status >= 400:
                    detail = (await resp.read())[:_DETAIL_BYTES].decode("utf-8", "replace")
                    raise _status_error(
                        resp.status, url, detail, resp.headers.get("retry-after"), continuing
                    )
                parser = _SSEParser()
                # Text as it arrives, one piece per network read; a character split
                # between two reads is held back until it is whole.
                decode = codecs.getincrementaldecoder("utf-8")("replace").decode
                async for raw in resp.content.iter_any():
                    tokens = parser.feed(decode(raw))
                    if tokens:
                        yield tokens
                    if parser.error is not None:
                        raise parser.error
                    if parser.done:
                        break
                if not parser.done:
                    tokens = parser.feed("\n")  # a last event without its newline
                    if tokens:
                        yield tokens
                    if parser.error is not None:
                        raise parser.error
                if not (parser.done or parser.finished):
                    raise backend_failure(
                        f"openai: {url} ended the stream without [DONE] or a finish reason "
                        "(truncated)"
                    )
        except aiohttp.ClientError as exc:
            raise backend_failure(f"openai: {url}: {type(exc).__name__}: {exc}") from None

    async def embed(self, req: BackendRequest) -> bytes:
        """POST ``req``'s embeddings body to the upstream; its JSON answer, as bytes."""
        import aiohttp

        try:
            body = json.loads(req.input) if req.input.lstrip()[:1] == b"{" else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            try:
                body = {"input": req.input.decode("utf-8")}
            except UnicodeDecodeError as exc:
                raise bad_input(
                    f"openai: expected UTF-8 text or a JSON object, got {exc}"
                ) from None
        model = self.upstream_model or req.model or body.get("model")
        if not model:
            raise bad_input("openai: expected a model (request model, --upstream-model or body)")
        body["model"] = model
        url = self.base_url + "/v1/embeddings"
        headers = {**_JSON_BODY, "Accept": "application/json"}
        try:
            data = json.dumps(body).encode()
            async with self._http().post(url, data=data, headers=headers) as resp:
                content = await resp.read()
                status, retry_after = resp.status, resp.headers.get("retry-after")
        except aiohttp.ClientError as exc:
            raise backend_failure(f"openai: {url}: {type(exc).__name__}: {exc}") from None
        if status >= 400:
            detail = content[:_DETAIL_BYTES].decode("utf-8", "replace")
            raise _status_error(status, url, detail, retry_after)
        try:
            answer = json.loads(content)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise backend_failure(
                f"openai: {url} answered without OpenAI's embeddings body: {content[:200]!r}"
            )
        return content

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


_LIMITS = ("max_tokens", "max_completion_tokens")


def _continue_from(body: dict[str, Any], delivered: bytes, resume_from: int) -> None:
    """Make ``body`` ask the upstream to continue ``delivered`` (see the module docstring)."""
    try:
        text = delivered.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise cannot_continue(f"openai: the delivered text is not UTF-8 ({exc})") from None
    messages = body.get("messages")
    if messages is not None:
        if not isinstance(messages, list):
            raise cannot_continue("openai: cannot continue a chat whose messages are not a list")
        last = messages[-1] if messages else None
        if isinstance(last, dict) and last.get("role") == "assistant":
            # The caller's own prefill: the delivered text follows it.
            prefill = {**last, "content": f"{last.get('content') or ''}{text}"}
            body["messages"] = [*messages[:-1], prefill]
        else:
            body["messages"] = [*messages, {"role": "assistant", "content": text}]
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise cannot_continue("openai: cannot continue a completion whose prompt is not text")
        body["prompt"] = prompt + text
    for name in _LIMITS:
        limit = body.get(name)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            body[name] = max(limit - resume_from, 0)  # 0: nothing left, nothing is sent


def _status_error(
    status: int, url: str, detail: str, retry_after: str | None, continuing: bool = False
) -> WorkerError:
    reason = detail.strip()
    try:
        err = json.loads(detail).get("error")
    except (ValueError, AttributeError):
        err = None
    code = ""
    if isinstance(err, dict) and err.get("message"):
        # The upstream's own reason and code, as it said them.
        reason = f"{err.get('message')} (code {err.get('code')})"
        if err.get("code") is not None:
            code = str(err.get("code"))[:128]
    message = f"openai: {url} answered HTTP {status}: {reason}"
    if status == 400 and code == _CONTEXT_CODE and not continuing:
        return context_too_long(message)
    if status in _BAD_INPUT_STATUSES:
        if continuing:
            # The input was good (another node streamed from it): the prefill was refused.
            return cannot_continue(
                f"openai: {url} would not continue the stream (HTTP {status}: {reason})", code
            )
        return bad_input(message, code)
    if status in _BUSY_STATUSES:
        return WorkerError(
            message,
            code=ERR_OVERLOADED,
            node_caused=False,
            retry_after=_seconds(retry_after),
            upstream_code=code,
        )
    failure = backend_failure(message)
    failure.upstream_code = code
    return failure


def _seconds(retry_after: str | None) -> float:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); 0 when absent or unreadable."""
    if not retry_after:
        return 0.0
    try:
        value = float(retry_after)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            return 0.0
        value = when.timestamp() - time.time()
    if not (value > 0):
        return 0.0
    return min(value, _MAX_RETRY_AFTER)


class _SSEParser:
    """Incremental ``text/event-stream`` reader for OpenAI's ``data:`` events."""

    __slots__ = ("_pending", "done", "error", "finished")

    def __init__(self) -> None:
        self._pending = ""
        self.done = False  # saw "data: [DONE]"
        self.finished = False  # saw a choice with a finish_reason
        self.error: WorkerError | None = None  # a bad event: nothing after it is read

    def feed(self, text: str) -> list[bytes]:
        """Consume ``text``; return the content of every complete event in it.

        A malformed or error event sets :attr:`error` and ends the read; the
        tokens of the good events before it in the same read are still returned,
        so that what the caller received is exactly what the upstream sent well.
        """
        tokens: list[bytes] = []
        if self.error is not None:
            return tokens
        try:
            self._feed(text, tokens)
        except WorkerError as exc:
            self.error = exc
        return tokens

    def _feed(self, text: str, tokens: list[bytes]) -> None:
        buffer = self._pending + text
        lines = buffer.split("\n")
        self._pending = lines.pop()
        for raw in lines:
            line = raw.rstrip("\r")
            if not line.startswith("data:"):
                continue  # comments (": keep-alive"), "event:", "id:", blank separators
            payload = line[5:].strip()
            if payload == "[DONE]":
                self.done = True
                break
            if not payload:
                continue
            try:
                event, _ = _loads(payload)
            except ValueError:
                raise backend_failure(
                    f"openai: malformed event from upstream: {payload[:200]!r}"
                ) from None
            if not isinstance(event, dict):
                raise backend_failure(
                    f"openai: expected a JSON object event, got {payload[:200]!r}"
                )
            if "error" in event:
                raise backend_failure(f"openai: upstream error: {json.dumps(event['error'])[:500]}")
            choices = event.get("choices") or ()
            for choice in choices[:1]:  # n > 1 is not a stream of one generation
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta")
                content = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                if isinstance(content, str) and content:
                    tokens.append(content.encode("utf-8"))
                if choice.get("finish_reason"):
                    self.finished = True


def create(**options: Any) -> OpenAIBackend:
    """Build an :class:`OpenAIBackend` from keyword options (the registry's factory)."""
    return OpenAIBackend(**options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--backend openai`` options to the worker's parser."""
    group = parser.add_argument_group(
        "openai backend (--backend openai)",
        "Proxy to an OpenAI-compatible server (vLLM, llama.cpp server, Ollama, TGI) with "
        "streaming. Input: a JSON request body, or plain text sent as one user message.",
    )
    group.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help="the server (required), e.g. --base-url http://127.0.0.1:8000 "
        "(Ollama: http://127.0.0.1:11434)",
    )
    group.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help="environment variable holding the API key (default OPENAI_API_KEY; "
        "no header when unset), e.g. --api-key-env VLLM_API_KEY",
    )
    group.add_argument(
        "--upstream-model",
        default=None,
        metavar="NAME",
        help="model name on the server (default: the request's model), "
        "e.g. --upstream-model meta-llama/Llama-3.1-8B-Instruct",
    )
    group.add_argument(
        "--first-token-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fail the attempt when no token arrives this long after the request "
        "(default: only the deadline), e.g. --first-token-timeout 5",
    )
    group.add_argument(
        "--stall-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fail the attempt when a stream is silent this long between tokens "
        "(default: only the deadline), e.g. --stall-timeout 2",
    )


OPTION_FLAGS: dict[str, str] = {
    "base_url": "--base-url",
    "api_key_env": "--api-key-env",
    "upstream_model": "--upstream-model",
    "first_token_timeout": "--first-token-timeout",
    "stall_timeout": "--stall-timeout",
}


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The factory's keyword options from parsed flags."""
    if not args.base_url:
        raise ValueError("argument --base-url: required with --backend openai")
    options: dict[str, Any] = {"base_url": args.base_url}
    if args.api_key_env is not None:
        options["api_key_env"] = args.api_key_env
    if args.upstream_model is not None:
        options["upstream_model"] = args.upstream_model
    for name in ("first_token_timeout", "stall_timeout"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    return options
