"""TLS and mutual TLS for servers and channels, from PEM files named in config.

Server side (``ServerOptions``): ``tls_cert`` + ``tls_key`` turn TLS on; ``tls_client_ca`` also requires
every caller to present a certificate signed by that CA (mutual TLS). Client side (gateway → stages,
``gateway.client``): ``ca`` verifies the server; ``cert`` + ``key`` are the client's own certificate for
mutual TLS. Empty paths mean plaintext, which is only sensible on loopback (the default bind).
"""
from __future__ import annotations

from pathlib import Path

import grpc
import grpc.aio


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


# --- least privilege: which client identities may call a server (ServerOptions.tls_allowed_clients) ---

# auth_context keys of the verified client certificate, by the type prefix of an allow-list entry. An entry with no
# (known) prefix matches any subjectAltName value (DNS name, URI, IP address, e-mail).
_IDENTITY_KEYS = {"DNS": "peer_dns", "URI": "peer_uri", "IP": "x509_subject_alternative_name",
                  "CN": "x509_common_name"}
_ANY_SAN = "x509_subject_alternative_name"
# health checks answer anyone the CA admitted: the launcher's readiness checks and client-side health checking
# use them, and they tell nothing about users (kubelet probes use the plaintext server.health_port anyway)
EXEMPT_PREFIX = "/grpc.health.v1.Health/"


def parse_allowed_clients(entries) -> list[tuple[str, str]]:
    """``["DNS:gateway", "CN:gw", "spiffe://recsys/gateway"]`` → ``[(auth_context key, value)]``; raises
    ``TLSConfigError`` naming ``server.tls_allowed_clients`` for an empty entry."""
    parsed = []
    for entry in entries:
        entry = str(entry).strip()
        kind, sep, value = entry.partition(":")
        key = _IDENTITY_KEYS.get(kind.upper()) if sep else None
        if key is None:
            key, value = _ANY_SAN, entry
        if not value.strip():
            raise TLSConfigError(f"server.tls_allowed_clients: empty identity in {entry!r} "
                                 f"(use DNS:name, URI:uri, IP:address, CN:common-name or a bare SAN value)")
        parsed.append((key, value.strip()))
    return parsed


def _values(auth: dict, key: str) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in auth.get(key, ())]


def describe_identity(auth: dict) -> str:
    """The caller's certificate identity for messages: its subjectAltNames and common name."""
    parts = [f"DNS:{v}" for v in _values(auth, "peer_dns")] + [f"URI:{v}" for v in _values(auth, "peer_uri")]
    typed = {p.partition(":")[2] for p in parts}
    parts += [f"SAN:{v}" for v in _values(auth, _ANY_SAN) if v not in typed]
    parts += [f"CN:{v}" for v in _values(auth, "x509_common_name")]
    if not parts:
        return "(no client certificate)"
    return ", ".join(parts)[:300]


class ClientAllowList:
    """Whether a call's verified client certificate carries one of the allowed identities."""

    def __init__(self, entries, component: str = "server"):
        self.entries = parse_allowed_clients(entries)
        self.component = component

    def allows(self, auth: dict) -> bool:
        for key, value in self.entries:
            if value in _values(auth, key):
                return True
        return False

    def refusal(self, auth: dict) -> str:
        return (f"client certificate {describe_identity(auth)} may not call the {self.component} server: "
                f"it is not on server.tls_allowed_clients")


def _copy_flags(inner, outer):
    for flag in ("experimental_non_blocking", "experimental_thread_pool"):
        if hasattr(inner, flag):
            setattr(outer, flag, getattr(inner, flag))
    return outer


def _rebuild(handler, wrap):
    """``handler`` with its behaviour wrapped by ``wrap`` (same streaming kind, same (de)serializers)."""
    for attr, make in (("unary_unary", grpc.unary_unary_rpc_method_handler),
                       ("unary_stream", grpc.unary_stream_rpc_method_handler),
                       ("stream_unary", grpc.stream_unary_rpc_method_handler),
                       ("stream_stream", grpc.stream_stream_rpc_method_handler)):
        behavior = getattr(handler, attr)
        if behavior is not None:
            return make(_copy_flags(behavior, wrap(behavior)), request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return handler


class AllowedClientsInterceptor(grpc.ServerInterceptor):
    """Refuse, with PERMISSION_DENIED naming the identity, every call (health checks excepted) whose client
    certificate is not on the allow-list. gRPC Python has no per-connection hook, so the check runs per call: one
    ``auth_context()`` (about 8 µs) and a few string comparisons."""

    def __init__(self, allow: ClientAllowList):
        self.allow = allow

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIX):
            return handler
        allow = self.allow

        def wrap(behavior):
            def checked(request, context):
                auth = context.auth_context()
                if not allow.allows(auth):
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, allow.refusal(auth))
                return behavior(request, context)
            return checked

        return _rebuild(handler, wrap)


class AioAllowedClientsInterceptor(grpc.aio.ServerInterceptor):
    """``AllowedClientsInterceptor`` for ``grpc.aio`` servers."""

    def __init__(self, allow: ClientAllowList):
        self.allow = allow

    async def intercept_service(self, continuation, handler_call_details):
        import inspect

        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIX):
            return handler
        allow = self.allow

        def wrap(behavior):
            if inspect.isasyncgenfunction(behavior):
                async def checked_stream(request, context):
                    auth = context.auth_context()
                    if not allow.allows(auth):
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED, allow.refusal(auth))
                    async for reply in behavior(request, context):
                        yield reply
                return checked_stream

            async def checked(request, context):
                auth = context.auth_context()
                if not allow.allows(auth):
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, allow.refusal(auth))
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            return checked

        return _rebuild(handler, wrap)


def certificate_identities(cert: str, key: str = "cert") -> list[str]:
    """The allow-list entries naming the certificate at ``cert``: its subjectAltNames (``DNS:``, ``URI:``,
    ``IP:``; others bare), or ``CN:<common name>`` when it has none."""
    import ssl

    _read(cert, key)
    try:
        decoded = ssl._ssl._test_decode_cert(cert)  # the stdlib's own X.509 decoder (no extra dependency)
    except (AttributeError, ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"{key}: cannot decode {cert}: {exc}") from None
    prefixes = {"DNS": "DNS:", "URI": "URI:", "IP Address": "IP:"}
    names = [prefixes.get(kind, "") + value for kind, value in decoded.get("subjectAltName", ())]
    if names:
        return names
    return [f"CN:{value}" for rdn in decoded.get("subject", ()) for name, value in rdn if name == "commonName"]
