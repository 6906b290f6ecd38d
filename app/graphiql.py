"""GraphiQL served entirely by Deskbill: the page at GET /graphql (a browser asking for
HTML) and its assets under /static/graphiql/, vendored with their licences in
``app/static/graphiql`` (versions and how to refresh them in the README there).

Nothing loads from another host, so the IDE works on a machine without internet; the
page's Content-Security-Policy holds the browser to that.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

# Scripts and styles from this server only. GraphiQL sets inline styles and embeds
# its fonts as data: URLs; fetches and websockets go back to this server.
POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "font-src 'self' data:",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ]
)


@cache
def _page() -> str:
    return (STATIC / "graphiql" / "index.html").read_text(encoding="utf-8")


def graphiql_page() -> HTMLResponse:
    return HTMLResponse(_page(), headers={"Content-Security-Policy": POLICY})


def graphiql_routes() -> list[BaseRoute]:
    return [Mount("/static", StaticFiles(directory=STATIC), name="static")]
