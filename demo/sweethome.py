"""Read Sweet Home 3D furniture libraries (``.sh3f``) into plain records.

The Debian package ``sweethome3d-furniture`` ships five ``.sh3f`` zips with
~820 freely licensed furniture models.  Each zip holds a Java properties file
(``PluginFurnitureCatalog.properties``) describing the items, plus the PNG
icons and OBJ/MTL models it references.  This module turns that into
:class:`FurnitureItem` records the demo catalog builder can work from.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

DEBIAN_FURNITURE_DIR = Path("/usr/share/sweethome3d/furniture")
CATALOG_ENTRY = "PluginFurnitureCatalog.properties"

__all__ = [
    "DEBIAN_FURNITURE_DIR",
    "DemoDataMissing",
    "FurnitureItem",
    "parse_java_properties",
    "read_furniture_catalog",
    "slugify",
]


class DemoDataMissing(FileNotFoundError):
    """The furniture libraries the demo catalog is built from are not installed."""


@dataclass(frozen=True)
class FurnitureItem:
    """One furniture item of a ``.sh3f`` library.

    ``slug`` is unique across all libraries read together and safe to use as a
    file/directory name; it doubles as the demo catalog's product id.  ``icon``
    and ``model`` are member names inside ``source`` (no leading slash).
    ``model_rotation`` is the 3x3 row-major matrix Sweet Home 3D applies to the
    raw OBJ to stand it upright (identity when absent).
    """

    slug: str
    item_id: str
    name: str
    category: str
    tags: tuple[str, ...]
    creator: str
    license: str
    source: Path
    icon: str
    model: str
    width: float | None = None
    depth: float | None = None
    height: float | None = None
    model_rotation: tuple[float, ...] | None = field(default=None)


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    """Resolve Java properties escapes (``\\uXXXX``, ``\\t``, ``\\:`` ...)."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
        else:
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
    return "".join(out)


def _logical_lines(text: str):
    """Yield logical lines: comments dropped, ``\\``-continuations joined."""
    pending: str | None = None
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f")
        if pending is None:
            if not line or line[0] in "#!":
                continue
            pending = ""
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:  # odd count: last backslash continues the line
            pending += line[:-1]
            continue
        yield pending + line
        pending = None
    if pending:
        yield pending


def parse_java_properties(data: bytes | str) -> dict[str, str]:
    """Parse a ``.properties`` file the way ``java.util.Properties.load`` does.

    Bytes are decoded as latin-1 (the Java default); keys end at the first
    unescaped ``=``, ``:`` or whitespace.
    """
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    props: dict[str, str] = {}
    for line in _logical_lines(text):
        i, n = 0, len(line)
        while i < n and line[i] not in "=: \t\f":
            i += 2 if line[i] == "\\" else 1
        key = line[: min(i, n)]
        rest = line[min(i, n) :].lstrip(" \t\f")
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(" \t\f")
        props[_unescape(key)] = _unescape(rest)
    return props


def slugify(text: str) -> str:
    """Lower-case ASCII slug made of ``[a-z0-9-]`` (never empty)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "item"


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _rotation(value: str | None) -> tuple[float, ...] | None:
    if not value:
        return None
    try:
        numbers = tuple(float(x) for x in value.split())
    except ValueError:
        return None
    return numbers if len(numbers) == 9 else None


def _read_one(path: Path, used_slugs: set[str]) -> list[FurnitureItem]:
    with zipfile.ZipFile(path) as zf:
        props = parse_java_properties(zf.read(CATALOG_ENTRY))
    prefix = slugify(path.stem)
    license_ = props.get("license", "")
    indices = sorted(
        {int(m.group(1)) for k in props if (m := re.fullmatch(r"id#(\d+)", k))}
    )
    items = []
    for i in indices:
        icon, model = props.get(f"icon#{i}", ""), props.get(f"model#{i}", "")
        if not icon and not model:
            continue
        item_id = props[f"id#{i}"]
        name = props.get(f"name#{i}") or item_id.split("#")[-1]
        base = f"{prefix}--{slugify(item_id.split('#')[-1] or name)}"
        slug, k = base, 2
        while slug in used_slugs:
            slug, k = f"{base}-{k}", k + 1
        used_slugs.add(slug)
        tags = tuple(t.strip() for t in props.get(f"tags#{i}", "").split(",") if t.strip())
        items.append(
            FurnitureItem(
                slug=slug,
                item_id=item_id,
                name=name,
                category=props.get(f"category#{i}", ""),
                tags=tags,
                creator=props.get(f"creator#{i}", ""),
                license=license_,
                source=path,
                icon=icon.lstrip("/"),
                model=model.lstrip("/"),
                width=_float(props.get(f"width#{i}")),
                depth=_float(props.get(f"depth#{i}")),
                height=_float(props.get(f"height#{i}")),
                model_rotation=_rotation(props.get(f"modelRotation#{i}")),
            )
        )
    return items


def read_furniture_catalog(paths: list[Path] | None = None) -> list[FurnitureItem]:
    """Read every item of the given ``.sh3f`` libraries (default: Debian's).

    Raises :class:`DemoDataMissing` when no library is found, so callers can
    tell the user which package to install instead of failing obscurely.
    """
    if paths is None:
        paths = sorted(DEBIAN_FURNITURE_DIR.glob("*.sh3f"))
    paths = [Path(p) for p in paths if Path(p).is_file()]
    if not paths:
        raise DemoDataMissing(
            f"no Sweet Home 3D furniture libraries (*.sh3f) found in {DEBIAN_FURNITURE_DIR}; "
            "install them with: apt-get install sweethome3d-furniture"
        )
    used: set[str] = set()
    items: list[FurnitureItem] = []
    for path in paths:
        items.extend(_read_one(path, used))
    return items
