"""The responses routes share: an HTML page, an HTML error page, a JSON error."""

from __future__ import annotations

from fastapi.responses import HTMLResponse, JSONResponse

from worklist import pages
from worklist.auth import Principal


def nav(p: Principal) -> pages.Nav:
    """The page header for ``p``."""
    return pages.Nav(p.name, p.role, p.csrf_token)


def html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code)


def html_error(
    status_code: int, title: str, message: str, p: Principal | None = None
) -> HTMLResponse:
    return html(pages.error_page(title, message, nav(p) if p else None), status_code)


def json_error(status_code: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers or None)
