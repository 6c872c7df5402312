"""TLS termination (certificates from Certificate resources, chosen per connection by SNI) and TLS to
upstream nodes (``scheme: https``)."""

from __future__ import annotations

import os
import ssl
import tempfile
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def check_pair(cert_pem: str, key_pem: str) -> None:
    """Raise ValueError unless the PEMs parse and the key belongs to the (first) certificate."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as exc:
        raise ValueError(f"cert is not a PEM certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"key is not an unencrypted PEM private key: {exc}") from None
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.PEM, fmt) != \
            key.public_key().public_bytes(serialization.Encoding.PEM, fmt):
        raise ValueError("key does not match the certificate")


def check_ca(pem: str) -> None:
    """Raise ValueError unless ``pem`` is one or more PEM certificates (what ``tls.ca`` takes)."""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise ValueError("not PEM certificates (-----BEGIN CERTIFICATE-----)")
    try:
        x509.load_pem_x509_certificates(pem.encode())
        ssl.create_default_context(cadata=pem)
    except (ValueError, ssl.SSLError) as exc:
        raise ValueError(f"not PEM certificates: {exc}") from None


def _load_pair(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    fd, path = tempfile.mkstemp(suffix=".pem")  # the ssl module loads a key from a file only
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(cert_pem.strip() + "\n" + key_pem.strip() + "\n")
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)


def context_for(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    _load_pair(ctx, cert_pem, key_pem)
    return ctx


def upstream_context(verify: bool, ca: str | None, client: tuple[str, str] | None) -> ssl.SSLContext:
    """The client side of TLS to upstream nodes: TLS 1.2 or later, HTTP/1.1 by ALPN; the chain and
    the name checked against ``ca`` (else the system's CAs) unless ``verify`` is off; ``client``: the
    (certificate, key) PEMs presented for mutual TLS."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca if verify else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client is not None:
        _load_pair(ctx, *client)
    return ctx


class CertStore:
    """Server names to SSL contexts; the listening context switches to the right one by SNI.

    As APISIX does, a name that no certificate covers (or a client that sends no SNI) fails the
    handshake with ``unrecognized_name``: the gateway never presents a certificate for another name.
    A wildcard ``*.example.com`` covers one label: ``a.example.com``, not ``a.b.example.com``.
    """

    def __init__(self) -> None:
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}
        self._contexts: dict[tuple[str, str], ssl.SSLContext] = {}  # by (cert, key): reloads reuse them
        self.server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.minimum_version = ssl.TLSVersion.TLSv1_2
        self.server.set_alpn_protocols(["http/1.1"])
        self.server.sni_callback = self._pick

    def load(self, items: dict[str, tuple[str, str, Any]]) -> None:
        """Take the current Certificate resources (ref -> (namespace, name, spec)); swap in one step."""
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        contexts: dict[tuple[str, str], ssl.SSLContext] = {}
        for _, (_, _, spec) in sorted(items.items()):
            if spec.type == "client":
                continue  # presented to upstreams only, never served
            pair = (spec.cert, spec.key)
            ctx = contexts.get(pair) or self._contexts.get(pair) or context_for(*pair)
            contexts[pair] = ctx
            for sni in spec.snis:
                if sni.startswith("*."):
                    wildcard.setdefault(sni[1:].lower(), ctx)
                else:
                    exact.setdefault(sni.lower(), ctx)
        self.exact, self.wildcard, self._contexts = exact, wildcard, contexts

    def lookup(self, name: str | None) -> ssl.SSLContext | None:
        if not name:
            return None
        name = name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is None:
            dot = name.find(".")
            if dot > 0:
                found = self.wildcard.get(name[dot:])
        return found

    def _pick(self, sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
        ctx = self.lookup(name)
        if ctx is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sock.context = ctx
        return None
