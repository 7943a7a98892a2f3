"""Reading Sweet Home 3D furniture libraries; also home of the synthetic .sh3f used by the demo tests."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from demo.sweethome import (
    DEBIAN_FURNITURE_DIR,
    DemoDataMissing,
    parse_java_properties,
    read_furniture_catalog,
)

PROPERTIES = r"""# PluginFurnitureCatalog.properties
! another comment style
name=Test catalog
license=Public domain \u00a9 test

id#1=Test#red-cube
name#1=Red cube caf\u00e9
category#1=Living room
tags#1=Box, Red
icon#1=/test/red-cube.png
model#1=/test/red-cube/cube.obj
width#1=50
depth#1=40.5
height#1=30
creator#1=Tester

id#2=Test#textured box
name#2=Long \
        name
category#2=Kitchen
icon#2=/test/tex.png
model#2=/test/tex/tex.obj
multiPartModel#2=true
width#2=oops
creator#2=A\:B

id#3=Test#broken
name#3=Broken model
category#3=Kitchen
icon#3=/test/broken.png
model#3=/test/broken/missing.obj
"""

CUBE_VERTS = """v -1 -1 -1
v 1 -1 -1
v 1 1 -1
v -1 1 -1
v -1 -1 1
v 1 -1 1
v 1 1 1
v -1 1 1
"""
CUBE_QUADS = ["1 2 3 4", "5 6 7 8", "1 2 6 5", "4 3 7 8", "1 4 8 5", "2 3 7 6"]

CUBE_OBJ = "mtllib cube.mtl\n" + CUBE_VERTS + "usemtl red\n" + "".join(f"f {q}\n" for q in CUBE_QUADS)
CUBE_MTL = "newmtl red\nKd 1.0 0.0 0.0\nd 1.0\n"

# Textured cube (negative indices, v/vt/vn faces) plus a fully transparent
# yellow plane in front of it that must not be drawn.
TEX_OBJ = (
    "mtllib tex.mtl\n" + CUBE_VERTS
    + "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvn 0 0 1\n"
    + "usemtl checker\n"
    + "".join("f " + " ".join(f"{int(i) - 9}/{k - 4}/-1" for k, i in enumerate(q.split())) + "\n" for q in CUBE_QUADS)
    + "v -3 -3 3\nv 3 -3 3\nv 3 3 3\nv -3 3 3\nusemtl glass\nf -4 -3 -2 -1\n"
)
TEX_MTL = "newmtl checker\nKd 0.5 0.5 0.5\nmap_Kd checker.png\n\nnewmtl glass\nKd 1 1 0\nd 0.0\n"


def checker_png() -> bytes:
    """4x4 green/blue checker."""
    img = Image.new("RGB", (4, 4))
    for y in range(4):
        for x in range(4):
            img.putpixel((x, y), (0, 200, 0) if (x + y) % 2 else (0, 0, 200))
    return png_bytes(img)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_sh3f(directory: Path, name: str = "Test-Lib.sh3f") -> Path:
    """Write a tiny synthetic furniture library: a red cube, a textured cube, a broken item."""
    path = directory / name
    icon = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    icon.paste((200, 0, 0, 255), (8, 8, 24, 24))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("PluginFurnitureCatalog.properties", PROPERTIES.encode("latin-1"))
        for member in ("test/red-cube.png", "test/tex.png", "test/broken.png"):
            zf.writestr(member, png_bytes(icon))
        zf.writestr("test/red-cube/cube.obj", CUBE_OBJ)
        zf.writestr("test/red-cube/cube.mtl", CUBE_MTL)
        zf.writestr("test/tex/tex.obj", TEX_OBJ)
        zf.writestr("test/tex/tex.mtl", TEX_MTL)
        zf.writestr("test/tex/checker.png", checker_png())
    return path


def test_parse_java_properties_escapes_and_continuations() -> None:
    text = (
        "# comment\n! comment\n"
        "a=1\n"
        "b : two\n"
        "c three\n"
        "key\\:with\\=seps=v\\:x\n"
        "uni=\\u20ac \\u00e9\n"
        "long=first \\\n    second \\\n\tthird\n"
        "even=ends with backslash\\\\\n"
        "next=still separate\n"
        "tab=a\\tb\n"
        "empty=\n"
    )
    props = parse_java_properties(text.encode("latin-1"))
    assert props["a"] == "1"
    assert props["b"] == "two"
    assert props["c"] == "three"
    assert props["key:with=seps"] == "v:x"
    assert props["uni"] == "\u20ac \u00e9"
    assert props["long"] == "first second third"
    assert props["even"] == "ends with backslash\\"
    assert props["next"] == "still separate"
    assert props["tab"] == "a\tb"
    assert props["empty"] == ""


def test_parse_latin1_bytes() -> None:
    assert parse_java_properties("name=Caf\xe9".encode("latin-1"))["name"] == "Caf\u00e9"


def test_read_synthetic_catalog(tmp_path: Path) -> None:
    path = make_sh3f(tmp_path)
    items = read_furniture_catalog([path])
    assert [i.name for i in items] == ["Red cube caf\u00e9", "Long name", "Broken model"]
    assert [i.category for i in items] == ["Living room", "Kitchen", "Kitchen"]
    first, second, _ = items
    assert first.slug == "test-lib--red-cube"
    assert second.slug == "test-lib--textured-box"
    assert first.tags == ("Box", "Red")
    assert first.license == "Public domain \u00a9 test"
    assert first.icon == "test/red-cube.png"
    assert first.model == "test/red-cube/cube.obj"
    assert (first.width, first.depth, first.height) == (50.0, 40.5, 30.0)
    assert second.width is None
    assert second.creator == "A:B"
    assert first.source == path


def test_slugs_unique_across_libraries(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    items = read_furniture_catalog([make_sh3f(tmp_path / "a"), make_sh3f(tmp_path / "b")])
    slugs = [i.slug for i in items]
    assert len(slugs) == 6 and len(set(slugs)) == 6
    assert all(s.replace("-", "").isalnum() for s in slugs)


def test_missing_data_raises_typed_error(tmp_path: Path) -> None:
    with pytest.raises(DemoDataMissing, match="apt-get install sweethome3d-furniture"):
        read_furniture_catalog([tmp_path / "nothing.sh3f"])
    assert issubclass(DemoDataMissing, FileNotFoundError)


@pytest.mark.skipif(not DEBIAN_FURNITURE_DIR.is_dir(), reason="sweethome3d-furniture is not installed")
def test_real_catalog_reads_and_renders() -> None:
    import zipfile as _zipfile

    import numpy as np

    from demo.render import load_obj, render

    items = read_furniture_catalog()
    assert len(items) > 700
    assert len({i.category for i in items}) >= 5
    assert len({i.slug for i in items}) == len(items)
    for item in (items[0], items[len(items) // 2], items[-1]):
        with _zipfile.ZipFile(item.source) as zf:
            assert item.icon in zf.namelist()
            mesh = load_obj(zf, item.model)
        image = np.asarray(render(mesh, yaw_deg=30, pitch_deg=20, background=(255, 255, 255), size=96))
        assert (np.abs(image.astype(int) - 255).sum(axis=2) > 30).mean() > 0.02, item.slug
