"""A small, dependency-free (numpy + Pillow) renderer for OBJ furniture models.

The demo catalog needs several photo-like views of each of ~820 models, so the
renderer must be fast on a CPU without a GPU or OpenGL stack.  Rasterisation is
fully vectorised: every triangle's screen bounding box is expanded into
candidate (triangle, pixel) fragments in large chunks, fragments outside the
triangle are dropped with a barycentric test, and the nearest fragment per
pixel wins through a z-buffer built with ``np.maximum.at``.  Shading is
Lambert + ambient on face normals; textured materials are sampled
(nearest-neighbour) from interpolated UVs.
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["Material", "Mesh", "load_obj", "make_background", "render"]

_MAX_TEXTURE = 512  # textures are shrunk to this side: sampling is nearest anyway
_CHUNK_FRAGMENTS = 1 << 20
_DEFAULT_KD = (0.7, 0.7, 0.7)


@dataclass
class Material:
    """Diffuse material: colour ``kd`` in [0, 1], opacity ``d``, optional texture.

    ``texture`` is an (h, w, 3) uint8 array; ``alpha`` its (h, w) uint8 alpha
    channel when the image has one (used as a cut-out mask, e.g. for leaves).
    """

    name: str
    kd: tuple[float, float, float] = _DEFAULT_KD
    opacity: float = 1.0
    texture: np.ndarray | None = None
    alpha: np.ndarray | None = None


@dataclass
class Mesh:
    """A triangle mesh with per-face materials and per-face-corner UVs.

    ``uvs`` has shape (M, 3, 2) and is only meaningful where ``has_uv`` is True.
    """

    vertices: np.ndarray  # (N, 3) float32
    faces: np.ndarray  # (M, 3) int64
    face_material: np.ndarray  # (M,) int32 index into materials
    materials: list[Material] = field(default_factory=list)
    uvs: np.ndarray | None = None  # (M, 3, 2) float32
    has_uv: np.ndarray | None = None  # (M,) bool

    def transformed(self, matrix: np.ndarray | tuple[float, ...]) -> "Mesh":
        """Return a copy with vertices multiplied by a 3x3 row-major matrix."""
        m = np.asarray(matrix, dtype=np.float32).reshape(3, 3)
        return Mesh(self.vertices @ m.T, self.faces, self.face_material,
                    self.materials, self.uvs, self.has_uv)


# --------------------------------------------------------------------------- OBJ


def _resolve_member(names: set[str], base_dir: str, ref: str) -> str | None:
    """Find a file referenced from an OBJ/MTL inside the zip, tolerating junk paths."""
    ref = ref.strip().strip('"').replace("\\", "/")
    candidates = [posixpath.normpath(posixpath.join(base_dir, ref)), ref.lstrip("/")]
    basename = ref.rsplit("/", 1)[-1]
    candidates.append(posixpath.join(base_dir, basename))
    for c in candidates:
        if c in names:
            return c
    lowered = {n.lower(): n for n in names if n.startswith(base_dir)}
    return lowered.get(posixpath.join(base_dir, basename).lower())


def _load_texture(zf: zipfile.ZipFile, member: str) -> tuple[np.ndarray, np.ndarray | None]:
    with Image.open(io.BytesIO(zf.read(member))) as img:
        img.draft("RGB", (_MAX_TEXTURE, _MAX_TEXTURE))
        has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
        img = img.convert("RGBA" if has_alpha else "RGB")
        img.thumbnail((_MAX_TEXTURE, _MAX_TEXTURE))
        arr = np.asarray(img)
    if has_alpha:
        alpha = arr[..., 3].copy()
        return np.ascontiguousarray(arr[..., :3]), (alpha if alpha.min() < 128 else None)
    return arr, None


def _parse_mtl(zf: zipfile.ZipFile, names: set[str], member: str) -> list[Material]:
    base_dir = posixpath.dirname(member)
    materials: list[Material] = []
    current: Material | None = None
    for line in zf.read(member).decode("latin-1").splitlines():
        parts = line.strip().split(None, 1)
        if not parts:
            continue
        key, rest = parts[0], (parts[1] if len(parts) > 1 else "")
        if key == "newmtl":
            current = Material(name=rest.strip())
            materials.append(current)
        elif current is None:
            continue
        elif key == "Kd":
            try:
                values = [float(x) for x in rest.split()[:3]]
                current.kd = tuple(min(max(v, 0.0), 1.0) for v in (values * 3)[:3])  # type: ignore[assignment]
            except ValueError:
                pass
        elif key == "d" or key == "Tr":
            try:
                value = float(rest.split()[0])
                current.opacity = value if key == "d" else 1.0 - value
            except (ValueError, IndexError):
                pass
        elif key == "map_Kd":
            ref = rest
            while ref.startswith("-"):  # drop options such as "-s 1 1 1"
                opt = ref.split(None, 1)
                ref = opt[1] if len(opt) > 1 else ""
                while ref and ref.split(None, 1)[0].lstrip("-").replace(".", "", 1).isdigit():
                    ref = ref.split(None, 1)[1] if len(ref.split(None, 1)) > 1 else ""
            resolved = _resolve_member(names, base_dir, ref)
            if resolved:
                try:
                    current.texture, current.alpha = _load_texture(zf, resolved)
                except Exception:  # unreadable texture: fall back to Kd
                    current.texture = current.alpha = None
    return materials


def _index(token: str, count: int) -> int:
    i = int(token)
    return i - 1 if i > 0 else count + i


def load_obj(zip_file: zipfile.ZipFile | str | Path, obj_path: str) -> Mesh:
    """Load a Wavefront OBJ (and its MTL files and ``map_Kd`` textures) from a zip.

    Polygons are triangulated as fans; negative (relative) indices, ``usemtl``
    and ``mtllib`` are honoured.  Missing MTL files or textures degrade to grey
    or to ``Kd`` rather than failing.  Raises ``ValueError`` if the OBJ holds no
    faces.
    """
    if not isinstance(zip_file, zipfile.ZipFile):
        with zipfile.ZipFile(zip_file) as zf:
            return load_obj(zf, obj_path)
    zf = zip_file
    obj_path = obj_path.lstrip("/")
    names = set(zf.namelist())
    base_dir = posixpath.dirname(obj_path)

    verts: list[list[str]] = []
    texcoords: list[list[str]] = []
    tri_v: list[tuple[int, int, int]] = []
    tri_t: list[tuple[int, int, int]] = []
    tri_m: list[int] = []
    materials: list[Material] = [Material(name="__default__")]
    library: dict[str, Material] = {}
    mat_index: dict[str, int] = {}
    current = 0

    for line in zf.read(obj_path).decode("latin-1").splitlines():
        if not line or line[0] == "#":
            continue
        parts = line.split()
        if not parts:
            continue
        key = parts[0]
        if key == "v":
            verts.append(parts[1:4])
        elif key == "vt":
            texcoords.append((parts[1:3] + ["0"])[:2])
        elif key == "f":
            nv, nt = len(verts), len(texcoords)
            vi, ti = [], []
            for tok in parts[1:]:
                sub = tok.split("/")
                vi.append(_index(sub[0], nv))
                ti.append(_index(sub[1], nt) if len(sub) > 1 and sub[1] else -1)
            for k in range(1, len(vi) - 1):
                tri_v.append((vi[0], vi[k], vi[k + 1]))
                tri_t.append((ti[0], ti[k], ti[k + 1]))
                tri_m.append(current)
        elif key == "usemtl":
            name = line.split(None, 1)[1].strip() if len(parts) > 1 else ""
            if name not in mat_index:
                mat_index[name] = len(materials)
                materials.append(library.get(name, Material(name=name)))
            current = mat_index[name]
        elif key == "mtllib" and len(parts) > 1:
            ref = line.split(None, 1)[1]
            member = _resolve_member(names, base_dir, ref)
            if member:
                for mat in _parse_mtl(zf, names, member):
                    library.setdefault(mat.name, mat)
                    if mat.name in mat_index:  # usemtl seen before mtllib
                        materials[mat_index[mat.name]] = mat

    if not tri_v:
        raise ValueError(f"{obj_path}: no faces")
    vertices = np.asarray(verts, dtype=np.float32)
    faces = np.asarray(tri_v, dtype=np.int64)
    valid = ((faces >= 0) & (faces < len(vertices))).all(axis=1)
    tri_t_arr = np.asarray(tri_t, dtype=np.int64)
    has_uv = ((tri_t_arr >= 0) & (tri_t_arr < len(texcoords))).all(axis=1)
    uv_table = np.asarray(texcoords, dtype=np.float32).reshape(-1, 2)
    uvs = np.zeros((len(faces), 3, 2), dtype=np.float32)
    if has_uv.any():
        uvs[has_uv] = uv_table[tri_t_arr[has_uv]]
    return Mesh(
        vertices=vertices,
        faces=faces[valid],
        face_material=np.asarray(tri_m, dtype=np.int32)[valid],
        materials=materials,
        uvs=uvs[valid],
        has_uv=has_uv[valid],
    )


# -------------------------------------------------------------------- rendering


def make_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A varied, light product-photo background: plain, vertical gradient or floor."""
    def light_colour() -> np.ndarray:
        base = rng.uniform(215, 255)
        return np.clip(base - rng.uniform(0, 25, 3), 0, 255)

    top = light_colour()
    kind = rng.integers(3)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None]
    if kind == 0:  # plain
        column = np.repeat(top[None, :], size, axis=0)
    elif kind == 1:  # vertical gradient
        column = top[None, :] * (1 - t) + light_colour()[None, :] * t
    else:  # faint floor: darker tone below a soft horizon
        horizon = rng.uniform(0.55, 0.75)
        floor = top * rng.uniform(0.82, 0.93) + rng.uniform(-6, 6, 3)
        blend = np.clip((t - horizon) / 0.04 + 0.5, 0, 1)
        column = top[None, :] * (1 - blend) + floor[None, :] * blend
    img = np.broadcast_to(column[:, None, :], (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _background(background, size: int, rng: np.random.Generator) -> np.ndarray:
    if background is None:
        return make_background(rng, size).astype(np.float32)
    if isinstance(background, Image.Image):
        return np.asarray(background.convert("RGB").resize((size, size)), dtype=np.float32)
    arr = np.asarray(background, dtype=np.float32)
    if arr.ndim == 1:
        return np.broadcast_to(arr[:3], (size, size, 3)).copy()
    return np.asarray(Image.fromarray(arr.astype(np.uint8)).resize((size, size)), dtype=np.float32)


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """World -> view rotation: yaw about the up axis (Y), then pitch about X."""
    y, p = np.radians(yaw_deg), np.radians(pitch_deg)
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rx @ ry


def _chunks(counts: np.ndarray, limit: int):
    """Split ``counts`` into consecutive [lo, hi) runs whose sum stays <= limit
    (a single oversized element still forms its own run)."""
    ends = np.cumsum(counts)
    lo, n = 0, len(counts)
    while lo < n:
        base = ends[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(ends, base + limit, side="right")), lo + 1)
        yield lo, hi
        lo = hi


def _rasterize(x: np.ndarray, y: np.ndarray, depth: np.ndarray, size: int,
               alpha_test=None) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer rasterisation of screen-space triangles, vectorised in chunks.

    ``x``, ``y``, ``depth`` are (M, 3) float64 (larger depth = nearer).  Each
    triangle is expanded into its scanline rows, each row into the exact span
    of pixel centres it covers (no wasted bounding-box fragments for thin
    diagonal triangles), and all fragments of a chunk are depth-tested at once.
    Returns per pixel (size*size,) the winning triangle index (-1 = empty) and
    (size*size, 3) barycentric weights.  ``alpha_test(tri, bary) -> keep`` can
    discard fragments (texture cut-outs) before the depth test.
    """
    npix = size * size
    tribuf = np.full(npix, -1, dtype=np.int64)
    barybuf = np.zeros((npix, 3), dtype=np.float32)
    zbuf = np.full(npix, -np.inf, dtype=np.float64)

    x0, x1, x2 = x.T
    y0, y1, y2 = y.T
    det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
    iy0 = np.clip(np.ceil(y.min(1) - 0.5), 0, size).astype(np.int64)
    iy1 = np.clip(np.floor(y.max(1) - 0.5), -1, size - 1).astype(np.int64)
    ix0 = np.clip(np.ceil(x.min(1) - 0.5), 0, size).astype(np.int64)
    ix1 = np.clip(np.floor(x.max(1) - 0.5), -1, size - 1).astype(np.int64)
    tris = np.nonzero((np.abs(det) > 1e-12) & (iy1 >= iy0) & (ix1 >= ix0))[0]
    if len(tris) == 0:
        return tribuf, barybuf

    # Barycentric weights and depth as planes v = a*px + b*py + c in pixel coords.
    d = det[tris]
    a0, b0 = (y1 - y2)[tris] / d, (x2 - x1)[tris] / d
    a1, b1 = (y2 - y0)[tris] / d, (x0 - x2)[tris] / d
    c0 = -(a0 * x2[tris] + b0 * y2[tris])
    c1 = -(a1 * x2[tris] + b1 * y2[tris])
    planes = np.stack([
        np.stack([a0, b0, c0], 1),
        np.stack([a1, b1, c1], 1),
        np.stack([-a0 - a1, -b0 - b1, 1 - c0 - c1], 1),
    ], 1)  # (T, weight k, coef)
    zplane = np.einsum("tk,tkc->tc", depth[tris], planes)
    planes = np.concatenate([planes, zplane[:, None, :]], 1)  # (T, 4, 3)
    xt, yt = x[tris], y[tris]
    rows = iy1[tris] - iy0[tris] + 1

    for lo, hi in _chunks(rows, 1 << 18):
        # (triangle, row) pairs and the x-span each row covers.
        pt = np.repeat(np.arange(lo, hi), rows[lo:hi])
        first = np.cumsum(rows[lo:hi]) - rows[lo:hi]
        prow = iy0[tris[pt]] + np.arange(len(pt)) - first[pt - lo]
        yc = prow + 0.5
        xl = np.full(len(pt), np.inf)
        xr = np.full(len(pt), -np.inf)
        for a, b in ((0, 1), (1, 2), (2, 0)):
            xa, ya, xb, yb = xt[pt, a], yt[pt, a], xt[pt, b], yt[pt, b]
            dy = yb - ya
            ok = (yc >= np.minimum(ya, yb)) & (yc <= np.maximum(ya, yb)) & (dy != 0)
            xi = xa + (yc - ya) * (xb - xa) / np.where(dy == 0, 1.0, dy)
            xl = np.where(ok, np.minimum(xl, xi), xl)
            xr = np.where(ok, np.maximum(xr, xi), xr)
        with np.errstate(invalid="ignore"):
            pl = np.clip(np.ceil(xl - 0.5 - 1e-6), 0, size)
            pr = np.clip(np.floor(xr - 0.5 + 1e-6), -1, size - 1)
        span = np.where(np.isfinite(xl) & np.isfinite(xr), pr - pl + 1, 0).clip(0).astype(np.int64)
        pl = np.nan_to_num(pl).astype(np.int64)
        # Plane values at each span's first pixel centre, and per-pixel step.
        pp = planes[pt]  # (P, 4, 3)
        base = (pp[:, :, 0] * (pl + 0.5)[:, None] + pp[:, :, 1] * yc[:, None] + pp[:, :, 2]).astype(np.float32)
        step = pp[:, :, 0].astype(np.float32)

        for plo, phi in _chunks(span, _CHUNK_FRAGMENTS):
            cnt = span[plo:phi]
            fp = np.repeat(np.arange(plo, phi), cnt)
            if len(fp) == 0:
                continue
            k = np.arange(len(fp)) - (np.cumsum(cnt) - cnt)[fp - plo]
            vals = base[fp] + step[fp] * k.astype(np.float32)[:, None]
            tri = tris[pt[fp]]
            bary = vals[:, :3]
            pix = prow[fp] * size + pl[fp] + k
            z = vals[:, 3].astype(np.float64)
            if alpha_test is not None:
                keep = alpha_test(tri, bary)
                tri, bary, pix, z = tri[keep], bary[keep], pix[keep], z[keep]
            np.maximum.at(zbuf, pix, z)
            win = z >= zbuf[pix]
            tribuf[pix[win]] = tri[win]
            barybuf[pix[win]] = bary[win]
    return tribuf, barybuf


def _sample(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-neighbour texture lookup with wrap-around (OBJ v points up)."""
    h, w = texture.shape[:2]
    u = uv[:, 0] - np.floor(uv[:, 0])
    v = uv[:, 1] - np.floor(uv[:, 1])
    px = np.minimum((u * w).astype(np.int64), w - 1)
    py = np.minimum(((1.0 - v) * h).astype(np.int64), h - 1)
    return texture[py, px]


def render(
    mesh: Mesh,
    *,
    yaw_deg: float,
    pitch_deg: float,
    light_dir: tuple[float, float, float] = (-0.4, 0.6, 0.7),
    background: tuple[int, int, int] | np.ndarray | Image.Image | None = None,
    size: int = 256,
    rng: np.random.Generator | None = None,
    supersample: int = 2,
    fill: float | None = None,
    ambient: float = 0.38,
    alpha: bool = False,
) -> Image.Image:
    """Render ``mesh`` to an RGB image of ``size`` x ``size`` pixels.

    The model is normalised to the unit box, turned by ``yaw_deg`` about its up
    axis (Y, 0 = front) and viewed from ``pitch_deg`` above through a mild
    perspective camera, then framed to fill ``fill`` of the image (random
    0.72-0.9 from ``rng`` when None).  ``light_dir`` is in camera space
    (x right, y up, z towards the viewer).  ``background`` is an RGB colour,
    an image/array, or None for a random one from :func:`make_background`.
    Rendering happens at ``supersample`` x the size and is box-downsampled for
    anti-aliasing. With ``alpha`` the result is RGBA: the object alone, its
    (anti-aliased) coverage as alpha, for compositing onto other backgrounds;
    the view and framing are the same as without it.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    big = size * max(1, supersample)
    image = _background(background, big, rng)
    if fill is None:
        fill = float(rng.uniform(0.72, 0.9))

    opacity = np.array([m.opacity for m in mesh.materials], dtype=np.float32)
    keep = opacity[mesh.face_material] > 0.02
    faces = mesh.faces[keep]
    face_mat = mesh.face_material[keep]
    if len(faces) == 0:
        raise ValueError("mesh has no visible faces")
    used = mesh.vertices[np.unique(faces)].astype(np.float64)
    lo, hi = used.min(0), used.max(0)
    verts = (mesh.vertices.astype(np.float64) - (lo + hi) / 2) / max(float((hi - lo).max()), 1e-9)

    view = verts @ _rotation(yaw_deg, pitch_deg).T
    cam_dist = 3.0
    persp = cam_dist / (cam_dist - view[:, 2])
    sx, sy = view[:, 0] * persp, view[:, 1] * persp
    vis = np.unique(faces)
    (xmin, ymin), (xmax, ymax) = (sx[vis].min(), sy[vis].min()), (sx[vis].max(), sy[vis].max())
    scale = fill * big / max(xmax - xmin, ymax - ymin, 1e-9)
    px = (sx - (xmin + xmax) / 2) * scale + big / 2
    py = big / 2 - (sy - (ymin + ymax) / 2) * scale

    tv = view[faces]  # (M, 3, 3) view-space triangles
    normals = np.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    normals *= np.where(normals[:, 2:3] < 0, -1.0, 1.0)  # two-sided: face the camera
    light = np.asarray(light_dir, dtype=np.float64)
    light /= max(np.linalg.norm(light), 1e-12)
    lambert = np.clip(normals @ light, 0, 1)
    intensity = (ambient + (1 - ambient) * lambert).astype(np.float32)

    kd = np.array([m.kd for m in mesh.materials], dtype=np.float32) * 255
    uvs = mesh.uvs[keep] if mesh.uvs is not None else None
    has_uv = mesh.has_uv[keep] if mesh.has_uv is not None else np.zeros(len(faces), bool)
    textured = [i for i, m in enumerate(mesh.materials) if m.texture is not None]
    cutout = np.array([m.alpha is not None for m in mesh.materials])

    alpha_test = None
    if uvs is not None and cutout.any():
        def alpha_test(tri: np.ndarray, bary: np.ndarray) -> np.ndarray:
            keep_frag = np.ones(len(tri), dtype=bool)
            for mi in np.nonzero(cutout)[0]:
                m = (face_mat[tri] == mi) & has_uv[tri]
                if m.any():
                    uv = np.einsum("fk,fkc->fc", bary[m], uvs[tri[m]])
                    keep_frag[np.nonzero(m)[0]] = _sample(mesh.materials[mi].alpha, uv) >= 128
            return keep_frag

    tribuf, barybuf = _rasterize(px[faces], py[faces], persp[faces], big, alpha_test)
    covered = np.nonzero(tribuf >= 0)[0]
    tri = tribuf[covered]
    colour = kd[face_mat[tri]]
    if uvs is not None:
        for mi in textured:
            m = (face_mat[tri] == mi) & has_uv[tri]
            if m.any():
                uv = np.einsum("fk,fkc->fc", barybuf[covered[m]], uvs[tri[m]])
                colour[m] = _sample(mesh.materials[mi].texture, uv)
    colour *= intensity[tri][:, None]
    if alpha:
        return _cutout(colour, covered, big, supersample)
    flat = image.reshape(-1, 3)
    flat[covered] = colour
    out = Image.fromarray(np.clip(flat.reshape(big, big, 3), 0, 255).astype(np.uint8), "RGB")
    return out.reduce(supersample) if supersample > 1 else out


def _cutout(colour: np.ndarray, covered: np.ndarray, big: int, supersample: int) -> Image.Image:
    """RGBA of the covered pixels: colour and coverage box-filtered separately (premultiplied), then divided,
    so that edge pixels keep the object's colour instead of a background's."""
    premultiplied = np.zeros((big * big, 3), dtype=np.float32)
    premultiplied[covered] = colour
    coverage = np.zeros(big * big, dtype=np.float32)
    coverage[covered] = 1.0
    s = max(1, supersample)
    n = big // s
    rgb = premultiplied.reshape(n, s, n, s, 3).mean(axis=(1, 3))
    cov = coverage.reshape(n, s, n, s).mean(axis=(1, 3))
    rgb = rgb / np.maximum(cov, 1e-6)[..., None]
    rgba = np.dstack([np.clip(rgb, 0, 255), cov * 255]).round().astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")
