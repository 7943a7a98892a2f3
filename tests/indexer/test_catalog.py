import json

import pytest

from indexer import CatalogError, read_catalog


def test_csv_rows_resolve_relative_images_and_keep_attributes(tmp_path):
    (tmp_path / "c.csv").write_text("item_id,product_id,title,category,image,colour\n"
                                    "a,p1,Oak table,tables,img/a.jpg,brown\n"
                                    f"b,p1,Oak table,tables,file://{tmp_path}/b.jpg,\n")
    rows = read_catalog(tmp_path / "c.csv")
    assert [r.item_id for r in rows] == ["a", "b"]
    assert rows[0].image == tmp_path / "img/a.jpg"
    assert rows[1].image == tmp_path / "b.jpg"
    assert rows[0].attributes == {"colour": "brown"} and rows[1].attributes == {}
    assert rows[1].line == 3


def test_jsonl_catalog(tmp_path):
    lines = [{"item_id": "x", "product_id": "p", "image": "/abs/x.png", "title": "Lamp"}, {}]
    (tmp_path / "c.jsonl").write_text(json.dumps(lines[0]) + "\n\n")
    rows = read_catalog(tmp_path / "c.jsonl")
    assert rows[0].title == "Lamp" and str(rows[0].image) == "/abs/x.png"


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("item_id,product_id,image\na,p,x.jpg\n,p,y.jpg\n", 3, "item_id"),
    ("item_id,product_id,image\na,p,x.jpg\na,q,y.jpg\n", 3, "duplicate item_id"),
    ("item_id,title,image\na,t,x.jpg\n", 1, "product_id"),
    ("item_id,product_id,image\na,p,x.jpg,extra\n", 2, "more values"),
    ("item_id,product_id,image\na,p,https://example.com/x.jpg\n", 2, "file:// URLs"),
])
def test_malformed_csv_names_line_and_reason(tmp_path, text, line, reason):
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(CatalogError, match=reason) as err:
        read_catalog(tmp_path / "c.csv")
    assert err.value.line == line
    assert f"c.csv:{line}:" in str(err.value)


def test_malformed_jsonl_line(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"item_id": "a", "product_id": "p", "image": "x"}\n{"item_id": \n')
    with pytest.raises(CatalogError, match="invalid JSON") as err:
        read_catalog(tmp_path / "c.jsonl")
    assert err.value.line == 2


def test_empty_missing_and_unsupported(tmp_path):
    (tmp_path / "c.csv").write_text("item_id,product_id,image\n")
    with pytest.raises(CatalogError, match="no rows"):
        read_catalog(tmp_path / "c.csv")
    with pytest.raises(CatalogError, match="not found"):
        read_catalog(tmp_path / "nope.csv")
    (tmp_path / "c.xml").write_text("<x/>")
    with pytest.raises(CatalogError, match="unsupported"):
        read_catalog(tmp_path / "c.xml")
