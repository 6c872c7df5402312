"""Gateway core, TLS to upstreams: scheme https, verification against a CA, SNI, mutual TLS, checks."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mezzo.testing.fixtures import wait_for

from . import core_fixtures
from .core_fixtures import GatewayNode, Origin, RawClient, get, route, upstream

gw = core_fixtures.gw  # fixture


class Pki:
    """A CA and what it signs."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = self._build(self.name, self.key.public_key(), [], ca=True)

    def _build(self, subject: x509.Name, public: Any, sans: list[x509.GeneralName], ca: bool) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name).public_key(public)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, cn: str, sans: list[x509.GeneralName]) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), key.public_key(), sans, ca=False)
        return (cert.public_bytes(serialization.Encoding.PEM).decode(),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode())


class TlsOrigin(Origin):
    """An Origin served over TLS with ``pair``; ``client_ca``: it requires a client certificate from that CA."""

    def __init__(self, name: str, pair: tuple[str, str], client_ca: str | None = None) -> None:
        super().__init__(name)
        self.dir = tempfile.mkdtemp(prefix="mezzo-tls-origin-")
        Path(self.dir, "cert.pem").write_text(pair[0])
        Path(self.dir, "key.pem").write_text(pair[1])
        if client_ca is not None:
            Path(self.dir, "ca.pem").write_text(client_ca)
        self.mutual = client_ca is not None

    async def start(self) -> None:
        original = uvicorn.Config

        def config(app: Any, **kwargs: Any) -> uvicorn.Config:
            return original(app, **kwargs, ssl_certfile=f"{self.dir}/cert.pem", ssl_keyfile=f"{self.dir}/key.pem",
                            **({"ssl_ca_certs": f"{self.dir}/ca.pem", "ssl_cert_reqs": ssl.CERT_REQUIRED}
                               if self.mutual else {}))

        uvicorn.Config = config  # type: ignore[misc]  # Origin.start builds its Config: the same one, over TLS
        try:
            await super().start()
        finally:
            uvicorn.Config = original  # type: ignore[misc]


@pytest.fixture
async def tls_origins() -> AsyncIterator[Callable[..., Any]]:
    made: list[TlsOrigin] = []

    async def make(pair: tuple[str, str], client_ca: str | None = None) -> TlsOrigin:
        origin = TlsOrigin(chr(97 + len(made)), pair, client_ca)
        await origin.start()
        made.append(origin)
        return origin

    try:
        yield make
    finally:
        for origin in made:
            await origin.stop()


async def fetch(gw: GatewayNode, path: str = "/x") -> tuple[int, bytes]:
    client = await RawClient.connect(gw.port)
    try:
        await client.send(get(path))
        response = await client.response()
        return response.status, response.body
    finally:
        client.close()


IP = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


async def test_https_upstream_verified_against_its_ca_with_sni(gw: GatewayNode, tls_origins) -> None:
    ca = Pki("test ca")
    a = await tls_origins(ca.issue("a", IP))
    await gw.apply(upstream("up", a, scheme="https", tls={"ca": ca.pem}), route("r", ["/*"]))
    status, body = await fetch(gw)
    assert status == 200 and b'"node":"a"' in body
    status, body = await fetch(gw)  # the pooled TLS connection again
    assert status == 200 and len(set(a.client_ports)) == 1

    # the system's CAs do not know this one: 502, as a connect failure, and nothing reaches the node
    await gw.apply(upstream("up", a, scheme="https"))
    before = a.requests
    assert (await fetch(gw))[0] == 502
    assert a.requests == before
    # verify off (APISIX's default) takes any certificate
    await gw.apply(upstream("up", a, scheme="https", tls={"verify": False}))
    assert (await fetch(gw))[0] == 200

    # a certificate for a name only: the node's IP does not match it; the sni does
    b = await tls_origins(ca.issue("b", [x509.DNSName("api.internal")]))
    await gw.apply(upstream("up", b, scheme="https", tls={"ca": ca.pem}))
    assert (await fetch(gw))[0] == 502
    await gw.apply(upstream("up", b, scheme="https", tls={"ca": ca.pem, "sni": "api.internal"}))
    status, body = await fetch(gw)
    assert status == 200 and b'"node":"b"' in body
    # passHost rewrite: upstreamHost is also the name sent and checked
    await gw.apply(upstream("up", b, scheme="https", tls={"ca": ca.pem}, passHost="rewrite",
                            upstreamHost="api.internal"))
    status, body = await fetch(gw)
    assert status == 200 and b'"host":"api.internal"' in body


async def test_mutual_tls_with_a_client_certificate(gw: GatewayNode, tls_origins) -> None:
    ca, clients = Pki("server ca"), Pki("client ca")
    a = await tls_origins(ca.issue("a", IP), client_ca=clients.pem)
    await gw.apply(upstream("up", a, scheme="https", tls={"ca": ca.pem}), route("r", ["/*"]))
    assert (await fetch(gw))[0] == 502  # no client certificate: the node refuses the handshake
    cert, key = clients.issue("gateway", [])
    await gw.apply({"kind": "Certificate", "metadata": {"name": "to-origins"},
                    "spec": {"type": "client", "cert": cert, "key": key}},
                   upstream("up", a, scheme="https", tls={"ca": ca.pem, "clientCertificate": "to-origins"}))
    status, body = await fetch(gw)
    assert status == 200 and b'"node":"a"' in body
    # a client certificate is not served on the TLS listener: it has no names
    assert gw.gateway.items["Certificate"]["default/to-origins"][2].snis == []

    # a missing client certificate leaves the upstream out of service, named in the log's reason
    await gw.apply(upstream("up", a, scheme="https", tls={"ca": ca.pem, "clientCertificate": "nope"}))
    assert "tls.clientCertificate" in gw.gateway.broken["Upstream/default/up"]
    assert (await fetch(gw))[0] == 502


async def test_active_checks_of_an_https_upstream_go_over_tls(gw: GatewayNode, tls_origins) -> None:
    ca = Pki("test ca")
    a = await tls_origins(ca.issue("a", IP))
    check = {"active": {"path": "/health", "interval": 0.1, "timeout": 1, "successes": 1, "failures": 1}}
    await gw.apply(upstream("up", a, scheme="https", tls={"ca": ca.pem}, healthCheck=check), route("r", ["/*"]))
    await wait_for(lambda: a.requests >= 3)  # probes answered: they came over TLS
    assert (await fetch(gw))[0] == 200
    a.healthy = False
    node = gw.gateway.snapshot.upstreams["default/up"].nodes[0]
    await wait_for(lambda: node.probe_down)
    a.healthy = True
    await wait_for(lambda: not node.probe_down)


async def test_bad_tls_settings_are_refused_naming_the_field(gw: GatewayNode) -> None:
    headers = {"Authorization": f"Bearer {gw.running.token}", "Content-Type": "application/yaml"}
    base = "apiVersion: mezzo.dev/v1\nkind: Upstream\nmetadata: {name: up}\nspec:\n  nodes: [{host: a, port: 1}]\n"
    cases = [(base + "  tls: {verify: false}\n", "scheme https"),
             (base + "  scheme: https\n  tls: {ca: not a pem}\n", "not PEM"),
             (base + "  scheme: ftp\n", "scheme"),
             ("apiVersion: mezzo.dev/v1\nkind: Certificate\nmetadata: {name: c}\nspec: {cert: x, key: y}\n",
              "at least one name")]
    async with httpx.AsyncClient(base_url=gw.running.url, headers=headers) as http:
        for doc, reason in cases:
            answer = await http.post("/v1/resources:apply", content=doc)
            assert answer.status_code == 400, doc
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert reason in answer.text, answer.text
