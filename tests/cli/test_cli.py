from typer.testing import CliRunner

from cli.main import cli
from indexer import current_generation, list_generations
from tests.conftest import write_catalog

runner = CliRunner()


def test_ingest_reports_a_malformed_line_with_exit_2(tmp_path):
    catalog = write_catalog(tmp_path, products=2, images=1)
    catalog.write_text(catalog.read_text() + "x,,no product,chairs,images/p0-v0.jpg,acme\n")
    result = runner.invoke(cli, ["ingest", str(catalog)])
    assert result.exit_code == 2
    assert "catalog.csv:4: missing value for required column 'product_id'" in result.output


def test_ingest_reports_missing_images(tmp_path):
    catalog = write_catalog(tmp_path, products=2, images=1)
    (tmp_path / "images/p1-v0.jpg").unlink()
    result = runner.invoke(cli, ["ingest", str(catalog)])
    assert result.exit_code == 2 and "catalog.csv:3: image not found" in result.output


def test_index_generations_and_rollback(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOOKALIKE_DEVICE", "cpu")
    monkeypatch.setenv("LOOKALIKE_WORKERS", "0")
    catalog = write_catalog(tmp_path / "cat", products=2, images=1)
    for _ in range(2):
        result = runner.invoke(cli, ["index", str(catalog), "--no-progress"])
        assert result.exit_code == 0, result.output
        assert "published gen-" in result.output
    first, second = list_generations(tmp_path / "data")
    assert current_generation(tmp_path / "data") == second
    assert "* " + second in runner.invoke(cli, ["generations"]).output
    result = runner.invoke(cli, ["rollback"])
    assert result.exit_code == 0 and current_generation(tmp_path / "data") == first
    assert runner.invoke(cli, ["rollback"]).exit_code == 2  # nothing older


def test_index_with_a_bad_checkpoint_fails_cleanly(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "bad.pt").write_bytes(b"nope")
    catalog = write_catalog(tmp_path / "cat", products=1, images=1)
    result = runner.invoke(cli, ["index", str(catalog), "--checkpoint", str(tmp_path / "bad.pt")])
    assert result.exit_code == 2 and "not a readable checkpoint" in result.output
    assert current_generation(tmp_path / "data") is None


def test_index_incremental_applies_changes_to_the_served_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOOKALIKE_DEVICE", "cpu")
    monkeypatch.setenv("LOOKALIKE_WORKERS", "0")
    catalog = write_catalog(tmp_path / "cat", products=3, images=1)
    assert runner.invoke(cli, ["index", str(catalog), "--no-progress"]).exit_code == 0
    lines = catalog.read_text().splitlines()
    catalog.write_text("\n".join(lines[:-1]) + "\n")  # drop the last product
    result = runner.invoke(cli, ["index", str(catalog), "--incremental", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "0 added, 0 updated, 1 deleted, 2 unchanged" in result.output
    assert list_generations(tmp_path / "data") == [current_generation(tmp_path / "data")]  # no new generation
