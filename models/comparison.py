"""A trained checkpoint against the model it would replace: the record ``lookalike train``/``eval`` leave beside it.

A model trained at one resolution can beat its own start and still lose to the model that serves (another
resolution, another checkpoint). So training and evaluation score the checkpoint and the served model, each at
its own input size, on the same held-out products, and write the result to ``comparison.json`` beside the
checkpoint, keyed by the checkpoint's file name and model id (a retrained file does not inherit an old verdict).
``lookalike index --checkpoint`` reads it back and warns unless the checkpoint won.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.atomic import write_json_atomic

COMPARISON_FILE = "comparison.json"
METRIC = "recall@1"


def comparison_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).parent / COMPARISON_FILE


def record_comparison(checkpoint: str | Path, model_id: str, trained: dict[str, Any], served: dict[str, Any],
                      served_model_id: str, products: int, split: str) -> dict[str, Any]:
    """Store (and return) the checkpoint's metrics against the served model's on the same held-out products."""
    entry = {"model_id": model_id, "served_model_id": served_model_id, "split": split, "products": products,
             "metric": METRIC, "trained": trained, "served": served,
             "beats_served": bool(trained[METRIC] > served[METRIC])}
    path = comparison_path(checkpoint)
    table = _read(path)
    table[Path(checkpoint).name] = entry
    write_json_atomic(path, table, indent=1, sort_keys=True)
    return entry


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def served_comparison_warning(checkpoint: str | Path, model_id: str) -> str | None:
    """None when the recorded comparison says this checkpoint beats the served model; else why not."""
    entry = _read(comparison_path(checkpoint)).get(Path(checkpoint).name)
    if not isinstance(entry, dict) or entry.get("model_id") != model_id:
        return (f"{checkpoint} has no comparison against the served model on held-out products "
                f"(run: lookalike eval --checkpoint {checkpoint} --catalog ...)")
    if entry.get("beats_served"):
        return None
    metric = entry.get("metric", METRIC)
    return (f"{checkpoint} does not beat the served model on held-out products: {metric} "
            f"{entry['trained'][metric]:.3f} vs {entry['served'][metric]:.3f} ({entry['products']} "
            f"{entry['split']} products)")
