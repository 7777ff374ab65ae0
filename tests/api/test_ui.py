"""The status page's routes: served from the package with strict headers, open without a key, nothing external."""

import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from fastapi.testclient import TestClient

from app.api.ui import ASSETS
from app.main import create_app
from tests.support.processes import ROOT
from tests.support.settings import make_settings

PAGE_FILES = sorted({name for name, _ in ASSETS.values()})


def test_the_page_is_served_at_the_root_and_at_ui_with_its_script_and_style(client: TestClient):
    for path in ("/", "/ui"):
        page = client.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert '<main id="figures"' in page.text
    assets = re.findall(r"""(?:src|href)="([^"]+)\"""", client.get("/").text)
    assert sorted(assets) == ["/ui/page.css", "/ui/page.js", "data:,"]
    script, style = client.get("/ui/page.js"), client.get("/ui/page.css")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8" and "/api/stats" in script.text
    assert style.headers["content-type"] == "text/css; charset=utf-8" and "@media (max-width: 600px)" in style.text


@pytest.mark.parametrize("path", list(ASSETS))
def test_every_part_of_the_page_carries_the_strict_headers(client: TestClient, path: str):
    answer = client.get(path)
    csp = answer.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["cache-control"] == "no-cache"
    head = client.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == answer.headers["content-type"]


def test_the_page_loads_without_a_key_while_its_figures_need_one(tmp_path):
    with TestClient(create_app(make_settings(tmp_path / "data", api_keys="page-key"))) as client:
        assert all(client.get(path).status_code == 200 for path in ASSETS)
        assert client.get("/api/stats").status_code == 401
        assert client.get("/api/stats", headers={"X-API-Key": "page-key"}).status_code == 200


def test_the_page_is_not_in_the_api_schema(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/ui")]


@pytest.mark.parametrize("name", PAGE_FILES)
def test_the_page_names_no_outside_url_and_writes_no_markup(name: str):
    text = (ROOT / "app" / "api" / "static" / name).read_text()
    urls = re.findall(r"""[a-z]+://[^\s"'`)]+""", text)
    assert urls == ["http://www.w3.org/2000/svg"] * len(urls), f"{name} names {urls}"  # the SVG namespace, no fetch
    assert "//" not in re.sub(r"""[a-z]+://|//.*|/\*.*?\*/""", "", text, flags=re.S), f"{name}: a protocol-relative URL"
    for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "style="):
        assert unsafe not in text, f"{name} uses {unsafe}"


def test_a_built_wheel_ships_the_page(tmp_path):
    """The Dockerfile does `pip install .`: a non-editable install must carry the page's files."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "app", source / "app", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy(ROOT / name, source / name)
    offline = ["--quiet", "--no-deps", "--no-build-isolation", "--no-index"]  # the venv's setuptools, no download
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *offline, "--wheel-dir", str(tmp_path / "wheel"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [f"app/api/static/{name}" for name in PAGE_FILES if f"app/api/static/{name}" not in names] == []
