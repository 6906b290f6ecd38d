#!/usr/bin/env bash
# Rebuild the initial revision from models/ (only while no database in the wild
# runs it; after the first release, add new revisions instead).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f migrations/versions/0001_*.py /tmp/deskbill-regen.db
.venv/bin/alembic -c migrations/alembic.ini -x url=sqlite:////tmp/deskbill-regen.db \
  revision --autogenerate -m "the whole data model" --rev-id 0001 >/dev/null
.venv/bin/ruff check --fix --unsafe-fixes -q migrations/versions >/dev/null || true
.venv/bin/ruff format -q migrations/versions
rm -f /tmp/deskbill-regen.db
