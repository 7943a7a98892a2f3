"""Request and response models of the API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Hard caps on list parameters, whatever the settings say (the settings' own limits are checked on top, after
# comma-separated values are split): a list can never be large enough to exhaust memory or SQL variables.
MAX_LIST_ITEMS = 100_000
MAX_CATEGORIES = 10_000
MAX_BATCH_QUERIES = 256
MAX_ATTRIBUTES = 100


class Hit(BaseModel):
    """One result: a product (its best-matching image) or, with group=false, one image."""

    product_id: str
    item_id: str
    title: str
    category: str
    score: float = Field(description="cosine similarity to the query, in [-1, 1]")
    image_url: str
    attributes: dict[str, str] = {}


class SearchOptions(BaseModel):
    """What to search for besides the image; from query parameters, form fields or the JSON body."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(10, ge=1, description="results per page")
    offset: int = Field(0, ge=0, le=10_000, description="results to skip (pagination)")
    q: str | None = Field(None, max_length=500, description="keywords: rank only items whose title/category match")
    candidate_ids: list[str] | None = Field(None, max_length=MAX_LIST_ITEMS,
                                            description="rank only these item ids (e.g. the shop's own hits)")
    category: list[str] | None = Field(None, max_length=MAX_CATEGORIES, description="rank only items of these categories")
    group: bool = Field(True, description="one result per product (its best image)")
    keyword_weight: float = Field(0.0, ge=0.0, le=1.0, description="with q: blend of BM25 (1) and visual (0) scores")


class LocaliseOptions(BaseModel):
    """Where in the photo to search: the most salient object found (default), a caller's box, or every object."""

    box: str | None = Field(None, max_length=100, pattern=r"^\s*[0-9.eE+-]+(\s*,\s*[0-9.eE+-]+){3}\s*$",
                            description="x,y,w,h of the region to search, in pixels or (all <= 1) in fractions of "
                                        "the photo; skips choosing a detected object")
    objects: str = Field("best", pattern="^(best|all)$",
                         description="best: search the most salient object; all: also results for every other "
                                     "detected object")
    localise: bool = Field(True, description="false: search the whole photo, as it is")


class PhotoSearchOptions(SearchOptions, LocaliseOptions):
    """Options of a search by photo: what to search for and where in the photo."""


class SimilarOptions(SearchOptions):
    same_product: bool = Field(False, description="include other images of the item's own product")


class SearchJSON(PhotoSearchOptions):
    """A search with the image inline, base64-encoded."""

    image_base64: str = Field(min_length=1, description="the query image, base64 (standard alphabet)")


class BatchSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: list[SearchJSON] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)


class QueryBox(BaseModel):
    """A region of the query photo, in the photo's pixels (after EXIF orientation)."""

    x: float
    y: float
    w: float
    h: float
    localised: bool = Field(description="true when the localiser found this object; false for a caller's box or "
                                        "the whole photo")
    source: str = Field(description="detected, caller, whole (nothing found, or localisation off) or catalog_photo "
                                    "(a plain-backdrop photo searched whole; its objects are still listed)")
    score: float | None = Field(None, description="the localiser's confidence, for detected objects")
    matted: bool = Field(False, description="true when the object was cut out with the localiser's mask and put on "
                                            "white before embedding (MATTE_OBJECTS), as catalog images show products")


class DetectedObject(BaseModel):
    """Another object found in the photo; with objects=all, its own results too."""

    box: QueryBox
    results: list[Hit] | None = None


class PredictedCategory(BaseModel):
    """The query's category as the category probe predicts it (CATEGORY_ROUTING)."""

    name: str
    probability: float


class SearchResponse(BaseModel):
    results: list[Hit]
    grouped: bool
    offset: int = 0
    has_more: bool = False
    plan: str = Field(description="exact (candidate set scored exactly), index, or index+selector")
    candidates: int | None = Field(None, description="size of the keyword/candidate/category set, if any")
    unknown_candidate_ids: list[str] = []
    generation: str
    model_id: str
    timings_ms: dict[str, float]
    box: QueryBox | None = Field(None, description="the region of the photo searched (photo searches only)")
    objects: list[DetectedObject] = Field([], description="the other objects found in the photo")
    category: PredictedCategory | None = Field(None, description="the query's predicted category, when category "
                                               "routing is on (results are nudged towards it)")


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
    status: str = Field(description="ready, not_ready (no generation) or watcher_stopped (hot swap has stopped)")
    generation: str | None
    model_id: str | None
    items: int
    watcher: str = Field("disabled", description="the reload watcher: running, stopped or disabled")
    last_reload_error: str | None = Field(None, description="why the last generation offered was refused")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class BatchSearchResponse(BaseModel):
    responses: list[SearchResponse]


class ItemUpdate(BaseModel):
    """Metadata of an item added or replaced between full rebuilds."""

    model_config = ConfigDict(extra="forbid")

    product_id: str = Field(min_length=1, max_length=256)
    title: str = Field("", max_length=1000)
    category: str = Field("", max_length=256)
    description: str = Field("", max_length=10_000)
    attributes: dict[str, str] = Field({}, max_length=MAX_ATTRIBUTES)


class ItemChange(BaseModel):
    item_id: str
    status: str = Field(description="created, updated or deleted")
    generation: str
    version: int = Field(description="the generation's delta version this change committed as (changes apply in "
                         "version order)")


class ReloadResult(BaseModel):
    generation: str
    model_id: str
    items: int


class ReindexJob(BaseModel):
    state: str = Field(description="idle, running, done or failed")
    catalog: str | None = None
    generation: str | None = None
    message: str | None = None


class ReindexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    catalog: str = Field(min_length=1, description="catalog file path on the server")
