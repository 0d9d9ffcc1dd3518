"""/docs (Swagger UI) and /redoc (ReDoc), with their JavaScript and CSS served by the gateway itself.

FastAPI's own pages load these from a CDN and stay blank on a machine without internet, as in a
locked-down cluster. The fastapi-offline package ships Swagger UI's and ReDoc's bundles; only its files are
used here, under /docs/assets. The pages need no key (they describe the API, never a deployment: no keys, no
Triton address) and load nothing from outside: no Google fonts, no online spec validator.
"""
from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, swagger_ui_default_parameters
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"


def assets_directory() -> str:
    return str(files("fastapi_offline") / "static")


def install_docs(app: FastAPI) -> None:
    """Add the two pages and their assets; create the app with docs_url=None and redoc_url=None."""
    app.mount(ASSETS, StaticFiles(directory=assets_directory()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} API",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            # validatorUrl null: Swagger UI would otherwise send the spec to swagger.io's validator.
            swagger_ui_parameters={**swagger_ui_default_parameters, "validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} API",
                              redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{ASSETS}/favicon.png", with_google_fonts=False)
