import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from diffprune import DiffpruneError
from diffprune._fs import staged_dir
from diffprune.archs import Family
from diffprune.report import Report, markdown_table, to_jsonable

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass
class _Result:
    family: Family
    where: Path
    values: tuple


def test_report_writes_markdown_json_and_pngs(tmp_path):
    out = tmp_path / "report"
    report = Report(out, title="Test report")
    report.text("Hello.", heading="Intro")
    report.table([{"name": "unet", "params": 1234567, "ratio": 0.123456}], heading="Table", key="rows")
    report.metrics("result", _Result(Family.SDXL, Path("/x"), (1, 2.5)))
    report.bar_chart("bars", ["a", "b"], [1.0, 2.0], ylabel="value")
    report.image_grid("grid", [Image.new("RGB", (8, 8), "red")] * 3, captions=["one", "two", "three"], columns=2)
    assert report.write() == out.resolve()
    md = (out / "report.md").read_text()
    assert md.startswith("# Test report") and "| unet | 1,234,567 | 0.1235 |" in md and "![grid](grid.png)" in md
    data = json.loads((out / "report.json").read_text())
    assert data["rows"] == [{"name": "unet", "params": 1234567, "ratio": 0.123456}]
    assert data["result"] == {"family": "sdxl", "where": "/x", "values": [1, 2.5]}
    assert data["files"] == ["bars.png", "grid.png"]
    for name in data["files"]:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)


def test_report_refuses_a_non_empty_folder_before_any_work(tmp_path):
    (tmp_path / "old.txt").write_text("keep")
    with pytest.raises(DiffpruneError, match="not empty"):
        Report(tmp_path, title="x")
    with pytest.raises(DiffpruneError, match="not an earlier diffprune output"):
        Report(tmp_path, title="x", overwrite=True)  # e.g. `--out . --overwrite` must not wipe a folder
    first = Report(tmp_path / "r", title="first")
    first.text("old")
    first.write()
    report = Report(tmp_path / "r", title="new", overwrite=True)
    report.text("fresh")
    report.write()
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["diffprune.json", "report.json", "report.md"]
    assert "fresh" in (tmp_path / "r" / "report.md").read_text()
    assert (tmp_path / "old.txt").read_text() == "keep"


def test_report_never_goes_into_an_input_model_folder(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    for target in (model / "report", model, tmp_path):
        with pytest.raises(DiffpruneError, match="overlaps the input"):
            Report(target, title="x", overwrite=True, protect=[model])


def test_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "out") as staging:
            (staging / "partial.txt").write_text("half")
            raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []


def test_unsafe_names_and_reserved_keys_are_refused(tmp_path):
    report = Report(tmp_path / "r", title="x")
    with pytest.raises(DiffpruneError, match="file name"):
        report.bar_chart("../escape", ["a"], [1.0], ylabel="v")
    with pytest.raises(DiffpruneError, match="reserved"):
        report.metrics("files", [1])


def test_json_and_table_helpers():
    with pytest.raises(DiffpruneError):
        to_jsonable(object())
    assert to_jsonable(float("nan")) is None
    assert markdown_table([]) == "_(no rows)_"
    assert markdown_table([{"a": 1}, {"b": "x|y"}]).splitlines()[3] == "|  | x\\|y |"
