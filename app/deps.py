"""FastAPI dependencies: settings, service state, the served generation, API keys."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from app.errors import ApiError
from app.metrics import ServiceMetrics
from app.serving import LoadedGeneration, ServiceState
from app.settings import Settings

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_generation(request: Request) -> LoadedGeneration:
    state: ServiceState = request.app.state.service
    gen = state.generation
    if gen is None or state.embedder is None:
        raise ApiError(503, "not_ready", "no index generation is loaded yet")
    return gen


def key_error(expected: str | None, given: str | None) -> tuple[int, str, str] | None:
    """(status, code, message) when ``given`` is not the ``expected`` key; None when it is (or none is needed)."""
    if expected is not None and (given is None or not secrets.compare_digest(given.encode(), expected.encode())):
        return 401, "unauthorized", "a valid X-API-Key header is required"
    return None


def _check_key(expected: str | None, given: str | None) -> None:
    if (error := key_error(expected, given)) is not None:
        raise ApiError(*error)


def require_search_key(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    _check_key(request.app.state.settings.search_api_key, key)


def require_admin_key(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    expected = request.app.state.settings.admin_api_key
    if expected is None:
        raise ApiError(403, "admin_disabled", "admin endpoints are disabled: set LOOKALIKE_ADMIN_API_KEY")
    _check_key(expected, key)


SettingsDep = Annotated[Settings, Depends(get_settings)]
StateDep = Annotated[ServiceState, Depends(get_state)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
GenerationDep = Annotated[LoadedGeneration, Depends(get_generation)]
