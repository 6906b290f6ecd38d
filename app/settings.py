"""Settings from the environment (``DESKBILL_*``), with embedded defaults.

The defaults run everything on one machine with nothing installed: a SQLite file,
an in-memory broadcast channel, the gateway off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite+aiosqlite:///deskbill.db"
    broadcast_url: str = "memory://"
    token_secret: str = "deskbill-dev-secret-change-me-0123456789"
    token_issuer: str = "deskbill"
    token_ttl_hours: int = 24 * 30
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None  # tests point the real library at a fake
    worker_enabled: bool = True
    worker_interval_seconds: float = 5.0
    max_query_depth: int = 12
    max_query_tokens: int = 4000
    max_aliases: int = 30
    graphiql: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {
            "database_url": env.get("DATABASE_URL")
            or env.get("DESKBILL_DATABASE_URL")
            or cls.database_url,
            "broadcast_url": env.get("DESKBILL_BROADCAST_URL", cls.broadcast_url),
            "token_secret": env.get("DESKBILL_TOKEN_SECRET", cls.token_secret),
            "token_issuer": env.get("DESKBILL_TOKEN_ISSUER", cls.token_issuer),
            "stripe_api_key": env.get("STRIPE_API_KEY") or None,
            "stripe_webhook_secret": env.get("STRIPE_WEBHOOK_SECRET") or None,
            "stripe_api_base": env.get("STRIPE_API_BASE") or None,
            "worker_enabled": _bool(env.get("DESKBILL_WORKER"), cls.worker_enabled),
            "worker_interval_seconds": float(
                env.get("DESKBILL_WORKER_INTERVAL", cls.worker_interval_seconds)
            ),
            "graphiql": _bool(env.get("DESKBILL_GRAPHIQL"), cls.graphiql),
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def async_database_url(url: str) -> str:
    """Accept plain ``postgresql://`` and ``sqlite://`` URLs and pick the async driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url[len("postgresql://") :]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url
