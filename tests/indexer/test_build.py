import shutil

import numpy as np
import pytest

from indexer import CatalogError, build_generation, current_generation, list_generations, read_manifest
from indexer.generations import VECTORS
from indexer.generations import generations_dir
from tests.conftest import IMAGES_PER_PRODUCT, PRODUCTS, write_catalog


def test_built_generation_is_published_with_manifest(built_data_dir):
    name = current_generation(built_data_dir)
    manifest = read_manifest(generations_dir(built_data_dir) / name)
    assert manifest.count == PRODUCTS * IMAGES_PER_PRODUCT
    assert manifest.index_factory == "SQ8" and manifest.vector_code == "sq8"  # exact scan of 8-bit codes (default)
    vectors = np.load(generations_dir(built_data_dir) / name / VECTORS)
    assert vectors.shape == (manifest.count, manifest.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)


def test_duplicate_images_share_one_vector(tmp_path, embedder):
    catalog = write_catalog(tmp_path / "cat", products=2, images=2)
    text = catalog.read_text().splitlines()
    text.append("dup,p9,copy,chairs,images/p0-v0.jpg,acme")  # same file as p0-v0
    shutil.copy(tmp_path / "cat/images/p1-v1.jpg", tmp_path / "cat/images/copy.jpg")
    text.append("dup2,p9,copy,chairs,images/copy.jpg,acme")  # same bytes, other name
    catalog.write_text("\n".join(text) + "\n")
    manifest = build_generation(catalog, tmp_path / "data", embedder, workers=0, progress=False)
    assert manifest.count == 6 and manifest.unique_images == 4
    vectors = np.load(generations_dir(tmp_path / "data") / manifest.generation / VECTORS)
    assert np.array_equal(vectors[4], vectors[0]) and np.array_equal(vectors[5], vectors[3])


def test_bad_image_fails_the_build_and_keeps_the_served_generation(tmp_path, embedder):
    catalog = write_catalog(tmp_path / "cat", products=2, images=2)
    data = tmp_path / "data"
    first = build_generation(catalog, data, embedder, workers=0, progress=False)
    (tmp_path / "cat/images/p1-v0.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(CatalogError, match="not_an_image") as err:
        build_generation(catalog, data, embedder, workers=0, progress=False)
    assert err.value.line == 4
    (tmp_path / "cat/images/p1-v0.jpg").unlink()
    with pytest.raises(CatalogError, match="cannot read image") as err:
        build_generation(catalog, data, embedder, workers=0, progress=False)
    assert current_generation(data) == first.generation
    assert list_generations(data) == [first.generation]
    assert sorted(p.name for p in generations_dir(data).iterdir()) == [first.generation]


def test_old_generations_are_pruned_but_the_last_few_kept(tmp_path, embedder):
    catalog = write_catalog(tmp_path / "cat", products=2, images=1)
    names = [build_generation(catalog, tmp_path / "d", embedder, workers=0, progress=False, keep=2).generation
             for _ in range(3)]
    assert list_generations(tmp_path / "d") == names[1:]
    assert current_generation(tmp_path / "d") == names[-1]
