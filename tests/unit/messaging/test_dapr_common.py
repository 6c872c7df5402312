"""What Dapr's HTTP and gRPC publish APIs share (compat/dapr_common.py), the streaming subscription's
group names (compat/dapr_stream.py) and the setting that moves or turns off the gRPC port."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mezzo.messaging.compat.dapr_common import DaprError, check, namespace_of, to_message
from mezzo.messaging.compat.dapr_stream import group_of
from mezzo.node.auth import Principal, Role
from mezzo.node.settings import Settings

ADMIN = Principal(name="admin", role=Role.ADMIN)


def refusal(fn, *args) -> DaprError:  # type: ignore[no-untyped-def]
    with pytest.raises(DaprError) as info:
        fn(*args)
    return info.value


def test_messages_from_dapr_data_content_types_and_metadata() -> None:
    text = to_message(b"hi", None, {})
    assert (text.content_type, text.body()) == ("text/plain", (b"hi", "text/plain"))
    json = to_message(b'{"a": 1}', "application/json; charset=utf-8", {"ttlInSeconds": "2.5", "partitionKey": "k"})
    assert (json.content_type, json.ttl, json.key) == ("application/json", 2.5, "k")
    event = to_message(b'{"data": {"n": 1}, "source": "/shop"}', "Application/CloudEvents+JSON", {})
    assert event.attributes["ce.source"] == "/shop" and event.attributes["ce.type"] == "com.dapr.event.sent"
    assert event.id and event.data == {"n": 1}  # a new id, as Dapr gives an event without one


def test_raw_payload_keeps_a_cloudevent_as_sent_and_an_empty_ttl_is_none() -> None:
    raw = to_message(b"[not a cloudevent", "application/cloudevents+json", {"rawPayload": "true"})
    assert raw.body() == (b"[not a cloudevent", "application/cloudevents+json") and not raw.attributes
    for off in ("false", "0", "F", ""):  # Go's ParseBool, as Dapr reads it; empty: not set
        event = to_message(b'{"data": 1}', "application/cloudevents+json", {"rawPayload": off})
        assert event.attributes["ce.source"] == "Dapr" and event.data == 1, off
    assert to_message(b"x", None, {"rawPayload": "T"}).body() == (b"x", "text/plain")  # other data: as always
    assert to_message(b"x", None, {"ttlInSeconds": ""}).ttl is None  # as Dapr: no TTL, not an error
    err = refusal(to_message, b"x", None, {"rawPayload": "yes"})
    assert (err.status, err.code, err.grpc, err.reason) == (
        400, "ERR_PUBSUB_REQUEST_METADATA", "INVALID_ARGUMENT", "DAPR_PUBSUB_METADATA_DESERIALIZATION")
    assert "rawPayload value must be a valid boolean: actual is 'yes'" in err.message


@pytest.mark.parametrize(("data", "ctype", "metadata", "words"), [
    (b"x", None, {"ttlInSeconds": "0"}, "ttlInSeconds"),
    (b"x", None, {"ttlInSeconds": "inf"}, "ttlInSeconds"),
    (b"x", None, {"ttlInSeconds": "soon"}, "'soon'"),
    (b"x", None, {"partitionKey": "k" * 513}, "partitionKey"),
    (b"[1]", "application/cloudevents+json", {}, "JSON object"),
    (b"{", "application/cloudevents+json", {}, ""),
    (b'{"specversion": "0.3"}', "application/cloudevents+json", {}, "specversion"),
])
def test_bad_events_and_metadata_are_daprs_cloud_event_error(data: bytes, ctype: str | None,
                                                            metadata: dict[str, str], words: str) -> None:
    err = refusal(to_message, data, ctype, metadata)
    assert (err.status, err.code, err.grpc, err.reason) == (
        400, "ERR_PUBSUB_CLOUD_EVENTS_SER", "INVALID_ARGUMENT", "DAPR_PUBSUB_CLOUD_EVENT_CREATION")
    assert words in err.message


def test_checks_name_daprs_errors_for_both_transports() -> None:
    scoped = Principal(name="app", role=Role.DEVELOPER, namespaces=["shop"])
    viewer = Principal(name="eye", role=Role.VIEWER)
    cases = [
        (("kafka", "t", "default", ADMIN), 404, "ERR_PUBSUB_NOT_FOUND", "INVALID_ARGUMENT", "DAPR_PUBSUB_NOT_FOUND"),
        (("", "t", "default", ADMIN), 404, "ERR_PUBSUB_EMPTY", "INVALID_ARGUMENT", "DAPR_PUBSUB_NAME_EMPTY"),
        (("mezzo", "", "default", ADMIN), 404, "ERR_TOPIC_NAME_EMPTY", "INVALID_ARGUMENT",
         "DAPR_PUBSUB_TOPIC_NAME_EMPTY"),
        (("mezzo", "A B", "default", ADMIN), 404, "ERR_TOPIC_NAME_EMPTY", "INVALID_ARGUMENT",
         "DAPR_PUBSUB_TOPIC_NAME_EMPTY"),
        (("mezzo", "t", "No!", ADMIN), 404, "ERR_TOPIC_NAME_EMPTY", "INVALID_ARGUMENT", "DAPR_PUBSUB_TOPIC_NAME_EMPTY"),
        (("mezzo", "t", "default", scoped), 403, "ERR_PUBSUB_FORBIDDEN", "PERMISSION_DENIED", "DAPR_PUBSUB_FORBIDDEN"),
        (("mezzo", "t", "default", viewer), 403, "ERR_PUBSUB_FORBIDDEN", "PERMISSION_DENIED", "DAPR_PUBSUB_FORBIDDEN"),
    ]
    for args, status, code, grpc_code, reason in cases:
        err = refusal(check, *args)
        assert (err.status, err.code, err.grpc, err.reason) == (status, code, grpc_code, reason), args
        assert err.body() == {"errorCode": code, "message": err.message}
    check("mezzo", "t", "shop", scoped)  # allowed: nothing raised
    assert namespace_of({}) == "default" and namespace_of({"namespace": "shop"}) == "shop"


def test_stream_groups_come_from_consumer_id_or_the_token_name() -> None:
    assert group_of({"consumerID": "billing"}, ADMIN) == "billing"
    assert group_of({"consumerGroup": "ship"}, ADMIN) == "ship"
    assert group_of({"consumerid": "any-case"}, ADMIN) == "any-case"
    assert group_of({}, ADMIN) == "admin"
    assert group_of({}, Principal(name="Orders@Shop", role=Role.DEVELOPER)) == "orders-shop"
    assert group_of({}, Principal(name="-._", role=Role.DEVELOPER)) == "dapr"
    err = refusal(group_of, {"consumerID": "Not A Group"}, ADMIN)
    assert err.grpc == "INVALID_ARGUMENT" and "consumerID" in err.message


def test_the_dapr_grpc_port_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEZZO_DAPR_GRPC_PORT", raising=False)
    assert Settings().dapr_grpc_port == 50001  # Dapr's own gRPC port, so a DaprClient needs no setting
    for value, expected in [("off", None), ("OFF", None), ("0", 0), ("50002", 50002)]:
        monkeypatch.setenv("MEZZO_DAPR_GRPC_PORT", value)
        assert Settings().dapr_grpc_port == expected, value
    monkeypatch.delenv("MEZZO_DAPR_GRPC_PORT")
    (tmp_path / "mezzo.yaml").write_text("dapr_grpc_port: off\n")  # YAML reads off as false
    assert Settings().dapr_grpc_port is None
    for bad in ("soon", "70000", -1, True, "on", "\u0663"):  # True: YAML's on/yes/true, not port 1
        with pytest.raises(ValidationError) as info:
            Settings(dapr_grpc_port=bad)
        assert info.value.errors()[0]["loc"] == ("dapr_grpc_port",)
