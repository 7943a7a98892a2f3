"""Catalog item lookup and images."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from app.deps import GenerationDep, SettingsDep, require_search_key
from app.errors import ApiError
from app.schemas import ErrorResponse, Item
from app.serving import LoadedGeneration
from indexer import StoredItem
from indexer.file_roots import FileRefused, confined_file

router = APIRouter(tags=["catalog"], dependencies=[Depends(require_search_key)])
ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 503)}


def item_or_404(gen: LoadedGeneration, item_id: str) -> StoredItem:
    item = gen.catalog.by_item_id(item_id)
    if item is None:
        raise ApiError(404, "unknown_item", f"no item {item_id!r} in generation {gen.name}")
    return item


@router.get("/items/{item_id}", response_model=Item, responses=ERRORS)
def get_item(gen: GenerationDep, item_id: str) -> Item:
    item = item_or_404(gen, item_id)
    return Item(item_id=item.item_id, product_id=item.product_id, title=item.title, category=item.category,
                image_url=f"/items/{item.item_id}/image", attributes=item.attributes)


@router.get("/items/{item_id}/image", responses={200: {
    "description": "the image file, sent with its own image/* content type",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}, **ERRORS},
            response_class=FileResponse)
def get_item_image(gen: GenerationDep, settings: SettingsDep, item_id: str) -> FileResponse:
    """The item's image file, if it lies inside the configured roots (or beside the catalog the generation was
    built from) and is a regular file of bounded size."""
    item = item_or_404(gen, item_id)
    roots = [*settings.roots(), settings.data_dir / settings.upload_dir_name, Path(gen.manifest.catalog).parent]
    try:
        path = confined_file(item.image, roots, settings.max_image_file_bytes)
    except FileRefused as exc:
        raise ApiError(404, "image_missing", f"the image of {item_id!r} cannot be served: {exc.message}") from None
    return FileResponse(path)
