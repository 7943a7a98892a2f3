"""Operations: liveness, readiness, metrics, and the demo web page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
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
def readyz(state: StateDep, response: Response) -> Ready:
    gen = state.generation
    if gen is None:
        response.status_code = 503
        return Ready(status="not_ready", generation=None, model_id=None, items=0)
    return Ready(status="ready", generation=gen.name, model_id=gen.manifest.model_id, items=gen.catalog.count)


@router.get("/metrics", tags=["ops"], response_class=Response)
def metrics(state: StateDep, metrics: MetricsDep) -> Response:
    if state.generation is not None:
        metrics.items.set(state.generation.catalog.count)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=FileResponse, include_in_schema=False)
def web_page() -> FileResponse:
    """A page where a person drops a photo, sees similar products, refines by keyword, clicks for more like this."""
    return FileResponse(STATIC / "index.html", media_type="text/html")
