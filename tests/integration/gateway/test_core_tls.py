"""Gateway core, TLS termination: certificates from Certificate resources, chosen by SNI, changed live."""

from __future__ import annotations

import asyncio
import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mezzo.testing.fixtures import wait_for

from . import core_fixtures
from .core_fixtures import GatewayNode, RawClient, get, route, upstream

gw, origins = core_fixtures.gw, core_fixtures.origins  # fixtures


def self_signed(*names: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def certificate(name: str, pem: tuple[str, str], *snis: str) -> dict:
    return {"kind": "Certificate", "metadata": {"name": name}, "spec": {"snis": list(snis), "cert": pem[0], "key": pem[1]}}


async def fetch(gw: GatewayNode, sni: str | None, trust: list[str], path: str = "/x") -> tuple[str, bytes]:
    """Connect with ``sni``, verify against ``trust``; the served certificate's CN and the response body."""
    ctx = ssl.create_default_context(cadata="".join(trust))
    ctx.check_hostname = sni is not None
    port = int(gw.running.node.url("gateway-tls").rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni or "")
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        cn = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        client = RawClient(reader, writer)
        await client.send(get(path, host=sni or "ip"))
        response = await client.response()
        return str(cn), response.body
    finally:
        writer.close()


async def test_tls_by_sni_and_live_changes(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    one, two, wild = self_signed("one.test"), self_signed("two.test"), self_signed("*.wild.test")
    trust = [one[0], two[0], wild[0]]
    await gw.apply(upstream("up", a), route("r", ["/*"]),
                   certificate("one", one, "one.test"), certificate("two", two, "two.test"),
                   certificate("wild", wild, "*.wild.test"))
    cn, body = await fetch(gw, "one.test", trust)
    assert cn == "one.test" and b'"x-forwarded-proto":"https"' in body
    assert (await fetch(gw, "two.test", trust))[0] == "two.test"
    assert (await fetch(gw, "api.wild.test", trust))[0] == "*.wild.test"
    for unknown in ("a.b.wild.test", "three.test", None):  # a wildcard covers one label; no SNI, no certificate
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await fetch(gw, unknown, trust)

    # a new certificate for one.test is served from the next handshake on
    renewed = self_signed("one.test")
    await gw.apply(certificate("one", renewed, "one.test"))
    await wait_for(lambda: gw.gateway._certificates_changed is False)
    assert (await fetch(gw, "one.test", [renewed[0]]))[0] == "one.test"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await fetch(gw, "one.test", [one[0]])  # the old one is gone
    await gw.delete("Certificate", "two")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await fetch(gw, "two.test", trust)


async def test_certificate_resources_are_validated(gw: GatewayNode) -> None:
    from mezzo.resources.manifests import ManifestError

    one, two = self_signed("one.test"), self_signed("two.test")
    with pytest.raises(ManifestError, match="key does not match"):
        await gw.apply(certificate("bad", (one[0], two[1]), "one.test"))
    with pytest.raises(ManifestError, match="PEM"):
        await gw.apply(certificate("bad", ("junk", one[1]), "one.test"))
