"""Reading a search request in any of its three forms: multipart upload, raw image body, base64 JSON."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.errors import ApiError
from app.schemas import PhotoSearchOptions, SearchJSON, SearchOptions
from indexer.item_ids import JoinedIds

LIST_FIELDS = ("candidate_ids", "category")
# base64 grows data by 4/3; leave room for the JSON around it.
JSON_OVERHEAD = 64 * 1024


def split_list(values: list[str] | None) -> list[str] | None:
    """Accept repeated fields and comma-separated values alike."""
    if values is None:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def candidate_list(values: list[str] | None) -> list[str] | JoinedIds | None:
    """The candidate ids as ``split_list`` reads them; when splitting and stripping would change nothing (ASCII,
    no spaces, no empty id), the values joined by commas as one ``JoinedIds``: a 100k-id list sent as one
    comma-separated string is then never turned into 100k Python strings."""
    if values is None:
        return None
    joined = JoinedIds.make(",".join(values))
    return joined if joined is not None else split_list(values)


def validated(model: type[SearchOptions], data: dict[str, Any] | bytes) -> Any:
    try:
        return model.model_validate_json(data) if isinstance(data, bytes) else model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "upload_too_large", f"request body is over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "upload_too_large", f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def check_image(data: bytes, limit: int) -> bytes:
    """Refuse an empty image or one over the byte limit."""
    if len(data) > limit:
        raise ApiError(413, "upload_too_large", f"image is over the {limit}-byte limit")
    if not data:
        raise ApiError(400, "empty_upload", "the image is empty")
    return data


def decode_base64_image(text: str, limit: int) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", "image_base64 is not valid base64") from None
    return check_image(data, limit)


def _query_options(request: Request) -> dict[str, Any]:
    params = request.query_params
    options: dict[str, Any] = {k: v for k, v in params.items() if k not in LIST_FIELDS}
    for name in LIST_FIELDS:
        if name in params:
            options[name] = split_list(params.getlist(name))
    return options


def _parse_search_json(body: bytes, max_bytes: int) -> tuple[bytes, PhotoSearchOptions]:
    """Parse and decode a JSON search body (in a worker thread: a large body must not hold up the event loop)."""
    parsed: SearchJSON = validated(SearchJSON, body)
    image = decode_base64_image(parsed.image_base64, max_bytes)
    return image, PhotoSearchOptions(**parsed.model_dump(exclude={"image_base64"}, exclude_unset=True))


async def read_search_request(request: Request, max_bytes: int,
                              options_bytes: int = JSON_OVERHEAD) -> tuple[bytes, PhotoSearchOptions]:
    """Image bytes and options, whatever the content type; options in the body override the query string.

    The body as a whole is bounded by the request guard (app.guard) while it streams; ``options_bytes`` is
    the room for options beside the image.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    options = _query_options(request)
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=64, max_part_size=options_bytes)
        image = form.get("image")
        for key, value in form.multi_items():
            if key == "image" or isinstance(value, UploadFile):
                continue
            options[key] = split_list(form.getlist(key)) if key in LIST_FIELDS else value
        if not isinstance(image, UploadFile):
            raise RequestValidationError([{"loc": ("body", "image"), "msg": "Field required (an image file)",
                                           "type": "missing"}])
        data = await image.read(max_bytes + 1)
        return check_image(data, max_bytes), validated(PhotoSearchOptions, options)
    if content_type == "application/json":
        body = await read_body(request, max_bytes * 4 // 3 + options_bytes)
        return await run_in_threadpool(_parse_search_json, body, max_bytes)
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return check_image(await read_body(request, max_bytes), max_bytes), validated(PhotoSearchOptions, options)
    raise ApiError(415, "unsupported_media_type",
                   "send multipart/form-data (field 'image'), a raw image body (image/*), or JSON with image_base64")
