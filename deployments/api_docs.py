"""`/docs` without the internet: Swagger UI's files are served by the app itself.

FastAPI's default page loads Swagger UI from a CDN, so it is blank on a machine that cannot
reach one. The files come from the `swagger-ui-bundle-v2` package (Swagger UI 5, which reads
the OpenAPI 3.1 FastAPI writes). URLs carry the request's `root_path`, so the page works
under any Serve `route_prefix` or proxy prefix.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"


def serve_docs(app: FastAPI, *, title: str) -> None:
    """Call on an app built with `docs_url=None` (and `redoc_url=None`: ReDoc has no
    offline copy here)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - API",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
        )
