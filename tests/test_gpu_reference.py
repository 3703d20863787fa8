"""GPU reference figures: stored only from a real GPU, shown with provenance, or "not measured yet"."""

import json

import pytest
import torch

from helpers import gpu_reference
from helpers.environment import DeviceUnavailableError


@pytest.fixture
def reference_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_reference, "REFERENCE_DIR", tmp_path)
    return tmp_path


def test_a_missing_reference_reads_as_not_measured_yet(reference_dir):
    assert gpu_reference.load_reference("speed") is None
    text = gpu_reference.reference_table("speed", "scripts/benchmark_speed.py")
    assert "not measured yet" in text
    assert "python scripts/benchmark_speed.py" in text
    assert "|" not in text  # no table, so no figures


def test_writing_a_reference_needs_a_gpu(reference_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="must be measured on a CUDA GPU"):
        gpu_reference.write_reference("speed", [{"ms": 1.0}], script="x.py")
    assert not list(reference_dir.iterdir())


def test_a_written_reference_carries_device_versions_and_date(reference_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU 80GB")
    rows = [{"dtype": "float32", "step ms": 12.3456}, {"dtype": "bfloat16", "step ms": 6.5}]
    path = gpu_reference.write_reference("speed", rows, script="scripts/b.py", notes="batch 64")
    assert path == reference_dir / "speed.json"
    stored = json.loads(path.read_text())
    assert stored["device"] == "Test GPU 80GB"
    assert stored["torch"] == torch.__version__
    assert stored["rows"] == rows
    assert len(stored["date"]) == 10 and stored["date"][4] == "-"

    table = gpu_reference.reference_table("speed", "scripts/b.py")
    assert table.startswith("Measured on Test GPU 80GB with torch")
    assert "| dtype | step ms |" in table
    assert "| float32 | 12.3 |" in table and "| bfloat16 | 6.5 |" in table
    assert table.endswith("batch 64")


def test_rows_must_be_a_list_of_dicts(reference_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU")
    for rows in ([], [1.0], None):
        with pytest.raises(ValueError, match="non-empty list of dicts"):
            gpu_reference.write_reference("speed", rows, script="x.py")


def test_a_damaged_or_foreign_reference_file_says_what_to_do(reference_dir):
    (reference_dir / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON.*git checkout"):
        gpu_reference.load_reference("broken")
    (reference_dir / "foreign.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not written by write_reference"):
        gpu_reference.load_reference("foreign")


@pytest.mark.parametrize("name", ["", "../secrets", "a b", "x.json"])
def test_reference_names_cannot_escape_the_folder(name):
    with pytest.raises(ValueError):
        gpu_reference.reference_path(name)


def test_references_shipped_with_the_course_are_well_formed():
    for path in sorted(gpu_reference.REFERENCE_DIR.glob("*.json")):
        reference = gpu_reference.load_reference(path.stem)
        assert reference["rows"], path
        assert "cuda" in reference and reference["device"], path
