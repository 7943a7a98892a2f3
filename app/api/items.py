"""Catalog item lookup and images."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from app.deps import GenerationDep, require_search_key
from app.errors import ApiError
from app.schemas import ErrorResponse, Item
from app.serving import LoadedGeneration
from indexer import StoredItem

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


@router.get("/items/{item_id}/image", responses={200: {"content": {"image/*": {}}}, **ERRORS},
            response_class=FileResponse)
def get_item_image(gen: GenerationDep, item_id: str) -> FileResponse:
    item = item_or_404(gen, item_id)
    path = Path(item.image)
    if not path.is_file():
        raise ApiError(404, "image_missing", f"the image file of {item_id!r} is no longer on disk")
    return FileResponse(path)
