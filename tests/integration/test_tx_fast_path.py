"""``POST /v1/tx/transactions`` answered in front of FastAPI (transactions.api.FastCreate) answers exactly as
the FastAPI route does: the same requests — valid, invalid in many ways, unauthenticated, not allowed, scoped —
go to the node's API app with the fast path and to one without it (MEZZO_TX_FAST_PATH off), and their status,
headers, body, metrics and raised errors are compared. Successes create a transaction on each side, so their
gid (when generated), times and generated trace context are set aside before comparing bytes."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pydantic_core
import pytest

from mezzo.node.api import build_app
from mezzo.node.auth import Role, TokenService
from mezzo.testing.fixtures import RunningNode, start_node
from mezzo.transactions.api import FastCreate
from mezzo.transactions.service import TxService
from mezzo.transactions.testing import Busi, serve_busi

PATH = "/v1/tx/transactions"
JSON = [(b"content-type", b"application/json")]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
Side = str  # "fast" or "slow"


@dataclass
class Answer:
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    raised: str | None = None
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


@dataclass
class Apps:
    node: RunningNode
    fast: Any
    slow: Any
    fell_through: list[str]  # paths of requests FastCreate handed on to FastAPI
    tokens: dict[str, str]
    busi: Busi


@pytest.fixture
async def apps(tmp_path: Path) -> AsyncIterator[Apps]:
    running = await start_node(tmp_path / "data", targets=["transactions", "api"])
    try:
        module = running.node.modules["transactions"]
        fast = build_app(running.node)
        module.fast_path = False
        slow = build_app(running.node)
        module.fast_path = True
        assert isinstance(fast.app, FastCreate) and not isinstance(slow.app, FastCreate)
        fell_through: list[str] = []
        fastapi_app = fast.app.app

        async def counting(scope: Any, receive: Any, send: Any) -> None:
            fell_through.append(scope["path"])
            await fastapi_app(scope, receive, send)

        fast.app.app = counting
        service: TokenService = running.node.service(TokenService)
        tokens = {"admin": running.token}
        for name, role, namespaces in (("dev-a", Role.DEVELOPER, ["team-a"]), ("viewer", Role.VIEWER, ["*"]),
                                       ("dev", Role.DEVELOPER, ["*"])):
            _, tokens[name] = await service.create(name, role, namespaces, None, "test")
        record, tokens["revoked"] = await service.create("gone", Role.DEVELOPER, ["*"], None, "test")
        await service.revoke(record.id, "test")
        async with serve_busi() as busi:
            yield Apps(running, fast, slow, fell_through, tokens, busi)
    finally:
        await running.node.stop()


def metrics_of(node: RunningNode) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from mezzo.telemetry.metrics import Metrics

    out = {}
    for family in node.node.service(Metrics).registry.collect():
        if family.name in ("mezzo_api_requests", "mezzo_api_request_duration_seconds", "mezzo_auth_failures"):
            for sample in family.samples:
                if sample.name.endswith(("_total", "_count")):
                    out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def call(app: Any, node: RunningNode, headers: list[tuple[bytes, bytes]], chunks: list[bytes], *,
               query: bytes = b"", disconnect: bool = False) -> Answer:
    """One request straight into the ASGI app, with every message of the answer and what it raised."""
    incoming: list[dict[str, Any]] = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                                      for i, c in enumerate(chunks)]
    if disconnect:
        incoming[-1]["more_body"] = True
        incoming.append({"type": "http.disconnect"})
    answered = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await answered.wait()
        return {"type": "http.disconnect"}

    answer = Answer()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status, answer.headers = message["status"], list(message["headers"])
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")
            if not message.get("more_body", False):
                answered.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": PATH, "raw_path": PATH.encode(), "query_string": query,
             "root_path": "", "headers": [(b"host", b"127.0.0.1:7777"), *headers],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 7777)}
    before = metrics_of(node)
    try:
        await app(scope, receive, send)
    except Exception as exc:
        answer.raised = f"{type(exc).__name__}: {exc}"
    after = metrics_of(node)
    answer.metrics = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    return answer


_TIMES = re.compile(rb'"(created|updated|finished)":(-?[0-9.eE+-]+)')
_GID = re.compile(rb'"gid":"[0-9a-f]{32}"')
_TRACEPARENT = re.compile(rb'"traceparent":"00-[0-9a-f]{32}-[0-9a-f]{16}-01"')


def normalized(answer: Answer, side: Side, *, new_trace: bool) -> tuple[Any, ...]:
    """What must be equal on both sides: all of it but the times, the side's own gid and a generated trace;
    the content-length (whose digits of the times vary) must be the body's."""
    body = _GID.sub(b'"gid":"GID"', _TIMES.sub(rb'"\1":0', answer.body.replace(side.encode(), b"SIDE")))
    if new_trace:
        body = _TRACEPARENT.sub(b'"traceparent":"NEW"', body)
    headers = [(k, v) for k, v in answer.headers if k != b"content-length"]
    lengths = [v for k, v in answer.headers if k == b"content-length"]
    assert lengths == [str(len(answer.body)).encode()], answer.headers
    return answer.status, headers, body, answer.raised, answer.metrics


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


@dataclass
class Case:
    name: str
    body: Callable[[str, Busi], bytes | list[bytes]]  # of the case's gid on the side
    headers: Callable[[dict[str, str]], list[tuple[bytes, bytes]]] = lambda t: [*bearer(t["admin"]), *JSON]
    status: int = 201
    fast: bool = True  # answered by FastCreate itself
    new_trace: bool = True
    query: bytes = b""
    disconnect: bool = False
    exact: bool = False  # compare the bytes as they are: both sides answer the same stored transaction


def saga(gid: str, busi: Busi, **extra: Any) -> bytes:
    body = {"gid": gid, "mode": "saga", "steps": [{"action": f"{busi.url}/a", "compensate": f"{busi.url}/b"}],
            "payloads": [{"amount": 30}], "options": {"wait_result": True, "retry_interval": 0.05}, **extra}
    return orjson.dumps(body)


def raw(text: bytes) -> Callable[[str, Busi], bytes]:
    return lambda side, busi: text


def admin(*extra: tuple[bytes, bytes]) -> Callable[[dict[str, str]], list[tuple[bytes, bytes]]]:
    return lambda t: [*bearer(t["admin"]), *extra]


CASES = [
    Case("saga waiting for its result", lambda s, b: saga(s, b)),
    Case("saga answered at once", lambda s, b: saga(s, b, options={"retry_interval": 1e-05, "request_timeout": 1e3})),
    Case("generated gid", lambda s, b: orjson.dumps({"mode": "saga", "steps": [{"action": f"{b.url}/a"}]})),
    Case("body in chunks", lambda s, b: [saga(s, b)[:9], saga(s, b)[9:], b""]),
    Case("charset and odd case", lambda s, b: saga(s, b),
         headers=admin((b"content-type", b"Application/JSON ; charset=utf-8"))),
    Case("+json media type (FastAPI's)", lambda s, b: saga(s, b), fast=False,
         headers=admin((b"content-type", b"application/vnd.api+json"))),
    Case("dapr token", lambda s, b: saga(s, b), headers=lambda t: [(b"dapr-api-token", t["admin"].encode()), *JSON]),
    Case("query parameters are ignored", lambda s, b: saga(s, b), query=b"wait_result=false&x=1"),
    Case("W3C trace context", lambda s, b: saga(s, b), new_trace=False,
         headers=admin(*JSON, (b"traceparent", f"00-{TRACE}-00f067aa0ba902b7-01".encode()))),
    Case("B3 trace context", lambda s, b: saga(s, b), new_trace=False,
         headers=admin(*JSON, (b"b3", f"{TRACE}-00f067aa0ba902b7-1".encode()))),
    Case("B3 headers", lambda s, b: saga(s, b), new_trace=False,
         headers=admin(*JSON, (b"x-b3-traceid", TRACE.encode()), (b"x-b3-spanid", b"00f067aa0ba902b7"))),
    Case("invalid trace context kept as sent", lambda s, b: saga(s, b), new_trace=False,
         headers=admin(*JSON, (b"traceparent", b"00-nonsense"))),
    Case("scoped token in its namespace", lambda s, b: saga(s, b, namespace="team-a"),
         headers=lambda t: [*bearer(t["dev-a"]), *JSON]),
    Case("prepared TCC", lambda s, b: orjson.dumps({"gid": s, "mode": "tcc", "prepare": True})),
    Case("infinite timeout, no steps", raw(b'{"mode":"saga","options":{"request_timeout":1e999,"wait_result":true}}')),
    Case("big integer option (the log keeps 64 bits: refused, naming it)",
         raw(b'{"mode":"saga","options":{"retry_limit":123456789012345678901234567890}}'), status=400, fast=False,
         exact=True),
    Case("big integer payload (refused, naming it)", raw(b'{"mode":"saga","payloads":[123456789012345678901234567890],'
                                                         b'"steps":[{"action":"http://127.0.0.1:9/a"}]}'),
         status=400, fast=False, exact=True),
    # refused before the transaction: no side effects, compared byte for byte
    Case("no token", lambda s, b: saga(s, b), headers=lambda t: JSON, status=401, exact=True),
    Case("revoked token", lambda s, b: saga(s, b), headers=lambda t: [*bearer(t["revoked"]), *JSON],
         status=401, exact=True),
    Case("basic auth", lambda s, b: saga(s, b), headers=lambda t: [(b"authorization", b"Basic eDp5"), *JSON],
         status=401, exact=True),
    Case("scoped token elsewhere", lambda s, b: saga(s, b), headers=lambda t: [*bearer(t["dev-a"]), *JSON],
         status=403, exact=True),
    Case("viewer", lambda s, b: saga(s, b), headers=lambda t: [*bearer(t["viewer"]), *JSON], status=403, exact=True),
    Case("bad JSON", raw(b'{"mode": "saga",'), status=400, fast=False, exact=True),
    Case("bad JSON, no token", raw(b'{"mode": "saga",'), headers=lambda t: JSON, status=400, fast=False, exact=True),
    Case("invalid body, no token", raw(b'{"mode": "nope"}'), headers=lambda t: JSON, status=401, exact=True),
    Case("invalid mode", raw(b'{"mode": "nope"}'), status=400, fast=False, exact=True),
    Case("missing mode", raw(b'{"steps": []}'), status=400, fast=False, exact=True),
    Case("unknown field", raw(b'{"mode": "saga", "wait_result": true}'), status=400, fast=False, exact=True),
    Case("steps not a list", raw(b'{"mode": "saga", "steps": {"action": "x"}}'), status=400, fast=False, exact=True),
    Case("negative interval", raw(b'{"mode":"saga","options":{"retry_interval":-1}}'), status=400, fast=False,
         exact=True),
    Case("NaN interval", raw(b'{"mode":"saga","options":{"retry_interval":NaN}}'), status=400, fast=False,
         exact=True),
    Case("too many steps", raw(orjson.dumps({"mode": "saga", "steps": [{"action": "http://h/a"}] * 1001})),
         status=400, fast=False, exact=True),
    Case("deep payload (FastAPI's; too deep for the log: refused, naming it)",
         raw(b'{"mode":"saga","payloads":' + b"[" * 300 + b"]" * 300 + b"}"), status=400, fast=False, exact=True),
    Case("JSON null", raw(b"null"), status=400, fast=False, exact=True),
    Case("empty body", raw(b""), status=400, fast=False, exact=True),
    Case("a list", raw(b"[]"), status=400, fast=False, exact=True),
    Case("byte order mark", raw(b'\xef\xbb\xbf{"mode": "nope"}'), status=400, fast=False, exact=True),
    Case("not UTF-8", raw(b'{"mode": "\xff"}'), status=400, fast=False, exact=True),
    Case("lone surrogate", raw(b'{"mode": "\\ud800"}'), status=400, fast=False, exact=True),
    Case("no content type", lambda s, b: saga(s, b), headers=admin(), status=400, fast=False, exact=True),
    Case("text/plain", lambda s, b: saga(s, b), headers=admin((b"content-type", b"text/plain")), status=400,
         fast=False, exact=True),
    Case("client gone mid-body", lambda s, b: saga(s, b), status=400, fast=False, exact=True, disconnect=True),
    Case("saga prepared", raw(b'{"mode":"saga","prepare":true}'), status=400, exact=True),
    Case("bad branch URL", raw(b'{"mode":"saga","steps":[{"action":"ftp://h/a"}]}'), status=400, exact=True),
    Case("payloads do not match steps", raw(b'{"mode":"saga","steps":[{"action":"http://h/a"}],"payloads":[1,2]}'),
         status=400, exact=True),
    Case("gid with a slash", raw(b'{"mode":"saga","gid":"a/b"}'), status=400, exact=True),
    Case("TCC submitted unprepared", raw(b'{"mode":"tcc","gid":"fp-tcc-new"}'), status=409, exact=True),
]


async def test_the_fast_path_answers_as_the_route_does(apps: Apps) -> None:
    fast_answered = []
    for index, case in enumerate(CASES):
        answers = {}
        for side, app in (("slow", apps.slow), ("fast", apps.fast)):
            body = case.body(f"fp{index}-{side}", apps.busi)
            chunks = body if isinstance(body, list) else [body]
            apps.fell_through.clear()
            answer = await call(app, apps.node, case.headers(apps.tokens), chunks, query=case.query,
                                disconnect=case.disconnect)
            assert answer.status == case.status, (case.name, side, answer.body)
            if side == "fast":
                assert (not apps.fell_through) is case.fast, case.name
                fast_answered.append(case.fast)
            answers[side] = answer
        if case.exact:
            assert answers["fast"] == answers["slow"], case.name
        else:
            assert normalized(answers["fast"], "fast", new_trace=case.new_trace) == \
                normalized(answers["slow"], "slow", new_trace=case.new_trace), case.name
    assert fast_answered.count(True) >= 20  # the comparison is not between two FastAPI answers


async def test_repeats_and_conflicts_answer_alike(apps: Apps) -> None:
    """Both sides answer about one transaction that exists: the bytes are the same."""
    first = await call(apps.slow, apps.node, [*bearer(apps.tokens["admin"]), *JSON], [saga("dup", apps.busi)])
    assert first.status == 201
    repeats = [saga("dup", apps.busi),  # the same submit again: the transaction as it is
               saga("dup", apps.busi, mode="msg"),  # another mode: 409
               saga("dup", apps.busi, namespace="team-a")]  # another namespace: not found there
    for body in repeats:
        fast = await call(apps.fast, apps.node, [*bearer(apps.tokens["admin"]), *JSON], [body])
        slow = await call(apps.slow, apps.node, [*bearer(apps.tokens["admin"]), *JSON], [body])
        assert fast.status in (201, 404, 409) and fast == slow, fast.body
    assert not apps.fell_through


@pytest.mark.parametrize("broken", [(TxService, "submit"), (TokenService, "authenticate")])
async def test_an_unexpected_error_is_a_500_raised_on(apps: Apps, monkeypatch: pytest.MonkeyPatch,
                                                      broken: tuple[type, str]) -> None:
    def fails(*args: Any) -> None:
        raise RuntimeError("the disk is on fire")

    async def fails_later(*args: Any) -> None:
        fails()

    kind, name = broken
    monkeypatch.setattr(kind, name, fails_later if name == "submit" else fails)
    headers = [*bearer(apps.tokens["admin"]), *JSON]
    fast = await call(apps.fast, apps.node, headers, [b'{"mode":"saga","gid":"fp-boom"}'])
    slow = await call(apps.slow, apps.node, headers, [b'{"mode":"saga","gid":"fp-boom"}'])
    assert fast.status == 500 and fast.raised == "RuntimeError: the disk is on fire"
    assert fast == slow
    assert not apps.fell_through


async def test_the_node_serves_it(apps: Apps) -> None:
    """Over the node's own socket (uvicorn) the fast path answers, labelled as the route."""
    import httpx

    async with httpx.AsyncClient(base_url=apps.node.url, headers={"Authorization": f"Bearer {apps.node.token}"},
                                 timeout=30) as http:
        created = await http.post(PATH, content=saga("served", apps.busi), headers={"Content-Type": "application/json"})
        assert created.status_code == 201 and created.json()["status"] == "succeed"
        assert created.headers["content-type"] == "application/json"
        assert (await http.post(PATH, json={"mode": "nope"})).json()["errors"][0]["field"] == "mode"
        metrics = (await http.get("/metrics")).text
    assert 'mezzo_api_requests_total{method="POST",route="/v1/tx/transactions",status="201"}' in metrics


JSON_SAMPLES = [b'"\\ud800"', b'"\xed\xa0\x80"', b"123456789012345678901234567890", b"-9223372036854775809",
                b"18446744073709551616", b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity", b"1.0e-400",
                b'"a\tb"', b"\xef\xbb\xbf{}", b'{"a":1,"a":2,"b":3}', b"\x0c{}", b"{}\x0b", b"[1,]", b"01", b"-0",
                b"-0.0", b'"\\u0000"', b"1E+2", b"2.5e-324", b"1.7976931348623157e309", b'"\xf4\x90\x80\x80"',
                b'"\\ud83d\\ude00"', b"9007199254740993", b"1.00000000000000011102230246251565404236316680908203125",
                b"123456789012345678901234567890.5", b"0.30000000000000004", b" \n\r\t[] ", b"{} x", b"[" * 250 +
                b"]" * 250, b'{"\\u0061":[true,false,null]}']


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize("sample", JSON_SAMPLES + [random.Random(n).randbytes(12) for n in range(20)])
def test_what_the_fast_path_parses_json_loads_parses_alike(sample: bytes) -> None:
    """The fast path parses with pydantic's parser where FastAPI uses json.loads: whatever the first
    accepts, the second gives the same value of (what it rejects goes to FastAPI)."""
    try:
        value = pydantic_core.from_json(sample)
    except ValueError:
        return
    assert same(value, json.loads(sample)), sample
