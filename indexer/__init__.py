"""Batch jobs that turn a catalog into a served generation: ingest, extract, index, publish."""

from indexer.build import build_generation
from indexer.catalog import CatalogError, CatalogRow, read_catalog
from indexer.generations import GenerationError, Manifest, current_generation, list_generations, publish, read_manifest
from indexer.store import CatalogStore, StoredItem
from indexer.vector_index import IndexSpec, VectorIndex, choose_index_spec, exact_top_k

__all__ = [
    "CatalogError", "CatalogRow", "CatalogStore", "GenerationError", "IndexSpec", "Manifest", "StoredItem",
    "VectorIndex", "build_generation", "choose_index_spec", "current_generation", "exact_top_k", "list_generations",
    "publish", "read_catalog", "read_manifest",
]
