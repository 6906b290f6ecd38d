"""Settings from the environment (``DESKBILL_*``), with embedded defaults.

The defaults run everything on one machine with nothing installed: a SQLite file,
an in-memory broadcast channel, the gateway off. The one thing without a default is
the token signing secret (``app.signing`` says where one comes from).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatabaseLimits:
    """How long anything may hold a database connection, and how many there are.

    On PostgreSQL the three timeouts are set on every connection (0 turns one off);
    SQLite waits at most ``lock_timeout_ms`` for the write lock. An exhausted pool
    raises ``sqlalchemy.exc.TimeoutError`` after ``pool_timeout_seconds`` rather than
    letting requests queue behind a stuck one.
    """

    statement_timeout_ms: int = 15_000
    lock_timeout_ms: int = 5_000
    idle_in_transaction_timeout_ms: int = 30_000
    # Kept open: at least the concurrency one process serves, since an overflow
    # connection is closed on return and the next request pays a new PostgreSQL
    # connection for it (and may meet the server's max_connections). 30 at most.
    pool_size: int = 20
    max_overflow: int = 10
    pool_timeout_seconds: float = 2.0


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite+aiosqlite:///deskbill.db"
    broadcast_url: str = "memory://"
    # No default on purpose: a secret that stands in the source signs nobody's tokens.
    token_secret: str | None = None
    token_issuer: str = "deskbill"
    token_ttl_hours: int = 24 * 30
    # Sign-in through the space's identity provider (OpenID Connect access tokens).
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_claim: str = "email"
    oidc_organization: str | None = None
    # A token naming an unknown key id refetches the key set at most this often.
    oidc_jwks_cooldown_seconds: float = 30.0
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None  # tests point the real library at a fake
    worker_enabled: bool = True
    worker_interval_seconds: float = 5.0
    max_query_depth: int = 12
    max_query_tokens: int = 4000
    max_aliases: int = 30
    graphiql: bool = True
    # Answer known read queries from one SQL statement each (resolvers/compiled).
    compiled_reads: bool = True
    database_limits: DatabaseLimits = field(default_factory=DatabaseLimits)
    # The billing clock: periods a plan catches up per account per run, accounts
    # billed at once across organizations, and the time one account may take.
    billing_max_periods: int = 12
    billing_concurrency: int = 4
    billing_account_seconds: float = 30.0
    # Accounts per transaction of the set-based run on PostgreSQL (0: one by one).
    billing_batch_size: int = 500
    # Browser origins allowed to call the API (CORS and websocket handshakes); none by default.
    cors_origins: tuple[str, ...] = ()
    # How often an open websocket re-checks its token and its user's access.
    ws_recheck_seconds: float = 2.0
    # Persisted queries: "auto" (Apollo's protocol), "only" (the manifest's documents
    # alone), "off"; the manifest is a JSON object of sha256 → document.
    persisted_queries: str = "auto"
    persisted_queries_file: str | None = None
    # The HTTP edge (app.edge, app.cost, app.logs).
    max_body_bytes: int = 1_048_576
    max_response_bytes: int = 10_485_760
    request_timeout_seconds: float = 10.0
    cost_limit_admin: int = 50_000
    cost_limit_analyst: int = 50_000
    cost_limit_member: int = 25_000
    heavy_query_cost: int = 2_000
    heavy_query_concurrency: int = 1
    # Cost rate limits (app.ratelimit): leaky buckets of query-cost points, one per
    # caller (capacity and restore rate per second by role) and one per organization.
    rate_limits: bool = True
    cost_bucket_admin: int = 50_000
    cost_bucket_analyst: int = 50_000
    cost_bucket_member: int = 25_000
    cost_restore_admin: float = 1_000.0
    cost_restore_analyst: float = 1_000.0
    cost_restore_member: float = 500.0
    cost_bucket_organization: int = 100_000
    cost_restore_organization: float = 2_000.0
    cost_buckets_max: int = 10_000
    log_format: str = "text"
    # Outbound webhooks: networks that are not public but may still be sent to
    # ("" none, "true" every private one, or a comma list such as "127.0.0.0/8"),
    # the time one request may take, requests at once, and the pause between rounds.
    webhooks_allow_private: str = ""
    webhook_timeout_seconds: float = 10.0
    webhook_concurrency: int = 8
    webhook_interval_seconds: float = 2.0
    # E-mail notifications (services.notifications): the SMTP server (unset: recorded,
    # not sent), the sender when an organization names none, the address pay links in
    # e-mails point at, how long a pay link works, and delivery retries.
    smtp_url: str | None = None
    smtp_from: str = "deskbill@localhost"
    public_url: str = "http://127.0.0.1:8000"
    pay_link_days: int = 30
    notify_max_attempts: int = 8
    notify_backoff_seconds: float = 60.0
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {
            "database_url": env.get("DATABASE_URL")
            or env.get("DESKBILL_DATABASE_URL")
            or cls.database_url,
            "broadcast_url": env.get("DESKBILL_BROADCAST_URL", cls.broadcast_url),
            "token_secret": env.get("DESKBILL_TOKEN_SECRET") or None,
            "token_issuer": env.get("DESKBILL_TOKEN_ISSUER", cls.token_issuer),
            "oidc_issuer": env.get("DESKBILL_OIDC_ISSUER") or None,
            "oidc_audience": env.get("DESKBILL_OIDC_AUDIENCE") or None,
            "oidc_jwks_url": env.get("DESKBILL_OIDC_JWKS_URL") or None,
            "oidc_claim": (env.get("DESKBILL_OIDC_CLAIM") or cls.oidc_claim).strip().lower(),
            "oidc_organization": env.get("DESKBILL_OIDC_ORGANIZATION") or None,
            "oidc_jwks_cooldown_seconds": float(
                env.get("DESKBILL_OIDC_JWKS_COOLDOWN") or cls.oidc_jwks_cooldown_seconds
            ),
            "stripe_api_key": env.get("STRIPE_API_KEY") or None,
            "stripe_webhook_secret": env.get("STRIPE_WEBHOOK_SECRET") or None,
            "stripe_api_base": env.get("STRIPE_API_BASE") or None,
            "worker_enabled": _bool(env.get("DESKBILL_WORKER"), cls.worker_enabled),
            "worker_interval_seconds": float(
                env.get("DESKBILL_WORKER_INTERVAL", cls.worker_interval_seconds)
            ),
            "graphiql": _bool(env.get("DESKBILL_GRAPHIQL"), cls.graphiql),
            "compiled_reads": _bool(env.get("DESKBILL_COMPILED_READS"), cls.compiled_reads),
            "database_limits": _database_limits(env),
            "billing_max_periods": int(env.get("DESKBILL_BILLING_MAX_PERIODS") or 12),
            "billing_concurrency": int(env.get("DESKBILL_BILLING_CONCURRENCY") or 4),
            "billing_account_seconds": float(env.get("DESKBILL_BILLING_ACCOUNT_SECONDS") or 30),
            "billing_batch_size": int(
                env.get("DESKBILL_BILLING_BATCH_SIZE", cls.billing_batch_size)
            ),
            "cors_origins": origins(env.get("DESKBILL_CORS_ORIGINS", "")),
            "ws_recheck_seconds": float(
                env.get("DESKBILL_WS_RECHECK_SECONDS", cls.ws_recheck_seconds)
            ),
            "max_body_bytes": int(env.get("DESKBILL_MAX_BODY_BYTES", cls.max_body_bytes)),
            "max_response_bytes": int(
                env.get("DESKBILL_MAX_RESPONSE_BYTES", cls.max_response_bytes)
            ),
            "request_timeout_seconds": float(
                env.get("DESKBILL_REQUEST_TIMEOUT_SECONDS", cls.request_timeout_seconds)
            ),
            "cost_limit_admin": int(env.get("DESKBILL_COST_LIMIT_ADMIN", cls.cost_limit_admin)),
            "cost_limit_analyst": int(
                env.get("DESKBILL_COST_LIMIT_ANALYST", cls.cost_limit_analyst)
            ),
            "cost_limit_member": int(env.get("DESKBILL_COST_LIMIT_MEMBER", cls.cost_limit_member)),
            "heavy_query_cost": int(env.get("DESKBILL_HEAVY_QUERY_COST", cls.heavy_query_cost)),
            "heavy_query_concurrency": int(
                env.get("DESKBILL_HEAVY_QUERY_CONCURRENCY", cls.heavy_query_concurrency)
            ),
            "rate_limits": _bool(env.get("DESKBILL_RATE_LIMITS"), cls.rate_limits),
            **{
                name: kind(env.get(f"DESKBILL_{name.upper()}") or getattr(cls, name))
                for name, kind in _COST_BUCKET_SETTINGS.items()
            },
            "log_format": env.get("DESKBILL_LOG_FORMAT", cls.log_format),
            "webhooks_allow_private": env.get("DESKBILL_WEBHOOKS_ALLOW_PRIVATE", ""),
            "webhook_timeout_seconds": float(
                env.get("DESKBILL_WEBHOOK_TIMEOUT_SECONDS") or cls.webhook_timeout_seconds
            ),
            "webhook_concurrency": int(
                env.get("DESKBILL_WEBHOOK_CONCURRENCY") or cls.webhook_concurrency
            ),
            "webhook_interval_seconds": float(
                env.get("DESKBILL_WEBHOOK_INTERVAL") or cls.webhook_interval_seconds
            ),
        }
        values["smtp_url"] = env.get("DESKBILL_SMTP_URL") or None
        values["smtp_from"] = env.get("DESKBILL_SMTP_FROM") or cls.smtp_from
        values["public_url"] = (env.get("DESKBILL_PUBLIC_URL") or cls.public_url).rstrip("/")
        values["pay_link_days"] = int(env.get("DESKBILL_PAY_LINK_DAYS") or cls.pay_link_days)
        values["notify_max_attempts"] = int(
            env.get("DESKBILL_NOTIFY_MAX_ATTEMPTS") or cls.notify_max_attempts
        )
        values["notify_backoff_seconds"] = float(
            env.get("DESKBILL_NOTIFY_BACKOFF_SECONDS") or cls.notify_backoff_seconds
        )
        values["persisted_queries"] = env.get("DESKBILL_PERSISTED_QUERIES") or "auto"
        values["persisted_queries_file"] = env.get("DESKBILL_PERSISTED_QUERIES_FILE") or None
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def oidc_configured(self) -> bool:
        return any((self.oidc_issuer, self.oidc_jwks_url, self.oidc_audience))


_COST_BUCKET_SETTINGS: dict[str, type[int] | type[float]] = {
    "cost_bucket_admin": int,
    "cost_bucket_analyst": int,
    "cost_bucket_member": int,
    "cost_restore_admin": float,
    "cost_restore_analyst": float,
    "cost_restore_member": float,
    "cost_bucket_organization": int,
    "cost_restore_organization": float,
    "cost_buckets_max": int,
}
"""Settings read as ``DESKBILL_<NAME>`` (``DESKBILL_COST_RESTORE_ANALYST``)."""


def _database_limits(env: dict[str, str]) -> DatabaseLimits:
    default = DatabaseLimits()

    def number(name: str, fallback: float) -> float:
        return float(env.get(f"DESKBILL_DB_{name}") or fallback)

    return DatabaseLimits(
        statement_timeout_ms=int(number("STATEMENT_TIMEOUT_MS", default.statement_timeout_ms)),
        lock_timeout_ms=int(number("LOCK_TIMEOUT_MS", default.lock_timeout_ms)),
        idle_in_transaction_timeout_ms=int(
            number("IDLE_IN_TRANSACTION_TIMEOUT_MS", default.idle_in_transaction_timeout_ms)
        ),
        pool_size=int(number("POOL_SIZE", default.pool_size)),
        max_overflow=int(number("MAX_OVERFLOW", default.max_overflow)),
        pool_timeout_seconds=number("POOL_TIMEOUT", default.pool_timeout_seconds),
    )


def origins(value: str) -> tuple[str, ...]:
    """A comma list of origins (``https://admin.example.com``); a browser sends the
    origin without a trailing slash, so one typed with it would never match."""
    return tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())


def async_database_url(url: str) -> str:
    """Accept plain ``postgresql://`` and ``sqlite://`` URLs and pick the async driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url[len("postgresql://") :]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url
