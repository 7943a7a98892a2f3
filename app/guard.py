"""The request guard: API keys and body-size limits, checked before any request body is read.

A pure ASGI middleware, so nothing is buffered: a request over its route's limit is refused from its
Content-Length before the body is read, and a body without one (chunked) is counted while it streams and cut
off at the limit. Keys are checked before the first body byte is read, so an unauthenticated upload costs
nothing. The routes' own ``Security`` dependencies stay (they document the keys in OpenAPI and check again).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from starlette.exceptions import HTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.deps import key_error
from app.errors import error_response

KEY_HEADER = b"x-api-key"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes its route's limit; rendered as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the {limit}-byte limit for this route")
        self.limit = limit


@dataclass(frozen=True)
class RoutePolicy:
    """What a route needs before its body is read: a key (``admin``, ``search`` or None) and a body limit
    (None: the guard's default). ``path`` is a Starlette path template ("/admin/{rest:path}" for a prefix)."""

    method: str  # "*" for any
    path: str
    key: str | None
    max_body: int | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method)) and _compiled(self.path).fullmatch(path) is not None


@lru_cache(maxsize=64)
def _compiled(template: str) -> re.Pattern[str]:
    return compile_path(template)[0]


class RequestGuard:
    """Refuse bad keys (401/403), over-long query strings (414) and over-large bodies (413) early.

    ``policies`` are tried in order; the first that matches a request decides. tests/app/test_openapi_client.py
    checks that they cover every route that declares a key.
    """

    def __init__(self, app: ASGIApp, policies: Sequence[RoutePolicy], admin_key: str | None, search_key: str | None,
                 default_body_limit: int, max_query_bytes: int) -> None:
        self.app = app
        self.policies = list(policies)
        self.keys = {"admin": admin_key, "search": search_key}
        self.default_body_limit = default_body_limit
        self.max_query_bytes = max_query_bytes

    def policy(self, method: str, path: str) -> RoutePolicy | None:
        return next((p for p in self.policies if p.matches(method, path)), None)

    def _refusal(self, scope: Scope, policy: RoutePolicy | None) -> tuple[int, str, str] | None:
        if len(scope.get("query_string", b"")) > self.max_query_bytes:
            return 414, "query_too_long", f"the query string is over the {self.max_query_bytes}-byte limit"
        if policy is None or policy.key is None or scope["method"] == "OPTIONS":
            return None
        if policy.key == "admin" and self.keys["admin"] is None:
            return 403, "admin_disabled", "admin endpoints are disabled: set LOOKALIKE_ADMIN_API_KEY"
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == KEY_HEADER), None)
        return key_error(self.keys[policy.key], given)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policy(scope["method"], scope["path"])
        app_state = getattr(scope.get("app"), "state", None)
        metrics = getattr(app_state, "metrics", None)
        refusal = self._refusal(scope, policy)
        limit = policy.max_body if policy is not None and policy.max_body is not None else self.default_body_limit
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if refusal is None and declared is not None and (not declared.isdigit() or int(declared) > limit):
            refusal = (413, "body_too_large", f"request body is over the {limit}-byte limit for this route") \
                if declared.isdigit() else (400, "bad_content_length", "Content-Length is not a number")
        if refusal is not None:
            await error_response(*refusal, metrics=metrics, headers={"Connection": "close"})(scope, receive, send)
            return

        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except BodyTooLarge as exc:  # raised where no handler caught it (e.g. outside a route)
            if started:
                raise
            await error_response(413, "body_too_large", str(exc.detail), metrics=metrics,
                                 headers={"Connection": "close"})(scope, receive, send)
