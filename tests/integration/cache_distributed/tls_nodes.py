"""Test doubles for TLS and AUTH to cache nodes: certificates made here, a TLS-terminating proxy in
front of a plain Redis, and a small RESP server that insists on ``AUTH user password``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import hiredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA bundle a client trusts (ssl_ca_certs)
    server_cert: Path  # for 127.0.0.1 only: "localhost" does not match it
    server_key: Path
    client_cert: Path  # a client certificate from the same CA (ssl_certfile / ssl_keyfile)
    client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _issue(common: str, key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey,
           issuer: x509.Name, *, ca: bool, usage: list[x509.ObjectIdentifier] | None = None,
           ip: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def make_certs(directory: Path) -> Certs:
    """A CA of this test, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("mezzo test CA", ca_key, ca_key, _name("mezzo test CA"), ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = _issue("127.0.0.1", server_key, ca_key, ca_cert.subject, ca=False,
                    usage=[ExtendedKeyUsageOID.SERVER_AUTH], ip="127.0.0.1")
    client = _issue("mezzo test client", client_key, ca_key, ca_cert.subject, ca=False,
                    usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / "server.pem").write_bytes(server.public_bytes(pem))
    (directory / "client.pem").write_bytes(client.public_bytes(pem))
    return Certs(directory / "ca.pem", directory / "server.pem", _write_key(server_key, directory / "server.key"),
                 directory / "client.pem", _write_key(client_key, directory / "client.key"))


@dataclass
class TLSProxy:
    """Terminates TLS on 127.0.0.1 and forwards the bytes to a plain server on ``upstream``."""

    certs: Certs
    upstream: int
    require_client_cert: bool = False
    handshakes: int = 0  # connections whose TLS handshake succeeded
    client_certs: list[dict[str, object]] = field(default_factory=list)
    server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, port: int = 0) -> TLSProxy:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certs.server_cert, self.certs.server_key)
        if self.require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=self.certs.ca)
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=context)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        peer = writer.get_extra_info("peercert")
        if peer:
            self.client_certs.append(peer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            self._tasks.discard(task)
            for w in (writer, up_writer):
                w.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
        writer.close()


@dataclass
class AuthNode:
    """A RESP2 server holding a dict: every command but ``AUTH`` answers ``NOAUTH`` until the
    connection sent ``AUTH [user] password`` with the right credentials. Records each ``AUTH``."""

    password: str
    user: str | None = None
    auths: list[tuple[bytes, ...]] = field(default_factory=list)
    connections: int = 0
    data: dict[bytes, bytes] = field(default_factory=dict)
    server: asyncio.Server | None = None

    async def start(self) -> AuthNode:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def credentials(self) -> tuple[bytes, ...]:
        secret = self.password.encode()
        return (secret,) if self.user is None else (self.user.encode(), secret)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        parser, authenticated = hiredis.Reader(), False
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    name = command[0].upper()
                    if name == b"AUTH":
                        self.auths.append(tuple(command[1:]))
                        authenticated = tuple(command[1:]) == self.credentials
                        writer.write(b"+OK\r\n" if authenticated
                                     else b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
                    elif not authenticated:
                        writer.write(b"-NOAUTH Authentication required.\r\n")
                    else:
                        writer.write(self._answer(name, command[1:]))
                await writer.drain()
        writer.close()

    def _answer(self, name: bytes, args: list[bytes]) -> bytes:
        if name == b"PING":
            return b"+PONG\r\n"
        if name == b"SET":
            self.data[args[0]] = args[1]
            return b"+OK\r\n"
        if name == b"GET":
            value = self.data.get(args[0])
            return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)
        return b"-ERR unknown command '%s'\r\n" % name

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
