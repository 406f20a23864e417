"""CURVE on a ZeroMQ link: key files, socket options and the ZAP authenticator.

Everything cryptographic is libzmq's (CURVE) and pyzmq's (``zmq.auth``: the
certificate files and the asyncio ZAP authenticator); this module only reads
the files and sets the options. A key pair is two files written by
:func:`generate`: ``NAME.key`` (the public key, shareable) and
``NAME.key_secret`` (both keys, mode 0600). A directory of trusted public keys
holds the ``*.key`` files of the peers a server accepts.

A CURVE server's ZAP handler sets each message's ``User-Id`` property to the
client's public key (Z85 text): the gateway reads it from the READY frame to
know which key announced a node (:func:`user_id`). On the client ingress the
authenticator is asked for the key's *name* instead (``names=True``): the
User-Id is then the tenant, with no lookup per message.

Each CURVE server runs in a ZAP domain of its own (:data:`WORKER_DOMAIN`,
:data:`CLIENT_DOMAIN`, :data:`OPERATOR_DOMAIN`), and each ZeroMQ context has
one authenticator: the gateway, the ingress and telemetry each own a context.
A refused handshake is seen on the server socket's monitor
(:data:`HANDSHAKE_REFUSED`): a key the authenticator does not know (ZAP
answered 400) and a client without CURVE at all (the mechanisms differ, ZAP
is never asked) alike.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
import zmq.utils.z85

__all__ = [
    "CLIENT_DOMAIN",
    "HANDSHAKE_REFUSED",
    "OPERATOR_DOMAIN",
    "WORKER_DOMAIN",
    "KeyPair",
    "client_options",
    "client_options_from_files",
    "digest",
    "fingerprint",
    "generate",
    "load_pair",
    "load_public",
    "server_options",
    "start_authenticator",
    "trusted_keys",
    "user_id",
]

# ZAP domain of the gateway's worker socket: the authenticator's rules are per domain.
WORKER_DOMAIN = "fedgate-workers"
CLIENT_DOMAIN = "fedgate-clients"
OPERATOR_DOMAIN = "fedgate-operators"

HANDSHAKE_REFUSED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
"""Socket monitor events of a handshake the server refused (no CURVE, an unknown key …)."""


class KeyPair:
    """A CURVE key pair (Z85 bytes); ``secret`` is None for a public-only certificate."""

    __slots__ = ("public", "secret")

    def __init__(self, public: bytes, secret: bytes | None) -> None:
        self.public = public
        self.secret = secret


def generate(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` in ``directory``; return (public, secret).

    Raises ``FileExistsError`` rather than overwrite a key: a replaced secret
    locks its worker out of every gateway that trusts the old public key.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"key name: expected a plain file name, got {name!r}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public = folder / f"{name}.key"
    secret = folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists: remove it first to replace the key")
    # The secret file is created 0600 before any key is written to it; pyzmq
    # keeps the mode of an existing file.
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    made_public, made_secret = zmq.auth.create_certificates(folder, name)
    os.chmod(made_secret, 0o600)
    os.chmod(made_public, 0o644)
    return Path(made_public), Path(made_secret)


def load_pair(path: str | os.PathLike[str]) -> KeyPair:
    """A key pair from its secret file (``NAME.key_secret``)."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the key file {str(path)!r}: {exc}") from exc
    if secret is None:
        raise ValueError(f"{str(path)!r} holds no secret key (expected a NAME.key_secret file)")
    return KeyPair(public, secret)


def load_public(path: str | os.PathLike[str]) -> bytes:
    """A public key (Z85) from a ``NAME.key`` or ``NAME.key_secret`` file."""
    try:
        public, _secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the key file {str(path)!r}: {exc}") from exc
    return public


def trusted_keys(directory: str | os.PathLike[str]) -> dict[bytes, str]:
    """The public keys of a directory's ``*.key`` files, each with its file's stem."""
    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(f"trusted key directory {str(folder)!r} does not exist")
    keys: dict[bytes, str] = {}
    for path in sorted(folder.glob("*.key")):
        keys[load_public(path)] = path.stem
    return keys


def fingerprint(public: bytes) -> str:
    """A short, printable name of a public key for logs (its first 8 Z85 characters)."""
    return public[:8].decode("ascii", "replace")


def digest(public: bytes) -> str:
    """A public key's audit fingerprint: ``SHA256:`` and the first 16 hex digits of the key's.

    Taken over the 32 raw key bytes, so ``sha256sum`` of the decoded key
    reproduces it; 64 bits tell keys apart where the 8-character log prefix
    (:func:`fingerprint`) is only a hint.
    """
    raw = zmq.utils.z85.decode(public) if len(public) == 40 else public
    return "SHA256:" + hashlib.sha256(raw).hexdigest()[:16]


def server_options(pair: KeyPair, domain: str = WORKER_DOMAIN) -> dict[Any, Any]:
    """Socket options making a bound socket a CURVE server in ``domain``."""
    assert pair.secret is not None
    return {
        zmq.CURVE_SERVER: 1,
        zmq.CURVE_SECRETKEY: pair.secret,
        zmq.CURVE_PUBLICKEY: pair.public,
        zmq.ZAP_DOMAIN: domain.encode(),
    }


def client_options(pair: KeyPair, server_public: bytes) -> dict[Any, Any]:
    """Socket options making a connecting socket a CURVE client of ``server_public``."""
    assert pair.secret is not None
    return {
        zmq.CURVE_SERVERKEY: server_public,
        zmq.CURVE_PUBLICKEY: pair.public,
        zmq.CURVE_SECRETKEY: pair.secret,
    }


def client_options_from_files(
    key: str | os.PathLike[str] | None, gateway_key: str | os.PathLike[str] | None
) -> dict[Any, Any]:
    """A client's CURVE options from its key pair file and the gateway's public key file.

    Both or neither (no options: a plain socket). The files are read now, so a
    missing one is the caller's error, not a silent timeout at the first request.
    """
    if (key is None) != (gateway_key is None):
        raise ValueError(
            f"key, gateway_key: expected both CURVE key files or neither, "
            f"got key={key!r}, gateway_key={gateway_key!r}"
        )
    if key is None or gateway_key is None:
        return {}
    return client_options(load_pair(key), load_public(gateway_key))


def start_authenticator(
    ctx: zmq.Context[Any],
    keys: dict[bytes, str],
    domain: str,
    on_refused: Callable[[bytes], object] | None = None,
    *,
    names: bool = False,
) -> Any:
    """Start pyzmq's asyncio ZAP authenticator on ``ctx``: CURVE clients of ``keys`` only.

    ``on_refused(key)`` is called per handshake refused for an untrusted key
    (a client without CURVE fails the handshake before ZAP is asked). With
    ``names``, a message's ``User-Id`` is its key's name (``keys[key]``)
    rather than the key. The caller stops it (``.stop()``) before terminating
    ``ctx``. Must be called from a running event loop.
    """
    from zmq.auth.asyncio import AsyncioAuthenticator

    allowed = frozenset(keys)

    class _Keys:
        # pyzmq's credentials provider: asked per connection, with the client's key.
        def callback(self, _domain: str, key: bytes) -> bool:
            if key in allowed:
                return True
            if on_refused is not None:
                on_refused(key)
            return False

    class _Named(AsyncioAuthenticator):
        # Asked once per connection, after the key was admitted.
        def curve_user_id(self, client_public_key: bytes) -> str:
            return keys[zmq.utils.z85.encode(client_public_key)]

    auth = _Named(ctx) if names else AsyncioAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain, credentials_provider=_Keys())
    return auth


def user_id(frame: zmq.Frame) -> bytes | None:
    """The authenticated client key of a received message (Z85), None without CURVE."""
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    if not value:
        return None
    return value.encode("ascii") if isinstance(value, str) else bytes(value)
