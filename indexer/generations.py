"""Versioned index generations on disk, and the pointer that says which one is served.

data_dir/generations/gen-000007/{catalog.db, vectors.npy, index.faiss, manifest.json}
data_dir/CURRENT holds the served generation's name; it is replaced with os.replace, so readers see the
old or the new name, never a half-written file. A build writes a new directory beside the served one.
"""

from __future__ import annotations

import shutil
import re
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, Field
from models.atomic import write_text_atomic

POINTER = "CURRENT"
PREFIX = "gen-"
NAME = re.compile(r"gen-[0-9]{6,}")
WORK = "work"  # data_dir/work: resumable extraction shards of the job in progress

# The files of one generation directory.
MANIFEST = "manifest.json"
CATALOG_DB = "catalog.db"
VECTORS = "vectors.npy"
COMPACT = "compact.npz"  # the compact-vector transform (PCA) catalog vectors and queries go through
VECTOR_STORE = "store"  # the FAISS vector store's directory (flat codes, ANN index, store.json)
INDEX = "index.faiss"  # generations made before the vector store; now inside VECTOR_STORE


class GenerationError(RuntimeError):
    """No usable generation, or one that does not fit the running model."""


class Manifest(BaseModel):
    """What a generation holds and what made it; the service checks it before serving."""

    generation: str
    created_at: str
    model_id: str
    # the embedding network's ModelConfig as a dict (older manifests call it model_config_json)
    embedding_config: dict[str, Any] = Field(validation_alias=AliasChoices("embedding_config", "model_config_json"))
    checkpoint: str | None = None
    dim: int
    count: int
    unique_images: int
    index_factory: str
    nprobe: int = 1
    catalog: str
    catalog_sha256: str = ""
    seconds: dict[str, float] = {}
    # Measured by the index build (absent from older manifests): recall@10 against exact search on held-out
    # queries at ``nprobe``, the index's estimated resident memory, how it was chosen and where it was built.
    recall_at_10: float | None = None
    index_memory_bytes: int | None = None
    index_build_seconds: float | None = None
    index_kind: str | None = None
    index_device: str = "cpu"
    # How the vectors were computed (absent from older manifests: PyTorch fp32). Query vectors must come from the
    # same runtime and precision, or be shown to agree (see indexer.runtime_check). ``runtime_agreement`` is the
    # measured cosine of this runtime's vectors against PyTorch fp32 on a sample of the catalog ({mean, min,
    # count}); int8 also records its calibration images and, for the demo catalog, its Recall@1.
    runtime: str = "torch"
    precision: str = "fp32"
    runtime_agreement: dict[str, float] | None = None
    calibration_images: list[str] = []
    demo_recall_at_1: float | None = None
    # Where the vectors live: "faiss" (files in the generation) or "milvus" (the collection named here).
    vector_backend: str = "faiss"
    milvus_collection: str | None = None
    # The compact vectors the store keeps (absent from older manifests: the embeddings themselves, float32).
    compact: str = "identity"       # identity | pca<dim> | pca-whiten<dim>
    vector_dim: int | None = None   # the store's dimension (None: ``dim``)
    vector_code: str = "float32"    # float32 | fp16 | sq8


def generations_dir(data_dir: Path) -> Path:
    return data_dir / "generations"


def check_generation_name(name: str) -> str:
    """``name`` if it is a generation name (gen-NNNNNN), so it can never point outside generations/."""
    if not NAME.fullmatch(name):
        raise GenerationError(f"{name!r} is not a generation name (gen- and six or more digits)")
    return name


def list_generations(data_dir: Path) -> list[str]:
    """Completed generations (those with a manifest), oldest first."""
    root = generations_dir(data_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if NAME.fullmatch(p.name) and (p / MANIFEST).is_file())


def new_generation_dir(data_dir: Path) -> Path:
    """A fresh directory named one past the highest existing generation (complete or not)."""
    root = generations_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[len(PREFIX):]) for p in root.iterdir() if p.name[len(PREFIX):].isdigit()]
    path = root / f"{PREFIX}{max(numbers, default=0) + 1:06d}"
    path.mkdir()
    return path


def publish(data_dir: Path, generation: str) -> None:
    """Make ``generation`` the served one, atomically."""
    check_generation_name(generation)
    if not (generations_dir(data_dir) / generation / MANIFEST).is_file():
        raise GenerationError(f"generation {generation} is incomplete (no manifest)")
    write_text_atomic(data_dir / POINTER, generation + "\n")


def current_generation(data_dir: Path) -> str | None:
    """The served generation's name; None before the first publish. A pointer naming no generation (edited
    by hand) is a GenerationError."""
    pointer = data_dir / POINTER
    if not pointer.is_file():
        return None
    name = pointer.read_text(errors="replace")[:256].strip()
    return check_generation_name(name) if name else None


def read_manifest(generation_dir: Path) -> Manifest:
    """The generation's manifest; a missing, unreadable or invalid one is a GenerationError."""
    try:
        return Manifest.model_validate_json((generation_dir / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise GenerationError(f"{generation_dir} has no manifest") from None
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise GenerationError(f"{generation_dir} has an unreadable manifest: {str(exc).splitlines()[0]}") from None


def prune_generations(data_dir: Path, keep: int) -> list[str]:
    """Delete the oldest complete generations beyond ``keep``, never the served one; returns what went."""
    served = current_generation(data_dir)
    names = list_generations(data_dir)
    doomed = [n for n in names[:-keep] if n != served] if keep > 0 else []
    for name in doomed:
        shutil.rmtree(generations_dir(data_dir) / name, ignore_errors=True)
    return doomed
