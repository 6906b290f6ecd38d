"""Logging a person can use: a request id on every line of a request, one JSON object
per line on demand (``DESKBILL_LOG_FORMAT=json``).

``app.edge`` sets ``request_id`` for each HTTP request and websocket connection; the
``RequestIdFilter`` copies it onto every record, so a line logged anywhere below (a
resolver, a service, SQLAlchemy) names the request it belongs to.
"""

from __future__ import annotations

import json
import logging
import logging.config
from contextvars import ContextVar
from datetime import UTC, datetime

NO_REQUEST = "-"
request_id: ContextVar[str] = ContextVar("deskbill_request_id", default=NO_REQUEST)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

# Neither format names a thread, a process or the line that logged: records need not
# look them up (the logging documentation's own advice for a busy process; the access
# log writes a record per request).
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False
logging._srcfile = None


def current_request_id() -> str:
    return request_id.get()


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (``record.request_id``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", NO_REQUEST),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def logging_config(log_format: str = "text", level: str = "INFO") -> dict[str, object]:
    """The ``logging.config.dictConfig`` for a process of ours: every logger (ours,
    uvicorn's, SQLAlchemy's) to stderr in ``log_format``, each line with its request id.

    uvicorn applies it in each of its worker processes too (``log_config=``)."""
    formatter: dict[str, object] = (
        {"()": JsonFormatter} if log_format == "json" else {"format": TEXT_FORMAT}
    )
    # uvicorn's loggers keep handlers of their own unless told otherwise; they
    # propagate to ours so every line has the same shape.
    passthrough = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"deskbill": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "filters": ["request_id"],
                "formatter": "deskbill",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {name: passthrough for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """Set this process's logging up as ``logging_config`` says."""
    logging.config.dictConfig(logging_config(log_format, level))
