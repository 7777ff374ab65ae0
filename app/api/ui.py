"""The status page at `/` and `/ui`: one HTML page, its script and its style, shipped in the package (no CDN)."""

from importlib.resources import files

from fastapi import APIRouter, Response

# the page loads nothing but itself and /api; its figures are rendered as text, never as markup
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
ASSETS = {  # path → (file under app/api/static, media type)
    "/": ("page.html", "text/html; charset=utf-8"),
    "/ui": ("page.html", "text/html; charset=utf-8"),
    "/ui/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/ui/page.css": ("page.css", "text/css; charset=utf-8"),
}


def status_page() -> APIRouter:
    """The page's routes, its files read once here, when the app is built, so a view reads no file."""
    static = files("app.api") / "static"
    router = APIRouter(include_in_schema=False)
    for path, (name, media_type) in ASSETS.items():
        router.add_api_route(path, _serve((static / name).read_bytes(), media_type), methods=["GET", "HEAD"])
    return router


def _serve(body: bytes, media_type: str):
    async def asset() -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    return asset
