"""TLS termination: certificates from Certificate resources, chosen per connection by SNI."""

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


def context_for(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(cert_pem.strip() + "\n" + key_pem.strip() + "\n")
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
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
