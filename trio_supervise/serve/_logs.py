"""What ``serve`` logs: supervision events and its own news on ``trio_supervise``, one line per
request on ``trio_supervise.access``, as text or as JSON lines.

The library itself configures no handler (``trio_supervise`` has only a ``NullHandler``): an
application embedding it decides. :func:`configure_logging` is what the CLI's ``serve``
calls: a handler on the root logger, at ``--log-level``, so supervision events
(restarts with their cause, give-ups, breaker changes) are printed by default, and the access log
on or off (``--access-log/--no-access-log``). Hypercorn's own messages go to
``trio_supervise.http`` at WARNING and above (no banner).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any, Final, final

from ._exchange import Exchange

__all__ = ["ACCESS_LOGGER", "HTTP_LOGGER", "JsonFormatter", "access_log", "configure_logging"]

ACCESS_LOGGER: Final = logging.getLogger("trio_supervise.access")
"""One line per answered request (an observer of requests)."""
HTTP_LOGGER: Final = logging.getLogger("trio_supervise.http")
"""Hypercorn's own messages (its errors; its banner is below the level set here)."""
HTTP_LOGGER.setLevel(logging.WARNING)

LEVELS = ("debug", "info", "warning", "error", "critical")

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def access_log(exchange: Exchange) -> None:
    """Log one answered request on :data:`ACCESS_LOGGER` at INFO."""
    if not ACCESS_LOGGER.isEnabledFor(logging.INFO):
        return
    f = exchange.access_fields()
    served = "" if f["replica"] is None else f" replica={f['replica']} gen={f['generation']}"
    tokens = ""
    if exchange.generating:
        tokens = (f" model={f['model']} prompt_tokens={f['prompt_tokens']} "
                  f"completion_tokens={f['completion_tokens']} outcome={f['outcome']}")  # fmt: skip
    continued = f" continued={f['continued']}" if f["continued"] else ""
    ACCESS_LOGGER.info(
        "%s %s %s %.1fms id=%s%s%s%s",
        f["method"], f["path"], f["status"], f["duration_ms"], f["request_id"], tokens, served,
        continued, extra={"access": f},
    )  # fmt: skip


@final
class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time``, ``level``, ``logger``, ``message``; an access line's
    fields (``method``, ``path``, ``status``...) and a supervision event's (``worker``,
    ``kind``, ``generation``, ``error``) as fields of their own; an exception's traceback as
    ``exc_info``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line.update(access)
        event = getattr(record, "supervision_event", None)
        if event is not None:
            error = None if event.error is None else type(event.error).__name__
            line.update(worker=event.child, supervisor=event.supervisor, kind=event.kind.value,
                        generation=event.generation, error=error)  # fmt: skip
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(
    level: str = "info",
    *,
    access_log: bool = True,
    json_lines: bool = False,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Log to ``stream`` (default: standard error) at ``level``; returns the handler added to
    the root logger (a second call replaces the first one's).

    Raises:
        ValueError: ``level`` is not one of ``debug``, ``info``, ``warning``, ``error``,
            ``critical``.
    """
    if level not in LEVELS:
        raise ValueError(f"the log level must be one of {', '.join(LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(_TEXT))
    handler.set_name("trio_supervise")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "trio_supervise"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The access log says INFO; without it, it is off whatever the level.
    ACCESS_LOGGER.setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
    return handler
