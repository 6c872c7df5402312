"""configure_logging: JSON lines with trace ids, stdlib routing, idempotence."""

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from mezzo.telemetry import Tracing, configure_logging, get_logger

ADOPTED = ("uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    adopted = {
        name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
        for name in ADOPTED
    }
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    for name, (old_handlers, propagate) in adopted.items():
        logging.getLogger(name).handlers[:] = old_handlers
        logging.getLogger(name).propagate = propagate
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_iso_utc_timestamps() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)

    get_logger("mezzo.test").info("hello", topic="orders")

    (line,) = lines(stream)
    assert line["message"] == "hello"
    assert line["level"] == "info"
    assert line["logger"] == "mezzo.test"
    assert line["topic"] == "orders"
    assert line["timestamp"].endswith("Z")
    assert "trace_id" not in line


def test_trace_ids_of_the_current_span_are_included(tracing: Tracing) -> None:
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)

    with tracing.tracer("t").start_as_current_span("op") as span:
        get_logger("mezzo.test").info("inside")
        logging.getLogger("uvicorn.error").info("stdlib inside")

    context = span.get_span_context()
    for line in lines(stream):
        assert line["trace_id"] == f"{context.trace_id:032x}"
        assert line["span_id"] == f"{context.span_id:016x}"


def test_stdlib_loggers_share_the_format() -> None:
    stream = io.StringIO()
    logging.getLogger("uvicorn.access").addHandler(logging.StreamHandler(io.StringIO()))
    logging.getLogger("uvicorn.access").propagate = False
    configure_logging(fmt="json", stream=stream)

    logging.getLogger("uvicorn.access").warning("GET %s %d", "/v1/topics", 200)

    (line,) = lines(stream)
    assert line["message"] == "GET /v1/topics 200"
    assert line["level"] == "warning"
    assert line["logger"] == "uvicorn.access"


def test_exceptions_are_structured() -> None:
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)

    try:
        raise ValueError("bad input")
    except ValueError:
        get_logger("mezzo.test").exception("failed")

    (line,) = lines(stream)
    assert line["exception"][0]["exc_type"] == "ValueError"


def test_configuring_twice_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(fmt="json", stream=first)
    configure_logging(fmt="json", stream=second)

    get_logger("mezzo.test").info("once")

    assert first.getvalue() == ""
    assert [line["message"] for line in lines(second)] == ["once"]


def test_level_filters_both_apis() -> None:
    stream = io.StringIO()
    configure_logging("warning", "json", stream=stream)

    get_logger("mezzo.test").info("hidden")
    logging.getLogger("other").info("hidden too")
    get_logger("mezzo.test").warning("shown")

    assert [line["message"] for line in lines(stream)] == ["shown"]


def test_auto_on_a_non_terminal_is_json_and_console_is_readable() -> None:
    auto, console = io.StringIO(), io.StringIO()
    configure_logging(stream=auto)
    get_logger("mezzo.test").info("machine")
    configure_logging(fmt="console", stream=console)
    get_logger("mezzo.test").info("human", key="value")

    assert lines(auto)[0]["message"] == "machine"
    text = console.getvalue()
    assert "human" in text and "key=value" in text and "\x1b[" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "json"), ("info", "xml")])
def test_bad_arguments_are_rejected(level: str, fmt: Any) -> None:
    with pytest.raises(ValueError):
        configure_logging(level, fmt, stream=io.StringIO())
