"""Resumable extraction output: vector shards plus a manifest in a work directory keyed by job content.

work_root/extract-<key>/{shards.json, shard-00000.npz, shard-00001.npz, ...}

``key`` hashes the model id and the ordered list of distinct image content hashes, so re-running the same
job (same images, same model) finds the same directory and resumes; a catalog whose images or model changed
gets a fresh one. Shard ``i`` holds the vectors of distinct images ``[i*shard_size, (i+1)*shard_size)`` and
their content hashes. A shard is written to a temporary file and renamed into place, so a file named
``shard-*.npz`` is always complete; a complete shard is never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from models.atomic import atomic_path, write_bytes_atomic

log = logging.getLogger(__name__)

SHARD_MANIFEST = "shards.json"
DEFAULT_SHARD_SIZE = 4096


class ShardError(RuntimeError):
    """A work directory that does not belong to this job, or a shard whose content does not match its plan."""


def job_key(model_id: str, unique_hashes: Sequence[str]) -> str:
    """A short stable key for (model, images in order): the name of the job's work directory."""
    digest = hashlib.sha256(model_id.encode())
    for h in unique_hashes:
        digest.update(b"\n" + h.encode())
    return digest.hexdigest()[:20]


@dataclass(frozen=True)
class ShardLayout:
    """What a work directory will hold once complete; written once, checked on every resume."""

    key: str
    model_id: str
    dim: int
    total: int
    shard_size: int

    @property
    def shard_count(self) -> int:
        return -(-self.total // self.shard_size)

    def bounds(self, shard: int) -> tuple[int, int]:
        """[start, stop) of the distinct-image positions that shard ``shard`` covers."""
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.total)


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.npz"


class ShardSet:
    """One job's work directory: which shards are done, writing a shard atomically, reading them back."""

    def __init__(self, path: Path, plan: ShardLayout) -> None:
        self.path = path
        self.plan = plan

    @classmethod
    def open(cls, work_root: Path, model_id: str, dim: int, unique_hashes: Sequence[str],
             shard_size: int = DEFAULT_SHARD_SIZE) -> ShardSet:
        """Open (or create) the work directory of this job; an existing plan wins over ``shard_size``."""
        if shard_size < 1:
            raise ValueError("shard_size must be at least 1")
        key = job_key(model_id, unique_hashes)
        path = Path(work_root) / f"extract-{key}"
        path.mkdir(parents=True, exist_ok=True)
        manifest = path / SHARD_MANIFEST
        if manifest.is_file():
            plan = ShardLayout(**json.loads(manifest.read_text()))
            if (plan.key, plan.model_id, plan.dim, plan.total) != (key, model_id, dim, len(unique_hashes)):
                raise ShardError(f"{path} holds another job ({plan}); remove it to start over")
            log.info("resuming extraction in %s", path)
        else:
            plan = ShardLayout(key=key, model_id=model_id, dim=dim, total=len(unique_hashes), shard_size=shard_size)
            write_bytes_atomic(manifest, json.dumps(asdict(plan), indent=2).encode())
        return cls(path, plan)

    def shard_path(self, shard: int) -> Path:
        return self.path / shard_name(shard)

    def missing(self) -> list[int]:
        return [i for i in range(self.plan.shard_count) if not self.shard_path(i).is_file()]

    def write(self, shard: int, vectors: np.ndarray, hashes: Sequence[str]) -> Path:
        """Write one finished shard atomically; an existing shard is kept as it is (never rewritten)."""
        start, stop = self.plan.bounds(shard)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (stop - start, self.plan.dim) or len(hashes) != stop - start:
            raise ShardError(f"shard {shard} needs {stop - start}x{self.plan.dim} vectors, got {vectors.shape}")
        target = self.shard_path(shard)
        if target.exists():
            return target
        with atomic_path(target, fsync=True) as tmp, tmp.open("wb") as handle:
            np.savez(handle, vectors=vectors, hashes=np.asarray(list(hashes), dtype="U64"))
        return target

    def read(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, content hashes) of one complete shard."""
        with np.load(self.shard_path(shard)) as data:
            return data["vectors"], data["hashes"]

    def iter_shards(self, expected_hashes: Sequence[str] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(start position, vectors) of every shard in order; checks the hashes when given."""
        missing = self.missing()
        if missing:
            raise ShardError(f"{self.path}: shards {missing[:5]} are not extracted yet")
        for shard in range(self.plan.shard_count):
            vectors, hashes = self.read(shard)
            start, stop = self.plan.bounds(shard)
            if expected_hashes is not None and list(hashes) != list(expected_hashes[start:stop]):
                raise ShardError(f"{self.shard_path(shard)} does not hold the images it should")
            yield start, vectors

    def assemble(self, out_path: Path, row_to_unique: np.ndarray,
                 expected_hashes: Sequence[str] | None = None) -> np.ndarray:
        """Write vectors.npy (row i = vector of distinct image ``row_to_unique[i]``) shard by shard, on disk.

        The output is a memory-mapped .npy filled through a temporary file, so a catalog larger than RAM works
        and a crash leaves no half-written vectors.npy. Returns the result opened read-only (memory-mapped).
        """
        row_to_unique = np.asarray(row_to_unique, dtype=np.int64)
        with atomic_path(out_path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                            shape=(len(row_to_unique), self.plan.dim))
            order = np.argsort(row_to_unique, kind="stable")
            sorted_unique = row_to_unique[order]
            for start, vectors in self.iter_shards(expected_hashes):
                lo, hi = np.searchsorted(sorted_unique, [start, start + len(vectors)])
                rows = order[lo:hi]
                out[rows] = vectors[row_to_unique[rows] - start]
            out.flush()
            del out
        return np.load(out_path, mmap_mode="r")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

