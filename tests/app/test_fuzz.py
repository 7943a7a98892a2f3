"""Fuzz every operation of the OpenAPI schema (Schemathesis, in-process over ASGI): no input may cause a 5xx.

Valid (positive) and invalid (negative) inputs are generated from the schema, a bounded and derandomised number
per operation, so a run is repeatable and fits CI. Operations on an item are fuzzed twice: with generated item
ids (mostly unknown: 404) and with a real item id, so that the generated filters reach the search planner.
The admin operations are enabled (with a key) on a private copy of the test generation.
A failure prints the request that caused it.

Schemathesis' own ``schema.parametrize()`` over a fixture (``schemathesis.pytest.from_fixture``) breaks on
pytest 9 (it reads ``request.node._nodeid``), so the operations are listed from the app's schema at collection
time and each one's Hypothesis strategy is run here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the schemathesis package is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (hypothesis comes with schemathesis)
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402

MAX_EXAMPLES = int(os.environ.get("LOOKALIKE_FUZZ_EXAMPLES", "25"))  # per operation and mode; raise it for a deep run
SKIPPED_PATHS = {"/metrics"}  # Prometheus text, no inputs
KNOWN_ITEM = "p1-v0"
ADMIN_KEY = "fuzz-admin-key"  # from the synthetic catalog of tests/conftest.py


def _operations() -> list[tuple[str, str, bool]]:
    """(method, path, takes inputs) of every documented operation; building the app loads nothing: cheap."""
    paths = create_app(Settings(data_dir=Path("/nonexistent"), reload_interval_s=0, device="cpu")).openapi()["paths"]
    return [(method.upper(), path, bool(op.get("parameters") or op.get("requestBody")))
            for path, ops in sorted(paths.items()) if path not in SKIPPED_PATHS
            for method, op in ops.items() if method in {"get", "post", "put", "patch", "delete"}]


# Negative cases need something to break: operations without inputs get only positive ones.
CASES = [(m, p, mode, item) for m, p, has_inputs in _operations()
         for mode in ((GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_inputs else (GenerationMode.POSITIVE,))
         for item in ((None, KNOWN_ITEM) if "{item_id}" in p else (None,))]


@pytest.fixture(scope="module")
def api_schema(built_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    # A private copy of the generation, with /admin enabled: fuzzed upserts and deletes must not touch the
    # shared fixture. Small limits so that generated uploads reach the limit checks quickly.
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    shutil.copytree(built_data_dir, data_dir)
    app = create_app(Settings(data_dir=data_dir, reload_interval_s=0, device="cpu", max_upload_bytes=200_000,
                              max_pixels=4_000_000, admin_api_key=ADMIN_KEY))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize(("method", "path", "mode", "item_id"), CASES,
                         ids=[f"{m} {p} {mode.value}{' ' + i if i else ''}" for m, p, mode, i in CASES])
def test_no_input_causes_a_server_error(api_schema, method: str, path: str, mode: GenerationMode,  # type: ignore[no-untyped-def]
                                        item_id: str | None) -> None:
    operation = api_schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode,
                                     path_parameters={"item_id": item_id} if item_id else None)

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:  # type: ignore[no-untyped-def]
        case.call_and_validate(checks=[not_a_server_error], headers={"X-API-Key": ADMIN_KEY})

    fuzz()
