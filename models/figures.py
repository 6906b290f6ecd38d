"""Figures kept per day as rows change: the rollups under the analytics dashboard.

A year of revenue, collections or payments would otherwise read every invoice and
payment of that year. On PostgreSQL, triggers on the tables those figures come from
keep small per-day tables instead, so a figure reads a few hundred rows whatever the
size of the ledger:

* ``revenue_days`` — per organization and local date: invoiced, tax and credit issued
  (finalized invoices and credit notes by issue date), received (succeeded payments by
  their date), refunded and credit applied;
* ``collection_days`` — per issue date and status: count and amounts of invoices;
* ``payment_days`` — per payment date, method and status: count, amount, refunded, and
  what the average days from due date to payment is made of;
* ``open_dues`` — open balance and count of invoices per due date (receivables aging);
* ``open_accounts`` — open balance and count per account (the largest debtors first).

Every row is a *delta*. A trigger fires once per statement (``REFERENCING OLD TABLE /
NEW TABLE``), works out what the changed rows contributed before and after, and
inserts the difference, grouped by key, as fresh rows. It never updates a row, so two
transactions that touch the same day never wait for each other nor deadlock; a figure
is the sum of its key's rows. ``compact`` folds the fresh rows of each key into one
(the worker runs it every pass), which keeps the tables near one row per key.

Local dates of instants (a card payment's success, a refund, an allocation) use the
organization's time zone at the moment of writing; changing the zone rebuilds that
organization's rows from the ledger (a trigger on ``organizations``). The rules of
what counts where are those of ``services.analytics`` and are written once, below,
as the contribution of one row; ``rebuild`` sums the same contributions over the
whole ledger, and the tests compare the two.

SQLite keeps the tables (one schema on both databases) but no triggers: there the
figures read the ledger, which is small enough on an embedded database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Date,
    Index,
    String,
    Table,
    event,
)

from models.base import Base, BigId

# A date subtracted from due dates so their sum fits a BIGINT and stays exact.
DAY_ZERO_DATE = date(2000, 1, 1)
DAY_ZERO = f"DATE '{DAY_ZERO_DATE.isoformat()}'"
OPEN = "('UPCOMING', 'DUE', 'OVERDUE', 'PROCESSING')"


def _rollup(name: str, *keys: Column[object], measures: tuple[str, ...]) -> Table:
    table = Table(
        name,
        Base.metadata,
        Column("organization_id", BigId, nullable=False),
        *keys,
        *(Column(m, BigInteger, nullable=False, default=0) for m in measures),
        # Written by a trigger, not yet folded into its key's one row by ``compact``.
        Column("fresh", Boolean, nullable=False, default=True),
        info={
            "keys": ("organization_id", *(k.name for k in keys)),
            "measures": measures,
        },
    )
    Index(f"ix_{name}_key", *(table.c[k] for k in table.info["keys"]))
    Index(
        f"ix_{name}_fresh",
        table.c.organization_id,
        postgresql_where=table.c.fresh,
        sqlite_where=table.c.fresh,
    )
    return table


def keys_of(rollup: Table) -> list[str]:
    return list(rollup.info["keys"])


def measures_of(rollup: Table) -> list[str]:
    return list(rollup.info["measures"])


REVENUE_MEASURES = ("invoiced", "tax", "credit_issued", "received", "refunded", "credit_applied")
revenue_days = _rollup(
    "revenue_days", Column("day", Date, nullable=False), measures=REVENUE_MEASURES
)
COLLECTION_MEASURES = ("count", "total", "amount_paid", "credit_applied", "balance_due")
collection_days = _rollup(
    "collection_days",
    Column("day", Date, nullable=False),
    Column("status", String(24), nullable=False),
    measures=COLLECTION_MEASURES,
)
# ``due_days``: Σ (due date − DAY_ZERO) over the ``days_count`` succeeded payments, so
# Σ (payment date − due date) = Σ days_count × (day − DAY_ZERO) − due_days, exactly.
PAYMENT_MEASURES = ("count", "amount", "refunded", "days_count", "due_days")
payment_days = _rollup(
    "payment_days",
    Column("day", Date, nullable=False),
    Column("method", String(24), nullable=False),
    Column("status", String(24), nullable=False),
    measures=PAYMENT_MEASURES,
)
OPEN_MEASURES = ("balance", "count")
open_dues = _rollup("open_dues", Column("due_date", Date, nullable=False), measures=OPEN_MEASURES)
open_accounts = _rollup(
    "open_accounts", Column("account_id", BigId, nullable=False), measures=OPEN_MEASURES
)
ROLLUPS = (revenue_days, collection_days, payment_days, open_dues, open_accounts)


# --------------------------------------------------------------------------- contributions


@dataclass(frozen=True)
class Contribution:
    """What each row of ``source`` adds to ``rollup``: a SELECT over ``{r}``, a
    relation with the source's columns (the table, or a trigger's old or new rows),
    giving the rollup's key columns and measures in its column order."""

    rollup: Table
    source: str
    select: str

    def over(self, relation: str) -> str:
        return self.select.format(r=relation)


def _local_date(instant: str) -> str:
    return f"({instant} AT TIME ZONE o.timezone)::date"


_PAYMENT_DAY = f"coalesce(r.received_on, {_local_date('coalesce(r.succeeded_at, r.created_at)')})"

CONTRIBUTIONS = (
    Contribution(
        revenue_days,
        "invoices",
        """SELECT r.organization_id, r.issue_date, r.total, r.tax,
                  CASE WHEN r.document_type = 'CREDIT_NOTE' THEN -r.total ELSE 0 END,
                  0, 0, 0
           FROM {r} r
           WHERE r.document_type IN ('INVOICE', 'CREDIT_NOTE') AND r.status <> 'VOID'
             AND r.issue_date IS NOT NULL""",
    ),
    Contribution(
        revenue_days,
        "payments",
        f"""SELECT r.organization_id, {_PAYMENT_DAY}, 0, 0, 0, r.amount, 0, 0
            FROM {{r}} r JOIN organizations o ON o.id = r.organization_id
            WHERE r.status = 'SUCCEEDED'""",
    ),
    Contribution(
        revenue_days,
        "refunds",
        f"""SELECT r.organization_id, {_local_date("r.created_at")}, 0, 0, 0, 0, r.amount, 0
            FROM {{r}} r JOIN organizations o ON o.id = r.organization_id
            WHERE r.status = 'SUCCEEDED'""",
    ),
    Contribution(
        revenue_days,
        "credit_allocations",
        f"""SELECT r.organization_id, {_local_date("r.created_at")}, 0, 0, 0, 0, 0, r.amount
            FROM {{r}} r JOIN organizations o ON o.id = r.organization_id
            WHERE r.removed_at IS NULL""",
    ),
    Contribution(
        collection_days,
        "invoices",
        f"""SELECT r.organization_id, r.issue_date, r.status, 1, r.total, r.amount_paid,
                   r.credit_applied,
                   CASE WHEN r.status IN {OPEN} AND r.total > 0
                        THEN r.total - r.amount_paid - r.credit_applied ELSE 0 END
            FROM {{r}} r
            WHERE r.document_type = 'INVOICE' AND r.issue_date IS NOT NULL""",
    ),
    Contribution(
        payment_days,
        "payments",
        f"""SELECT r.organization_id, {_PAYMENT_DAY}, r.method, r.status, 1, r.amount,
                   r.refunded_amount,
                   CASE WHEN r.status = 'SUCCEEDED' THEN 1 ELSE 0 END,
                   CASE WHEN r.status = 'SUCCEEDED' THEN i.due_date - {DAY_ZERO} ELSE 0 END
            FROM {{r}} r
            JOIN organizations o ON o.id = r.organization_id
            JOIN invoices i ON i.id = r.invoice_id""",
    ),
    *(
        Contribution(
            rollup,
            "invoices",
            f"""SELECT r.organization_id, r.{key}, r.total - r.amount_paid - r.credit_applied, 1
                FROM {{r}} r
                WHERE r.status IN {OPEN} AND r.document_type = 'INVOICE'
                  AND r.total - r.amount_paid - r.credit_applied > 0""",
        )
        for rollup, key in ((open_dues, "due_date"), (open_accounts, "account_id"))
    ),
)

# A payment's share of ``payment_days`` also depends on its invoice's due date: when
# that changes, the invoices trigger moves the payments' share from the old to the new.
# The moved invoices are found by EXCEPT (hashed, linear): transition tables have no
# statistics, and a join of the two went quadratic on a 100,000-row UPDATE.
_PAYMENTS_BY_INVOICE = Contribution(
    payment_days,
    "invoices",
    f"""SELECT p.organization_id,
               coalesce(p.received_on,
                        ((coalesce(p.succeeded_at, p.created_at)) AT TIME ZONE o.timezone)::date),
               p.method, p.status, 0, 0, 0,
               0, CASE WHEN p.status = 'SUCCEEDED' THEN r.due_date - {DAY_ZERO} ELSE 0 END
        FROM {{r}} r
        JOIN payments p ON p.invoice_id = r.id
        JOIN organizations o ON o.id = p.organization_id
        WHERE r.id IN (SELECT id FROM (SELECT id, due_date FROM new_rows
                                       EXCEPT SELECT id, due_date FROM old_rows) AS moved)""",
)


def _delta(parts: list[tuple[Contribution, str, int]], fresh: bool = True) -> str:
    """An INSERT of delta rows: each part's contribution over a relation, times its
    sign, summed per key; all-zero keys (a change that moved nothing) are left out."""
    rollup = parts[0][0].rollup
    keys, measures = keys_of(rollup), measures_of(rollup)
    columns = keys + measures
    branches = []
    for contribution, relation, sign in parts:
        alias = ", ".join(columns)
        signed = ", ".join(keys + [f"{sign} * {m} AS {m}" for m in measures])
        branches.append(f"SELECT {signed} FROM ({contribution.over(relation)}) AS c({alias})")
    sums = ", ".join(f"sum({m})::bigint" for m in measures)
    nonzero = " OR ".join(f"sum({m}) <> 0" for m in measures)
    return (
        f"INSERT INTO {rollup.name} ({', '.join(columns)}, fresh)\n"
        f"SELECT {', '.join(keys)}, {sums}, {'true' if fresh else 'false'}\n"
        f"FROM ({' UNION ALL '.join(branches)}) AS d\n"
        f"GROUP BY {', '.join(keys)} HAVING {nonzero}"
    )


def _trigger_body(source: str, operation: str) -> str:
    statements = []
    for contribution in CONTRIBUTIONS:
        if contribution.source != source:
            continue
        parts: list[tuple[Contribution, str, int]] = []
        if operation in ("INSERT", "UPDATE"):
            parts.append((contribution, "new_rows", 1))
        if operation in ("DELETE", "UPDATE"):
            parts.append((contribution, "old_rows", -1))
        statements.append(_delta(parts))
    if source == "invoices" and operation == "UPDATE":
        statements.append(
            _delta([(_PAYMENTS_BY_INVOICE, "new_rows", 1), (_PAYMENTS_BY_INVOICE, "old_rows", -1)])
        )
    return ";\n".join(statements) + ";"


SOURCES = ("invoices", "payments", "refunds", "credit_allocations")
_REFERENCING = {
    "INSERT": "NEW TABLE AS new_rows",
    "UPDATE": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "DELETE": "OLD TABLE AS old_rows",
}


def _name(source: str, operation: str) -> str:
    return f"deskbill_figures_{source}_{operation.lower()}"


def rebuild_sql() -> str:
    """The body of ``deskbill_rebuild_figures(orgs)``: every rollup row of those
    organizations recomputed from the ledger, as one compacted row per key."""
    statements = [
        f"DELETE FROM {rollup.name} WHERE organization_id = ANY(orgs)" for rollup in ROLLUPS
    ]
    for rollup in ROLLUPS:
        parts = [
            (c, f"(SELECT * FROM {c.source} WHERE organization_id = ANY(orgs))", 1)
            for c in CONTRIBUTIONS
            if c.rollup is rollup
        ]
        statements.append(_delta(parts, fresh=False))
    return ";\n".join(statements) + ";"


def install_statements() -> list[str]:
    """The PostgreSQL functions and triggers that keep the rollups (idempotent)."""
    out = []
    for source in SOURCES:
        for operation, referencing in _REFERENCING.items():
            name = _name(source, operation)
            out.append(
                f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                f"BEGIN\n{_trigger_body(source, operation)}\nRETURN NULL;\nEND $$"
            )
            out.append(f"DROP TRIGGER IF EXISTS {name} ON {source}")
            out.append(
                f"CREATE TRIGGER {name} AFTER {operation} ON {source} "
                f"REFERENCING {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
            )
    out.append(
        "CREATE OR REPLACE FUNCTION deskbill_rebuild_figures(orgs bigint[]) RETURNS void "
        f"LANGUAGE plpgsql AS $$\nBEGIN\n{rebuild_sql()}\nEND $$"
    )
    # A new time zone moves instants to other local dates: rebuild that organization.
    # A row trigger with a WHEN, so the many updates of the number series cost nothing.
    out.append(
        "CREATE OR REPLACE FUNCTION deskbill_figures_timezone() RETURNS trigger "
        "LANGUAGE plpgsql AS $$\nBEGIN\nPERFORM deskbill_rebuild_figures(ARRAY[NEW.id]);\n"
        "RETURN NULL;\nEND $$"
    )
    out.append("DROP TRIGGER IF EXISTS deskbill_figures_timezone ON organizations")
    out.append(
        "CREATE TRIGGER deskbill_figures_timezone AFTER UPDATE OF timezone ON organizations "
        "FOR EACH ROW WHEN (OLD.timezone IS DISTINCT FROM NEW.timezone) "
        "EXECUTE FUNCTION deskbill_figures_timezone()"
    )
    return out


def uninstall_statements() -> list[str]:
    out = ["DROP TRIGGER IF EXISTS deskbill_figures_timezone ON organizations"]
    out.append("DROP FUNCTION IF EXISTS deskbill_figures_timezone()")
    for source in SOURCES:
        for operation in _REFERENCING:
            out.append(f"DROP TRIGGER IF EXISTS {_name(source, operation)} ON {source}")
            out.append(f"DROP FUNCTION IF EXISTS {_name(source, operation)}()")
    out.append("DROP FUNCTION IF EXISTS deskbill_rebuild_figures(bigint[])")
    return out


def compact_statements() -> list[str]:
    """Fold the fresh rows of each touched key into one row per key (PostgreSQL).

    Only keys with fresh rows are rewritten. Rows a concurrent transaction adds while
    this runs are not in its snapshot and stay as they are, so nothing is counted
    twice; two compactions at once wait on each other's row locks, and the second
    finds the rows gone.
    """
    out = []
    for rollup in ROLLUPS:
        keys, measures = keys_of(rollup), measures_of(rollup)
        touched = ", ".join(keys)
        sums = ", ".join(f"sum({m})::bigint" for m in measures)
        nonzero = " OR ".join(f"sum({m}) <> 0" for m in measures)
        out.append(
            f"WITH touched AS (SELECT DISTINCT {touched} FROM {rollup.name} WHERE fresh),\n"
            f"gone AS (DELETE FROM {rollup.name} t USING touched k WHERE "
            + " AND ".join(f"t.{k} = k.{k}" for k in keys)
            + f" RETURNING t.*)\n"
            f"INSERT INTO {rollup.name} ({touched}, {', '.join(measures)}, fresh)\n"
            f"SELECT {touched}, {sums}, false FROM gone GROUP BY {touched} HAVING {nonzero}"
        )
    return out


def _install(target: object, connection: Connection, **_: object) -> None:
    if connection.dialect.name == "postgresql":
        for statement in install_statements():
            connection.exec_driver_sql(statement)


# ``create_all`` (tests, ``deskbill demo``) installs the triggers with the tables; the
# migration that added the rollups installs them on a migrated database.
event.listen(Base.metadata, "after_create", _install)
