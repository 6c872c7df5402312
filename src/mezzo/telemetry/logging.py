"""Structured logs: JSON lines for machines, pretty lines in a terminal, trace ids in both."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO, get_args

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["LogFormat", "add_trace_context", "configure_logging", "get_logger"]

LogFormat = Literal["auto", "json", "console"]
_LEVELS = {"debug", "info", "warning", "error", "critical"}
# Loggers that install their own handlers; Mezzo makes them propagate to root instead.
_ADOPTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
_HANDLER_MARK = "_mezzo_telemetry"


def add_trace_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: add `trace_id`/`span_id` of the current span, if any."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict.setdefault("trace_id", format(span_context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(span_context.span_id, "016x"))
    return event_dict


def configure_logging(
    level: str = "info", fmt: LogFormat = "auto", *, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging (uvicorn included) through one formatter.

    `auto` means JSON unless `stream` (default: stderr) is a terminal. Calling it
    again replaces the previous setup rather than adding to it. Run uvicorn with
    `log_config=None` so it does not install its own handlers afterwards.
    """
    if level.lower() not in _LEVELS:
        raise ValueError(f"level must be one of {sorted(_LEVELS)}, got {level!r}")
    if fmt not in get_args(LogFormat):
        raise ValueError(f"fmt must be one of {get_args(LogFormat)}, got {fmt!r}")
    stream = stream if stream is not None else sys.stderr
    tty = _isatty(stream)
    as_json = fmt == "json" or (fmt == "auto" and not tty)
    shared = _shared_processors()

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a logger bound before (re)configuration must follow the new setup.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_renderers(as_json, colors=tty),
            ],
        )
    )
    setattr(handler, _HANDLER_MARK, True)
    _install(handler, level.upper())


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger backed by the stdlib logger `name`."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_context,
        structlog.processors.StackInfoRenderer(),
    ]


def _renderers(as_json: bool, *, colors: bool) -> list[Processor]:
    if as_json:
        return [
            # Never log local variables: they may hold tokens, secrets or payloads.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(),
        ]
    formatter = structlog.dev.RichTracebackFormatter(show_locals=False, max_frames=20)
    return [structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=formatter)]


def _install(handler: logging.Handler, level: str) -> None:
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name in _ADOPTED_LOGGERS:
        adopted = logging.getLogger(name)
        adopted.handlers.clear()
        adopted.setLevel(logging.NOTSET)
        adopted.propagate = True


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
