"""Batch jobs that turn a catalog into a served generation: ingest, extract, index, publish."""

from indexer.build import build_generation
from indexer.catalog import CatalogError, CatalogRow, read_catalog
from indexer.generations import GenerationError, Manifest, current_generation, list_generations, publish, read_manifest
from indexer.catalog_store import CatalogStore, StoredItem
from indexer.exact import exact_top_k
from indexer.vector_index import IndexSpec, VectorIndex
from indexer.vector_store import IdFilter, SearchParams, VectorStore

__all__ = [
    "CatalogError", "CatalogRow", "CatalogStore", "GenerationError", "IdFilter", "IndexSpec", "Manifest",
    "SearchParams", "StoredItem", "VectorIndex", "VectorStore", "build_generation", "current_generation",
    "exact_top_k", "list_generations", "publish", "read_catalog", "read_manifest",
]
