"""The openai backend: proxy to any OpenAI-compatible server, streaming.

Works with vLLM, llama.cpp's server, Ollama, TGI and OpenAI itself: the worker
POSTs ``{base_url}/v1/chat/completions`` with ``"stream": true`` and turns the
server-sent events into tokens (each content delta is one token; every delta
that arrived in the same network read becomes one chunk, i.e. one frame).

The request's input is either a JSON object, used as the request body (its
``model`` and ``stream`` are overridden; a body with ``prompt`` and no
``messages`` goes to ``/v1/completions``), or plain UTF-8 text, sent as one
user message.

Errors: HTTP 400, 413 and 422 are the caller's input (``bad_input``); 429 says
the upstream is busy (``overloaded``: try another node); every other status,
a refused connection or a stream that ends without ``[DONE]`` or a finish
reason is the node's failure (``backend``) — a worker whose key or model name
is wrong (401, 403, 404) is misconfigured, and that should count against it.
Generations cannot be resumed mid-stream, so ``resumable`` is False.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fedgate.errors import WorkerError
from fedgate.transport.protocol import ERR_OVERLOADED
from fedgate.worker.backends.base import BackendRequest, backend_failure, bad_input

if TYPE_CHECKING:
    import httpx

__all__ = ["OpenAIBackend", "add_arguments", "create", "options_from_args"]

_BAD_INPUT_STATUSES = frozenset({400, 413, 422})
_DETAIL_BYTES = 512


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
    """

    resumable = False

    def __init__(
        self,
        base_url: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        upstream_model: str | None = None,
        connect_timeout: float = 10.0,
        max_connections: int = 256,
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
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.base_url!r}, upstream_model={self.upstream_model!r})"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx  # imported on first use: the worker starts without it

            headers = {"Accept": "text/event-stream"}
            key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
            if key:
                headers["Authorization"] = f"Bearer {key}"
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=httpx.Timeout(None, connect=self.connect_timeout),
                limits=httpx.Limits(
                    max_connections=self.max_connections,
                    max_keepalive_connections=self.max_connections,
                ),
            )
        return self._client

    def request_body(self, req: BackendRequest) -> tuple[str, dict[str, Any]]:
        """The endpoint path and JSON body for ``req``; raises ``bad_input`` when unusable."""
        data = req.input
        body: dict[str, Any] | None = None
        if data.lstrip()[:1] == b"{":
            try:
                parsed = json.loads(data)
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
            return "/v1/chat/completions", body
        if "prompt" in body:
            return "/v1/completions", body
        raise bad_input('openai: expected a JSON body with "messages" or "prompt"')

    async def generate(self, req: BackendRequest) -> AsyncIterator[list[bytes]]:
        """Yield the upstream's content deltas; every network read becomes one chunk."""
        import httpx

        path, body = self.request_body(req)
        client = self._http()
        url = self.base_url + path
        try:
            async with client.stream("POST", path, json=body) as resp:
                if resp.status_code >= 400:
                    detail = (await resp.aread())[:_DETAIL_BYTES].decode("utf-8", "replace")
                    raise _status_error(resp.status_code, url, detail)
                parser = _SSEParser()
                async for text in resp.aiter_text():
                    tokens = parser.feed(text)
                    if tokens:
                        yield tokens
                    if parser.done:
                        break
                if not parser.done:
                    tokens = parser.feed("\n")  # a last event without its newline
                    if tokens:
                        yield tokens
                if not (parser.done or parser.finished):
                    raise backend_failure(
                        f"openai: {url} ended the stream without [DONE] or a finish reason "
                        "(truncated)"
                    )
        except httpx.HTTPError as exc:
            raise backend_failure(f"openai: {url}: {type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _status_error(status: int, url: str, detail: str) -> WorkerError:
    message = f"openai: {url} answered HTTP {status}: {detail.strip()}"
    if status in _BAD_INPUT_STATUSES:
        return bad_input(message)
    if status == 429:
        return WorkerError(message, code=ERR_OVERLOADED, node_caused=False)
    return backend_failure(message)


class _SSEParser:
    """Incremental ``text/event-stream`` reader for OpenAI's ``data:`` events."""

    __slots__ = ("_pending", "done", "finished")

    def __init__(self) -> None:
        self._pending = ""
        self.done = False  # saw "data: [DONE]"
        self.finished = False  # saw a choice with a finish_reason

    def feed(self, text: str) -> list[bytes]:
        """Consume ``text``; return the content of every complete event in it."""
        tokens: list[bytes] = []
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
                event = json.loads(payload)
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
        return tokens


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


OPTION_FLAGS: dict[str, str] = {
    "base_url": "--base-url",
    "api_key_env": "--api-key-env",
    "upstream_model": "--upstream-model",
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
    return options
