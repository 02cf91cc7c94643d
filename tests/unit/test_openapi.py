"""The generated OpenAPI document: valid OpenAPI 3, served without a key, and its
/docs page served with assets from the installed package (no network)."""

from __future__ import annotations

from flask.testing import FlaskClient
from openapi_spec_validator import validate


def test_the_document_is_valid_openapi_and_public(client: FlaskClient) -> None:
    response = client.get("/openapi.json")  # no Authorization header
    assert response.status_code == 200
    document = response.get_json()
    validate(document)
    assert document["openapi"].startswith("3.")
    assert document["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert document["security"] == [{"bearerAuth": []}]
    assert "Error" in document["components"]["schemas"]


def test_the_health_checks_are_documented_as_public(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    assert paths["/healthz"]["get"]["security"] == []
    assert paths["/readyz"]["get"]["security"] == []
    assert "security" not in paths["/metrics"]["get"]  # the document's default: a key


def test_the_docs_page_and_its_assets_come_from_this_server(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/openapi.json" in html
    assert "https://" not in html  # no CDN: the page works offline
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        assert f"/docs/assets/{asset}" in html
        with client.get(f"/docs/assets/{asset}") as served:
            assert served.status_code == 200 and len(served.data) > 1000


def test_an_unknown_asset_is_the_json_envelope(client: FlaskClient) -> None:
    response = client.get("/docs/assets/nope.js")
    assert response.status_code == 404
    assert response.get_json()["error"]["type"] == "not_found"
