"""TLS and mutual TLS for servers and channels, from PEM files named in config.

Server side (``ServerOptions``): ``tls_cert`` + ``tls_key`` turn TLS on; ``tls_client_ca`` also requires
every caller to present a certificate signed by that CA (mutual TLS). Client side (gateway → stages,
``gateway.client``): ``ca`` verifies the server; ``cert`` + ``key`` are the client's own certificate for
mutual TLS. Empty paths mean plaintext, which is only sensible on loopback (the default bind).
"""
from __future__ import annotations

from pathlib import Path

import grpc


class TLSConfigError(ValueError):
    """A TLS setting is incomplete or a file cannot be read; the message names the key."""


def _read(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None


def check_pair(cert: str, key: str, prefix: str, ca_key: str | None = None, ca: str = "") -> None:
    """Both of ``cert`` / ``key`` or neither; files readable. Raises ``TLSConfigError`` naming the key."""
    if bool(cert) != bool(key):
        raise TLSConfigError(f"{prefix}tls_cert and {prefix}tls_key must be set together")
    if cert:
        _read(cert, f"{prefix}tls_cert")
        _read(key, f"{prefix}tls_key")
    if ca:
        _read(ca, ca_key or f"{prefix}tls_ca")


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """TLS server credentials; with ``client_ca`` callers must present a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(_read(key, "tls_key"), _read(cert, "tls_cert"))],
        root_certificates=_read(client_ca, "tls_client_ca") if client_ca else None,
        require_client_auth=bool(client_ca))


def channel_credentials(ca: str = "", cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    """TLS channel credentials: ``ca`` verifies the server (empty: system roots); ``cert``/``key`` for mTLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "tls_ca") if ca else None,
        private_key=_read(key, "tls_key") if key else None,
        certificate_chain=_read(cert, "tls_cert") if cert else None)


def open_channel(addr: str, options: list[tuple[str, int]], ca: str = "", cert: str = "",
                 key: str = "") -> grpc.Channel:
    """A secure channel when any TLS path is given, else a plaintext one."""
    if ca or cert or key:
        return grpc.secure_channel(addr, channel_credentials(ca, cert, key), options=options)
    return grpc.insecure_channel(addr, options=options)


def add_port(server: grpc.Server, address: str, cert: str = "", key: str = "", client_ca: str = "") -> int:
    """Bind ``address`` with TLS when ``cert`` is given, plaintext otherwise; return the bound port."""
    if cert:
        return server.add_secure_port(address, server_credentials(cert, key, client_ca))
    return server.add_insecure_port(address)


def aio_channel(addr: str, options: list[tuple[str, int]], ca: str = "", cert: str = "", key: str = ""):
    """``open_channel`` for ``grpc.aio`` (call inside the event loop that will use it)."""
    import grpc.aio

    if ca or cert or key:
        return grpc.aio.secure_channel(addr, channel_credentials(ca, cert, key), options=options)
    return grpc.aio.insecure_channel(addr, options=options)
