"""Request and response models of the API."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Hit(BaseModel):
    """One result: a product (its best-matching image) or, with group=false, one image."""

    product_id: str
    item_id: str
    title: str
    category: str
    score: float = Field(description="cosine similarity to the query, in [-1, 1]")
    image_url: str
    attributes: dict[str, str] = {}


class SearchResponse(BaseModel):
    results: list[Hit]
    grouped: bool
    plan: str = Field(description="exact (candidate set scored exactly), index, or index+selector")
    candidates: int | None = Field(None, description="size of the keyword/candidate/category set, if any")
    unknown_candidate_ids: list[str] = []
    generation: str
    model_id: str
    timings_ms: dict[str, float]


class Item(BaseModel):
    item_id: str
    product_id: str
    title: str
    category: str
    image_url: str
    attributes: dict[str, str] = {}


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    generation: str | None
    model_id: str | None
    items: int


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
