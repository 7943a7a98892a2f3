import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from training.datasets import (
    DatasetError,
    ImageDataset,
    ProductSplit,
    Sample,
    drop_small_products,
    limit_products,
    read_folder,
    read_inshop,
    read_sop,
    split_by_category,
    split_by_product,
    split_train_val,
    validate_samples,
)
from models.preprocess import build_transform


def _image(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)
    return path


def _samples(products=20, images=3, categories=("a", "b")):
    return [Sample(Path(f"/nowhere/p{p}_{i}.jpg"), f"p{p}", categories[p % len(categories)])
            for p in range(products) for i in range(images)]


def test_split_has_no_product_leaks_and_covers_everything():
    samples = _samples(40, 3)
    split = split_by_product(samples, val_fraction=0.15, test_fraction=0.25, seed=3)
    train, val, test = split.apply(samples)
    labels = [{s.label for s in part} for part in (train, val, test)]
    assert not (labels[0] & labels[1]) and not (labels[0] & labels[2]) and not (labels[1] & labels[2])
    assert len(train) + len(val) + len(test) == len(samples)
    assert (len(split.train), len(split.val), len(split.test)) == (24, 6, 10)


def test_split_is_deterministic_and_order_independent():
    samples = _samples(30, 2)
    a = split_by_product(samples, 0.2, 0.2, seed=7)
    b = split_by_product(list(reversed(samples)), 0.2, 0.2, seed=7)
    c = split_by_product(samples, 0.2, 0.2, seed=8)
    assert a == b
    assert a != c


def test_split_round_trips_through_json(tmp_path):
    split = split_by_product(_samples(10, 2), 0.2, 0.2, seed=1)
    path = split.save(tmp_path / "split.json")
    assert json.loads(path.read_text())["format"] == "lookalike-split/1"
    assert ProductSplit.load(path) == split
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DatasetError, match="not a Lookalike split"):
        ProductSplit.load(tmp_path / "bad.json")


def test_split_refuses_leaks_and_bad_fractions():
    with pytest.raises(DatasetError, match="leaks"):
        ProductSplit(("a", "b"), ("b",), ("c",))
    with pytest.raises(DatasetError, match="fractions"):
        split_by_product(_samples(10), 0.6, 0.5)
    with pytest.raises(DatasetError, match="cannot be split"):
        split_by_product(_samples(2), 0.2, 0.2)


def test_official_test_split_keeps_its_products():
    pool, test = _samples(20, 2), [Sample(s.path, "t" + s.label) for s in _samples(5, 2)]
    split = split_train_val(pool, test, 0.2, seed=0)
    assert set(split.test) == {s.label for s in test}
    assert len(split.val) == 4 and len(split.train) == 16


def test_split_by_category():
    train, held = split_by_category(_samples(6, 2, ("chairs", "tables", "lamps")), ["lamps"])
    assert {s.category for s in held} == {"lamps"} and "lamps" not in {s.category for s in train}


def test_validation_lists_products_with_one_image():
    samples = _samples(3, 2) + [Sample(Path("/x.jpg"), "lonely")]
    with pytest.raises(DatasetError, match=r"1 product\(s\) have fewer than 2 images: 'lonely' \(1\)"):
        validate_samples(samples)
    assert {s.label for s in drop_small_products(samples)} == {"p0", "p1", "p2"}
    with pytest.raises(DatasetError, match="empty"):
        validate_samples([])


def test_validation_can_check_files(tmp_path):
    samples = [Sample(_image(tmp_path / "a.png"), "p"), Sample(tmp_path / "missing.png", "p")]
    with pytest.raises(DatasetError, match="not found"):
        validate_samples(samples, check_files=True)


def test_limit_products_keeps_whole_products():
    limited = limit_products(_samples(20, 3), 5, seed=0)
    assert len({s.label for s in limited}) == 5 and len(limited) == 15
    assert limited == limit_products(_samples(20, 3), 5, seed=0)


def test_folder_reader(tmp_path):
    for product in ("sofa", "lamp"):
        for i in range(2):
            _image(tmp_path / product / f"{i}.png")
    (tmp_path / "sofa" / "notes.txt").write_text("not an image")
    (tmp_path / "stray.png").write_bytes(b"")
    samples = read_folder(tmp_path)
    assert sorted((s.label, s.path.name) for s in samples) == [("lamp", "0.png"), ("lamp", "1.png"),
                                                               ("sofa", "0.png"), ("sofa", "1.png")]
    with pytest.raises(DatasetError, match="no images"):
        read_folder(tmp_path / "lamp")
    with pytest.raises(DatasetError, match="not a directory"):
        read_folder(tmp_path / "nope")


def test_sop_reader(tmp_path):
    (tmp_path / "Ebay_train.txt").write_text(
        "image_id class_id super_class_id path\n"
        "1 1 1 bicycle_final/111085122871_0.JPG\n"
        "2 1 1 bicycle_final/111085122871_1.JPG\n"
        "3 2 2 cabinet_final/222_0.JPG\n")
    (tmp_path / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n4 9 1 bicycle_final/9_0.JPG\n")
    train = read_sop(tmp_path, "train")
    assert [(s.label, s.category) for s in train] == [("1", "bicycle_final"), ("1", "bicycle_final"),
                                                      ("2", "cabinet_final")]
    assert train[0].path == tmp_path / "bicycle_final/111085122871_0.JPG"
    assert len(read_sop(tmp_path, "all")) == 4 and read_sop(tmp_path, "test")[0].label == "9"
    (tmp_path / "Ebay_test.txt").write_text("id class path\n")
    with pytest.raises(DatasetError, match="expected header"):
        read_sop(tmp_path, "test")
    with pytest.raises(DatasetError, match="not found"):
        read_sop(tmp_path / "elsewhere")


def test_inshop_reader(tmp_path):
    (tmp_path / "Eval").mkdir()
    (tmp_path / "Eval" / "list_eval_partition.txt").write_text(
        "4\nimage_name item_id evaluation_status\n"
        "img/WOMEN/Dresses/id_00000002/02_1_front.jpg  id_00000002  train\n"
        "img/WOMEN/Dresses/id_00000002/02_2_side.jpg   id_00000002  train\n"
        "img/MEN/Denim/id_00000080/01_1_front.jpg      id_00000080  query\n"
        "img/MEN/Denim/id_00000080/01_2_side.jpg       id_00000080  gallery\n")
    _image(tmp_path / "Img" / "img/WOMEN/Dresses/id_00000002/02_1_front.jpg")
    train = read_inshop(tmp_path, "train")
    assert [(s.label, s.category) for s in train] == [("id_00000002", "WOMEN/Dresses")] * 2
    assert train[0].path == tmp_path / "Img/img/WOMEN/Dresses/id_00000002/02_1_front.jpg"
    assert len(read_inshop(tmp_path, "test")) == 2 and len(read_inshop(tmp_path, "query")) == 1
    with pytest.raises(DatasetError, match="unknown In-shop split"):
        read_inshop(tmp_path, "dev")
    with pytest.raises(DatasetError, match="list_eval_partition.txt not found"):
        read_inshop(tmp_path / "Img")


def test_image_dataset_returns_tensors_and_label_indexes(tmp_path):
    samples = [Sample(_image(tmp_path / f"{p}{i}.png"), p) for p in "ba" for i in range(2)]
    dataset = ImageDataset(samples, build_transform(32, (0.5,) * 3, (0.5,) * 3), cache=True, cache_size=36)
    image, label = dataset[0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 32, 32)
    assert dataset.classes == ["a", "b"] and label == 1 and dataset.targets == [1, 1, 0, 0]
    with pytest.raises(DatasetError, match="outside the class list"):
        ImageDataset(samples, classes=["a"])
