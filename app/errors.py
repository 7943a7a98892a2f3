"""Errors at the HTTP boundary: every caller mistake is a 4xx with {"error": {"code", "message"}}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models import ImageRejected


class ApiError(Exception):
    """A typed failure that maps to one HTTP status and a machine-readable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str, *, metrics: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body of the API, counted in ``lookalike_errors_total`` when metrics are given."""
    if metrics is not None:
        metrics.errors.labels(code).inc()
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _reply(request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return error_response(status, code, message, metrics=getattr(request.app.state, "metrics", None), headers=headers)


def image_error(exc: ImageRejected) -> ApiError:
    return ApiError(413 if exc.code == "image_too_large" else 400, exc.code, exc.message)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return _reply(request, exc.status, exc.code, exc.message)

    @app.exception_handler(ImageRejected)
    async def _image(request: Request, exc: ImageRejected) -> JSONResponse:
        err = image_error(exc)
        return _reply(request, err.status, err.code, err.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return _reply(request, 422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status_code, "http_error")
        return _reply(request, exc.status_code, code, str(exc.detail), exc.headers)
