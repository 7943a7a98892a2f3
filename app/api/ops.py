"""Operations: liveness, readiness, metrics, and the demo web page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import MetricsDep, StateDep
from app.schemas import Health, Ready

router = APIRouter()
STATIC = Path(__file__).resolve().parent.parent / "static"


@router.get("/healthz", response_model=Health, tags=["ops"])
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}}, tags=["ops"])
def readyz(request: Request, state: StateDep, response: Response) -> Ready:
    """Ready when a generation is served and the reload watcher (if enabled) is alive to follow the pointer."""
    gen = state.generation
    watcher = request.app.state.watcher.status
    if gen is None or watcher == "stopped":
        response.status_code = 503
    status = "not_ready" if gen is None else "watcher_stopped" if watcher == "stopped" else "ready"
    return Ready(status=status, generation=gen.name if gen else None, model_id=gen.manifest.model_id if gen else None,
                 items=gen.catalog.count if gen else 0, watcher=watcher, last_reload_error=state.last_error)


@router.get("/metrics", tags=["ops"], response_class=Response)
def metrics(state: StateDep, metrics: MetricsDep) -> Response:
    if state.generation is not None:
        metrics.items.set(state.generation.catalog.count)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=FileResponse, include_in_schema=False)
def web_page() -> FileResponse:
    """A page where a person drops a photo, sees similar products, refines by keyword, clicks for more like this."""
    return FileResponse(STATIC / "index.html", media_type="text/html")
