"""The one settings object of a process, read from LOOKALIKE_* environment variables (or a .env file)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.build import BuildOptions
from indexer.compact import DEFAULT_COMPACT_DIM, DEFAULT_COMPACT_WHITEN
from indexer.index_choice import DEFAULT_CODE, TARGET_LATENCY_MS, TARGET_RECALL
from indexer.milvus_store import MilvusTarget
from models.runtime import RuntimeOptions


class Settings(BaseSettings):
    """Paths, limits and tuning for the service and the batch jobs; created once and passed down."""

    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    demo_dir: Path = Path("data/demo")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    device: str = "auto"
    runtime: str = Field(default="auto", pattern="^(auto|torch|openvino|onnxruntime)$",
                         description="inference engine; auto: OpenVINO (else ONNX Runtime, else PyTorch) on a CPU, "
                         "PyTorch on CUDA")
    precision: str = Field(default="auto", pattern="^(auto|fp32|bf16|int8)$",
                           description="auto: bf16 where the engine runs it natively, else fp32; int8 only when asked")
    runtime_threads: int | None = Field(default=None, ge=1, description="threads per forward for OpenVINO/ONNX "
                                        "Runtime; None: every core on one request at a time")
    runtime_cache_dir: Path | None = Field(default=None, description="exported models; None: data_dir/runtime-cache")
    torch_compile: bool = Field(default=True, description="torch.compile the network on CUDA")
    runtime_min_cosine: float = Field(default=0.995, gt=0, le=1, description="a generation embedded by another "
                                      "runtime/precision is served only if it agrees this well (mean cosine)")
    torch_threads: int = Field(default=1, ge=1, description="threads per model forward in the service; concurrent "
                               "requests run side by side, so 1 keeps a small CPU from being oversubscribed")
    max_concurrent_forwards: int | None = Field(default=None, ge=1, description="None: one per core")

    # request limits (README "Limits"): every body, image, list and file a caller can make us handle is bounded
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="one image, as sent")
    max_batch_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, description="the whole /search/batch body")
    max_small_body_bytes: int = Field(default=64 * 1024, ge=1024, description="bodies of every other route")
    max_query_bytes: int = Field(default=1024 * 1024, ge=1024, description="the URL's query string")
    max_pixels: int = Field(default=40_000_000, ge=64 * 64)
    max_aspect_ratio: float = Field(default=10.0, ge=1.0, description="long side over short side of an image")
    max_k: int = Field(default=100, ge=1)
    max_candidates: int = Field(default=100_000, ge=1)
    max_categories: int = Field(default=1000, ge=1)
    max_batch_queries: int = Field(default=32, ge=1)
    request_timeout_s: float = Field(default=30.0, gt=0)
    file_roots: list[Path] = Field(default_factory=list, description="folders whose files a caller may make the "
                                   "service open (reindex catalogs and their images); empty: data_dir and demo_dir")
    max_catalog_bytes: int = Field(default=1024**3, ge=1, description="a catalog file given to /admin/reindex")
    max_image_file_bytes: int = Field(default=50 * 1024 * 1024, ge=1, description="an image file read or served")

    # search planning
    exact_threshold: int = Field(default=100_000, ge=0, description="candidate sets up to this size are scored exactly")
    overfetch: int = Field(default=4, ge=1, description="images fetched per wanted product when grouping")

    # indexing
    flat_threshold: int | None = Field(default=None, ge=1, description="exact Flat index up to this many vectors "
                                      "(None: while an exact scan meets index_latency_ms)")
    index_latency_ms: float = Field(default=TARGET_LATENCY_MS, gt=0,
                                    description="single-query search target on one core that picks the index kind")
    target_recall: float = Field(default=TARGET_RECALL, gt=0, le=1, description="recall@10 the index is tuned to")
    compact_dim: int = Field(default=DEFAULT_COMPACT_DIM or 0, ge=0, description="PCA dimension of the stored "
                             "and searched vectors (0: the embeddings themselves)")
    compact_whiten: bool = Field(default=DEFAULT_COMPACT_WHITEN, description="whiten the PCA (scale each component "
                                 "to unit variance)")
    vector_code: str = Field(default=DEFAULT_CODE, pattern="^(float32|fp16|sq8)$", description="codes of the stored "
                             "vectors (a memory budget may take smaller ones)")
    build_threads: int = Field(default=1, ge=0, description="FAISS threads building an index (0: every core; 1 "
                               "on a shared machine, where spinning OpenMP threads stall k-means)")
    batch_size: int = Field(default=64, ge=1)
    workers: int = Field(default=2, ge=0)
    keep_generations: int = Field(default=3, ge=1)
    checkpoint: str | None = None

    # where the vectors live: FAISS files in each generation (default), or Milvus (one collection per generation)
    vector_backend: str = Field(default="faiss", pattern="^(faiss|milvus)$")
    milvus_uri: str = Field(default="data/milvus.db", description="a file path runs embedded milvus-lite (one "
                            "process at a time); http://host:19530 a Milvus standalone or cluster")
    milvus_token: str | None = Field(default=None, description="user:password or API key of a Milvus server")
    milvus_prefix: str = Field(default="lookalike", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                               description="collections are <prefix>_gen_NNNNNN; the served one is <prefix>_served")

    # query localisation (find the product in a shopper's photo, then embed its crop)
    localise: bool = Field(default=True, description="search the most salient object found in the photo by default")
    localiser_weights: Path | None = Field(default=None, description="None: the packaged models/weights/localiser.pt")
    localiser_min_score: float = Field(default=0.3, ge=0, le=1, description="detections below this score are "
                                       "ignored; with none left the whole photo is searched")
    crop_margin: float = Field(default=0.1, ge=0, le=1, description="context kept around a box on each side")
    localiser_warm_shapes: bool = Field(default=True, description="compile the localiser for every photo shape "
                                        "at start-up (OpenVINO), so no query pays a compile (~1 s cold)")
    localise_draft_factor: int = Field(default=3, ge=1, le=16, description="decode photos at this multiple of the "
                                       "embedding size, so that a crop keeps detail")
    category_routing: bool = Field(default=False, description="predict a photo query's category (a linear probe "
                                   "on the generation's vectors), show it and nudge results towards it")
    category_route_weight: float = Field(default=0.1, ge=0, le=1, description="score + this x p(category)")
    whole_catalog_photos: bool = Field(default=True, description="search a photo whole when its border is plain "
                                       "(a catalog-style photo: cropping it costs R@1); its objects are still listed")
    matte_objects: bool = Field(default=False, description="cut the searched object out with the localiser's mask "
                                "head (when its weights have one: `lookalike train-mask`) and put it on white before "
                                "embedding, as catalog images show products; a region whose mask is empty is searched "
                                "as a plain crop. Off by default: the trained head does not beat the plain crop yet "
                                "(README: shoppers' photos)")

    # service behaviour
    reload_interval_s: float = Field(default=2.0, ge=0, description="0 disables watching for new generations")
    retire_after_s: float = Field(default=120.0, ge=0, description="a replaced generation's files are closed this "
                                  "long after the swap (requests still holding it finish first)")
    admin_api_key: str | None = Field(default=None, description="X-API-Key for /admin; None disables /admin")
    search_api_key: str | None = Field(default=None, description="X-API-Key for search; None leaves search open")
    cors_origins: list[str] = Field(default_factory=list, description='e.g. ["https://shop.example"]')
    upload_dir_name: str = "uploads"
    micro_batching: str = Field(default="auto", pattern="^(auto|on|off)$",
                                description="auto: on for a GPU, off on the CPU (where batching measured slower)")
    batch_window_ms: float = Field(default=3.0, ge=0, description="micro-batching window for concurrent queries")
    max_batch_size: int = Field(default=16, ge=1)

    def build_options(self, **overrides: Any) -> BuildOptions:
        """The re-index job's options from these settings; ``overrides`` set per-run choices (CLI flags)."""
        fields: dict[str, Any] = {"checkpoint": self.checkpoint, "flat_threshold": self.flat_threshold,
                                  "latency_ms": self.index_latency_ms, "target_recall": self.target_recall,
                                  "compact_dim": self.compact_dim or None, "compact_whiten": self.compact_whiten,
                                  "vector_code": self.vector_code, "build_threads": self.build_threads or None,
                                  "batch_size": self.batch_size, "workers": self.workers,
                                  "keep": self.keep_generations, "max_image_bytes": self.max_image_file_bytes,
                                  "milvus": self.milvus_target()}
        return BuildOptions(**{**fields, **overrides})

    def runtime_options(self, calibration_images: Sequence[Path] = ()) -> RuntimeOptions:
        """How this process runs the network (see ``models.runtime``)."""
        return RuntimeOptions(runtime=self.runtime, precision=self.precision, threads=self.runtime_threads,
                              cache_dir=self.runtime_cache_dir or self.data_dir / "runtime-cache",
                              compile=self.torch_compile, calibration_images=tuple(calibration_images))

    def roots(self) -> list[Path]:
        """The configured file roots, resolved (default: the data and demo folders)."""
        return [p.resolve() for p in (self.file_roots or [self.data_dir, self.demo_dir])]

    def milvus_target(self) -> MilvusTarget | None:
        """The Milvus to keep new generations' vectors in (None: FAISS files); serving a Milvus generation needs it."""
        if self.vector_backend != "milvus":
            return None
        return MilvusTarget(self.milvus_uri, self.milvus_token, self.milvus_prefix)
