"""/docs works offline: Swagger UI's files come from the sidecar itself, not from a CDN."""

from __future__ import annotations

from semcache.server.app import create_app
from tests._sidecar import in_process, server_config


async def test_docs_are_served_from_the_sidecar(tmp_path):
    async with in_process(create_app(server_config(tmp_path))) as client:
        page = await client.get("/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        html = page.text
        assert "/docs/assets/swagger-ui-bundle.js" in html and "/docs/assets/swagger-ui.css" in html
        assert "cdn." not in html and "unpkg" not in html
        assert "/openapi.json" in html
        for asset, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css")):
            r = await client.get(f"/docs/assets/{asset}")
            assert r.status_code == 200 and kind in r.headers["content-type"] and len(r.content) > 10_000, asset
        assert (await client.get("/docs/assets/missing.js")).status_code == 404
        spec = (await client.get("/openapi.json")).json()
        assert not any(path.startswith("/docs") for path in spec["paths"])
