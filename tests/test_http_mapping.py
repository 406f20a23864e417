"""The HTTP front's translations, without sockets: errors → statuses, headers → QoS."""

from __future__ import annotations

import pytest

from fedgate.errors import (
    AllNodesUnhealthyError,
    BackpressureError,
    DeadlineExceededError,
    NoCapacityError,
    PrivacyViolationError,
    QuotaExceededError,
    StreamInterruptedError,
    WorkerError,
)
from fedgate.gateway.config import HttpConfig, listen_address
from fedgate.gateway.http import HttpError, qos_from_headers, status_of, tenant_from_headers
from fedgate.types import PrivacyLevel
from fedgate.validation import InvalidParameterError


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (ValueError("bad"), 400, "invalid_request_error"),
        (PrivacyViolationError("no region"), 403, "permission_error"),
        (NoCapacityError("none"), 503, "service_unavailable"),
        (AllNodesUnhealthyError("sick"), 503, "service_unavailable"),
        (BackpressureError("full"), 503, "service_unavailable"),
        (DeadlineExceededError("late"), 504, "timeout_error"),
        (WorkerError("input", code="bad_input", node_caused=False), 400, "invalid_request_error"),
        (WorkerError("boom", code="backend"), 502, "server_error"),
        (StreamInterruptedError("cut"), 502, "server_error"),
        (QuotaExceededError("over", tenant="t", limit="requests", retry_after=0.2), 429,
         "rate_limit_exceeded"),
        (RuntimeError("bug"), 500, "server_error"),
    ],
)
def test_each_error_has_its_status_and_openai_body(exc: Exception, status: int, kind: str) -> None:
    err = status_of(exc)
    assert err.status == status
    body = err.body()["error"]
    assert body["type"] == kind and set(body) == {"message", "type", "param", "code"}
    if status != 500:  # an internal error does not leak its text
        assert str(exc) in body["message"]
    else:
        assert "bug" not in body["message"]


def test_an_upstreams_own_error_code_reaches_the_caller_unchanged() -> None:
    upstream = WorkerError(
        "HTTP 400: too long", code="bad_input", node_caused=False,
        upstream_code="context_length_exceeded",
    )  # fmt: skip
    assert status_of(upstream).body()["error"]["code"] == "context_length_exceeded"
    ours = WorkerError("not UTF-8", code="bad_input", node_caused=False)
    assert status_of(ours).body()["error"]["code"] == "bad_input"


def test_qos_headers() -> None:
    qos, origin, deadline = qos_from_headers(
        {
            "x-fedgate-privacy": "confidential",
            "x-fedgate-origin-region": "eu-west-1",
            "x-fedgate-max-latency-ms": "250",
            "x-fedgate-prefer-gpu": "false",
            "x-fedgate-deadline-ms": "1500",
        }
    )
    assert qos.privacy is PrivacyLevel.CONFIDENTIAL and qos.max_latency == 0.25
    assert qos.prefer_gpu is False and origin == "eu-west-1" and deadline == 1.5
    qos, origin, deadline = qos_from_headers({})
    assert qos.privacy is PrivacyLevel.INTERNAL and origin is None and deadline is None


@pytest.mark.parametrize(
    "headers",
    [
        {"x-fedgate-privacy": "SECRET"},
        {"x-fedgate-max-latency-ms": "fast"},
        {"x-fedgate-deadline-ms": "-5"},
        {"x-fedgate-prefer-gpu": "maybe"},
    ],
)
def test_bad_qos_headers_are_400(headers: dict[str, str]) -> None:
    with pytest.raises(HttpError) as info:
        qos_from_headers(headers)
    assert info.value.status == 400


def test_bearer_names_the_tenant() -> None:
    assert tenant_from_headers({"Authorization": "Bearer team-a"}) == "team-a"
    assert tenant_from_headers({}) is None
    for bad in ("Basic abc", "Bearer ", "Bearer " + "k" * 257):
        with pytest.raises(HttpError) as info:
            tenant_from_headers({"Authorization": bad})
        assert info.value.status == 401


def test_with_api_keys_the_key_names_the_tenant_and_anything_else_is_401() -> None:
    keys = {"sk-a1": "acme", "sk-a2": "acme", "sk-g": "globex"}
    assert tenant_from_headers({"Authorization": "Bearer sk-a2"}, keys) == "acme"
    assert tenant_from_headers({"Authorization": "bearer sk-g"}, keys) == "globex"
    for headers in ({}, {"Authorization": "Bearer sk-nope"}, {"Authorization": "Bearer acme"}):
        with pytest.raises(HttpError) as info:
            tenant_from_headers(headers, keys)
        err = info.value
        assert (err.status, err.kind, err.code) == (401, "authentication_error", "invalid_api_key")
        assert "sk-nope" not in str(err)  # a wrong key is never echoed


@pytest.mark.parametrize(("retry_after", "header"), [(0.2, "1"), (1.0, "1"), (1.01, "2"),
                                                      (59.5, "60")])  # fmt: skip
def test_over_quota_is_429_with_retry_after_rounded_up(retry_after: float, header: str) -> None:
    err = status_of(
        QuotaExceededError("over", tenant="t", limit="tokens", retry_after=retry_after)
    )
    assert err.status == 429 and err.headers == {"Retry-After": header}
    assert err.body()["error"]["type"] == "rate_limit_exceeded"
    assert err.body()["error"]["code"] == "quota_tokens"


def test_listen_addresses() -> None:
    assert listen_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert listen_address("[::1]:0") == ("::1", 0)
    for bad in ("8080", ":80", "host:", "h:99999", "h:port"):
        with pytest.raises(InvalidParameterError):
            HttpConfig(listen=bad)
    with pytest.raises(InvalidParameterError):
        HttpConfig(max_body_bytes=10)


@pytest.mark.parametrize(
    ("remote", "served"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        (None, True),  # a Unix socket: the host's own
        ("10.0.0.7", False),
        ("192.168.1.20", False),
        ("::ffff:10.0.0.7", False),
        ("fe80::1%eth0", False),
        ("not-an-address", False),
    ],
)
async def test_metrics_are_served_to_loopback_peers_only(remote: str | None, served: bool) -> None:
    """Every tenant's counters and node names: never to a peer on the network (SPEC §5)."""
    import types
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from fedgate.gateway.http import HttpFront

    async def page() -> bytes:
        return b"fedgate_requests_total 1\n"

    gateway = types.SimpleNamespace(tenants=types.SimpleNamespace(keys={}))
    front = HttpFront(gateway, metrics=page)  # type: ignore[arg-type]
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (remote, 40000) if name == "peername" and remote is not None else default
    )
    request = make_mocked_request("GET", "/metrics", transport=transport)
    response = await front._metrics_page(request)
    if served:
        assert response.status == 200
        assert response.body == b"fedgate_requests_total 1\n"
    else:
        assert response.status == 403
        assert b"fedgate_requests_total" not in response.body
        assert remote.encode() in response.body  # names the refused peer


async def test_with_api_keys_the_catalog_needs_a_key() -> None:
    """/v1/models names every model and region: for key holders only, once keys exist."""
    import json
    import types

    from aiohttp.test_utils import make_mocked_request

    from fedgate.gateway.http import HttpFront

    catalog = types.SimpleNamespace(deployments=lambda: [], has_model=lambda m: False)
    gateway = types.SimpleNamespace(
        tenants=types.SimpleNamespace(keys={"sk-acme": "acme"}), catalog=catalog
    )
    front = HttpFront(gateway)  # type: ignore[arg-type]
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        response = await front._models(make_mocked_request("GET", "/v1/models", headers=headers))
        assert response.status == 401
        assert json.loads(response.body)["error"]["code"] == "invalid_api_key"
    ok = make_mocked_request("GET", "/v1/models", headers={"Authorization": "Bearer sk-acme"})
    response = await front._models(ok)
    assert response.status == 200
    assert json.loads(response.body) == {"object": "list", "data": []}
