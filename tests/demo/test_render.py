"""The numpy rasterizer and the end-to-end demo catalog build, on a synthetic .sh3f."""

from __future__ import annotations

import csv
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from demo.build import build_demo_catalog
from demo.render import Material, Mesh, load_obj, make_background, render

from .test_sweethome import make_sh3f

WHITE = (255, 255, 255)


@pytest.fixture()
def library(tmp_path: Path) -> Path:
    return make_sh3f(tmp_path)


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(int)


def is_red(p: np.ndarray) -> bool:
    return p[0] > 80 and p[0] > 2 * p[1] + 20 and p[0] > 2 * p[2] + 20


def test_load_obj_cube(library: Path) -> None:
    with zipfile.ZipFile(library) as zf:
        mesh = load_obj(zf, "/test/red-cube/cube.obj")
    assert mesh.vertices.shape == (8, 3)
    assert mesh.faces.shape == (12, 3)  # 6 quads as triangle fans
    assert mesh.materials[mesh.face_material[0]].kd == (1.0, 0.0, 0.0)
    assert not mesh.has_uv.any()


def test_load_obj_texture_negative_indices_and_transparency(library: Path) -> None:
    mesh = load_obj(library, "test/tex/tex.obj")
    assert mesh.faces.shape == (14, 3)
    assert mesh.faces[:12].max() == 7 and mesh.faces.min() == 0
    names = [mesh.materials[i].name for i in mesh.face_material]
    assert names[:12] == ["checker"] * 12 and names[12:] == ["glass"] * 2
    checker = mesh.materials[mesh.face_material[0]]
    assert checker.texture is not None and checker.texture.shape == (4, 4, 3)
    assert mesh.has_uv[:12].all()
    assert mesh.materials[mesh.face_material[-1]].opacity == 0.0


def test_load_obj_tolerates_missing_mtl_and_polygons() -> None:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("m/x.obj", "mtllib nowhere.mtl\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0.5 2 0\nv 0 1 0\n"
                               "usemtl unknown\nf 1 2 3 4 5\n")
    with zipfile.ZipFile(buf) as zf:
        mesh = load_obj(zf, "m/x.obj")
        assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 3, 4]]
        image = render(mesh, yaw_deg=0, pitch_deg=0, background=WHITE, size=32)
    assert (pixels(image) < 200).any()  # drawn in the default grey
    with pytest.raises(Exception):
        with zipfile.ZipFile(buf) as zf:
            load_obj(zf, "m/absent.obj")


def test_red_cube_on_background(library: Path) -> None:
    mesh = load_obj(library, "test/red-cube/cube.obj")
    image = pixels(render(mesh, yaw_deg=30, pitch_deg=20, background=(20, 40, 230), size=64, fill=0.6))
    assert image.shape == (64, 64, 3)
    assert is_red(image[32, 32])
    for corner in (image[1, 1], image[1, 62], image[62, 1], image[62, 62]):
        assert tuple(corner) == (20, 40, 230)
    red_fraction = np.mean([is_red(p) for p in image.reshape(-1, 3)])
    assert 0.2 < red_fraction < 0.6


def test_alpha_render_is_the_same_view_cut_out(library: Path) -> None:
    mesh = load_obj(library, "test/red-cube/cube.obj")
    on_blue = pixels(render(mesh, yaw_deg=30, pitch_deg=20, background=(20, 40, 230), size=64, fill=0.6))
    cut = pixels(render(mesh, yaw_deg=30, pitch_deg=20, background=(20, 40, 230), size=64, fill=0.6, alpha=True))
    assert cut.shape == (64, 64, 4)
    alpha = cut[..., 3]
    differs = np.abs(on_blue - np.array([20, 40, 230])).sum(axis=2) > 0
    assert ((alpha > 0) == differs).mean() > 0.99  # coverage is where the object was drawn
    inside = alpha == 255
    assert inside.sum() > 500 and np.abs(cut[..., :3][inside] - on_blue[inside]).max() <= 1  # same colours
    edge = (alpha > 0) & (alpha < 255)
    assert edge.any() and all(is_red(p) for p in cut[..., :3][edge])  # edges keep the object's colour


def test_yaw_changes_the_image(library: Path) -> None:
    mesh = load_obj(library, "test/red-cube/cube.obj")
    a = pixels(render(mesh, yaw_deg=0, pitch_deg=20, background=WHITE, size=64, fill=0.7))
    b = pixels(render(mesh, yaw_deg=35, pitch_deg=20, background=WHITE, size=64, fill=0.7))
    assert np.abs(a - b).mean() > 5


def test_textured_material_is_sampled_and_transparent_skipped(library: Path) -> None:
    mesh = load_obj(library, "test/tex/tex.obj")
    image = pixels(render(mesh, yaw_deg=25, pitch_deg=20, background=WHITE, size=64, fill=0.6))
    body = image[16:48, 16:48].reshape(-1, 3)
    greenish = (body[:, 1] > body[:, 0] + 40) & (body[:, 1] > body[:, 2] + 40)
    blueish = (body[:, 2] > body[:, 0] + 40) & (body[:, 2] > body[:, 1] + 40)
    assert greenish.mean() > 0.1 and blueish.mean() > 0.1  # texture, not grey Kd
    yellow = (image[..., 0] > 150) & (image[..., 1] > 150) & (image[..., 2] < 80)
    assert not yellow.any()  # the d=0 glass plane in front is not drawn


def two_squares(near_first: bool) -> Mesh:
    """A small green square at z=+0.5 in front of a big red square at z=-0.5."""
    def square(half: float, z: float) -> list[list[float]]:
        return [[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]]

    near, far = square(0.2, 0.5), square(0.5, -0.5)
    vertices = np.array(near + far if near_first else far + near, dtype=np.float32)
    quads = [[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]]
    green_first = [1, 1, 0, 0] if near_first else [0, 0, 1, 1]
    return Mesh(
        vertices=vertices,
        faces=np.array(quads, dtype=np.int64),
        face_material=np.array(green_first, dtype=np.int32),
        materials=[Material("red", kd=(1.0, 0.0, 0.0)), Material("green", kd=(0.0, 1.0, 0.0))],
    )


@pytest.mark.parametrize("near_first", [True, False])
def test_zbuffer_near_face_occludes_far_face(near_first: bool) -> None:
    # Drawing order alone (painter's "last wins" or "first wins") or an inverted
    # depth test shows red in the middle for one of the two orders.
    image = pixels(render(two_squares(near_first), yaw_deg=0, pitch_deg=0, light_dir=(0, 0, 1),
                          background=WHITE, size=64, fill=0.9))
    centre, edge = image[32, 32], image[32, 8]
    assert centre[1] > 150 and centre[0] < 60, centre  # near green square
    assert edge[0] > 150 and edge[1] < 60, edge  # far red square around it


def test_background_is_light_and_deterministic() -> None:
    a = make_background(np.random.default_rng(3), 32)
    b = make_background(np.random.default_rng(3), 32)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert a.mean() > 150
    kinds = {bool(make_background(np.random.default_rng(s), 16).std(axis=0).max() > 0) for s in range(20)}
    assert kinds == {True, False}  # plain and graded backgrounds both occur


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_build_demo_catalog_end_to_end(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    path = build_demo_catalog(out, renders_per_item=2, query_renders=1, size=48, progress=False,
                              sources=[library])
    assert path == out / "catalog.csv"
    rows = read_csv(path)
    assert list(rows[0]) == ["item_id", "product_id", "title", "category", "image", "tags", "creator", "license"]
    by_product: dict[str, list[str]] = {}
    for row in rows:
        by_product.setdefault(row["product_id"], []).append(row["item_id"])
        assert (out / row["image"]).is_file()
    assert by_product["test-lib--red-cube"] == [
        "test-lib--red-cube--icon", "test-lib--red-cube--render-0", "test-lib--red-cube--render-1"]
    assert by_product["test-lib--broken"] == ["test-lib--broken--icon"]  # icon only
    assert len({r["item_id"] for r in rows}) == len(rows) == 7
    red = next(r for r in rows if r["item_id"] == "test-lib--red-cube--render-0")
    assert red["title"] == "Red cube caf\u00e9" and red["category"] == "Living room"
    assert red["tags"] == "Box;Red" and red["license"] == "Public domain \u00a9 test"
    assert red["image"] == "images/test-lib--red-cube/render-0.jpg"

    queries = read_csv(out / "queries.csv")
    assert sorted(q["product_id"] for q in queries) == ["test-lib--red-cube", "test-lib--textured-box"]
    catalog_images = {r["image"] for r in rows}
    for q in queries:
        assert q["query_image"].startswith("queries/") and q["query_image"] not in catalog_images
        assert (out / q["query_image"]).is_file()

    manifest = json.loads((out / "demo_manifest.json").read_text())
    assert manifest["render_failures"] == 1 and manifest["failed_items"] == ["test-lib--broken"]
    assert manifest["items"] == 3 and manifest["images"] == 7 and manifest["queries"] == 2

    # Cache hit: nothing is rewritten.
    before = snapshot(out)
    time.sleep(0.01)
    assert build_demo_catalog(out, renders_per_item=2, query_renders=1, size=48, progress=False,
                              sources=[library]) == path
    assert snapshot(out) == before

    # New parameters rebuild, but reuse the images already there.
    build_demo_catalog(out, renders_per_item=3, query_renders=1, size=48, progress=False, sources=[library])
    after = snapshot(out)
    assert after["images/test-lib--red-cube/render-0.jpg"] == before["images/test-lib--red-cube/render-0.jpg"]
    assert "images/test-lib--red-cube/render-2.jpg" in after
    assert len(read_csv(out / "catalog.csv")) == 9


def test_build_is_deterministic_and_parallel(library: Path, tmp_path: Path) -> None:
    kwargs = dict(renders_per_item=2, query_renders=1, size=40, progress=False, sources=[library])
    build_demo_catalog(tmp_path / "a", workers=1, **kwargs)
    build_demo_catalog(tmp_path / "b", workers=2, **kwargs)
    for rel in ("images/test-lib--red-cube/render-1.jpg", "queries/test-lib--textured-box/query-0.jpg"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a" / "catalog.csv").read_text() == (tmp_path / "b" / "catalog.csv").read_text()
