"""/docs and /redoc work offline: the page and every asset it references come from the running gateway,
with no key, and they give away nothing about the deployment (keys, Triton's address, paths)."""
from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx
import pytest

pytestmark = pytest.mark.e2e

ASSET_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


def referenced(html: str) -> list[str]:
    """Every URL the page loads: src/href attributes and the spec URL handed to Swagger UI or ReDoc."""
    urls = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)["\']', html)
    urls += re.findall(r'url:\s*["\']([^"\']+)["\']', html)  # SwaggerUIBundle({url: '/openapi.json'})
    urls += re.findall(r'spec-url\s*=\s*["\']([^"\']+)["\']', html)  # <redoc spec-url="/openapi.json">
    return sorted(set(urls))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_page_and_every_asset_come_from_the_gateway_without_a_key(ingot_stack, page):
    response = httpx.get(f"{ingot_stack.base_url}{page}", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"(?:src|href)\s*=\s*[\"']\s*(?:https?:)?//", html), "an asset from another host"
    assert "fonts.googleapis.com" not in html and "cdn." not in html
    urls = referenced(html)
    assets = [url for url in urls if url.startswith("/docs/assets/")]
    expected = ({"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"} if page == "/docs"
                else {"redoc.standalone.js", "favicon.png"})
    assert {url.rsplit("/", 1)[1] for url in assets} == expected
    assert "/openapi.json" in urls
    for url in urls:
        fetched = httpx.get(urljoin(f"{ingot_stack.base_url}{page}", url), timeout=30)
        assert fetched.status_code == 200, url
        assert len(fetched.content) > 1000, url
        kind = ASSET_TYPES.get(url[url.rfind("."):])
        if kind:
            assert kind in fetched.headers["content-type"], (url, fetched.headers["content-type"])
    if page == "/docs":
        assert '"validatorUrl": null' in html, "Swagger UI must not send the spec to an online validator"


def test_docs_give_away_nothing_about_the_deployment(ingot_stack):
    port = ingot_stack.triton.grpc_url.rsplit(":", 1)[1]
    for path in ("/docs", "/redoc", "/openapi.json"):
        text = httpx.get(f"{ingot_stack.base_url}{path}", timeout=30).text
        assert ingot_stack.api_key not in text, path
        assert ingot_stack.triton.grpc_url not in text and f":{port}" not in text, path
        assert str(ingot_stack.artifact) not in text, path
    spec = httpx.get(f"{ingot_stack.base_url}/openapi.json", timeout=30).json()
    assert "/v1/chat/completions" in spec["paths"] and "/docs" not in spec["paths"]
