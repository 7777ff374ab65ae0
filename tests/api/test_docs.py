"""The OpenAPI page works offline: every asset it loads is served by the service itself."""

import re

from fastapi.testclient import TestClient


def assets_of(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", page) + re.findall(
        r"""url:\s*['"]([^'"]+)['"]""", page
    )


def test_docs_load_every_asset_from_the_service(client: TestClient):
    page = client.get("/docs")
    assert page.status_code == 200
    assets = assets_of(page.text)
    assert assets, page.text
    outside = [url for url in assets if "://" in url or url.startswith("//")]
    assert outside == [], f"/docs loads {outside} from outside the service: blank offline"
    for url in assets:
        answer = client.get(url)
        assert answer.status_code == 200 and answer.content, url
    script = next(url for url in assets if url.endswith(".js"))
    assert len(client.get(script).content) > 100_000  # the Swagger UI bundle itself, not a stub


def test_docs_stay_open_when_api_keys_are_set(tmp_path):
    from app.main import create_app
    from tests.support.settings import make_settings

    with TestClient(create_app(make_settings(tmp_path / "data", api_keys="k1"))) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert all(client.get(url).status_code == 200 for url in assets_of(page.text) if "://" not in url)
