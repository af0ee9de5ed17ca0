"""The browser-facing security headers every response carries: Content-Security-Policy, framing, sniffing,
referrer and (over https only) HSTS.

Scripts and styles come only from this origin (no inline script, no eval, no inline style element), so an
injected tag cannot run; no other origin may frame a page (clickjacking of the signed-in pages). A pure ASGI
middleware, so streamed responses (SSE, downloads) pass through untouched. Must not import torch or `workers`.
"""

from __future__ import annotations

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    # Style attributes are set through the CSSOM by our scripts (static/js/app.js), which CSP allows;
    # no <style> element or style="" attribute is needed.
    "style-src 'self'",
    # The favicon is a data: URL; Swagger UI draws its icons as data: images.
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
# One year, the value HSTS preload lists expect; sent only over https, where the browser honours it.
STRICT_TRANSPORT_SECURITY = "max-age=31536000; includeSubDomains"

_ALWAYS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    # For browsers that predate frame-ancestors.
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP response that does not set them itself."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = list(_ALWAYS)
        # scope["scheme"] is what a trusted proxy said (ProxyHeadersMiddleware runs before this one).
        if scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", STRICT_TRANSPORT_SECURITY.encode()))

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
