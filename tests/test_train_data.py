"""The cold-start records of the SFT stage (`aesr1.train.data.cold_start_records`)."""

from __future__ import annotations

import json

import pytest

from aesr1.train.config import config_from_dict
from aesr1.train.data import cold_start_records, load_items


@pytest.fixture
def synthetic(tmp_path):
    config = config_from_dict({
        "output_dir": str(tmp_path / "run"), "progress": False,
        "data": {"spec": f"synthetic:{tmp_path / 'images'}", "synthetic_n": 60, "synthetic_image_size": 16,
                 "cold_start_per_bin": 2},
    })  # fmt: skip
    train, _ = load_items(config, tmp_path / "run")
    return config, train


def test_built_once_by_the_main_process_and_published_whole(synthetic, tmp_path):
    config, train = synthetic
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(FileNotFoundError, match="aescot.jsonl"):  # only the main process builds
        cold_start_records(config, train, out, is_main=False)
    rows = cold_start_records(config, train, out)
    assert len(rows) == 6 and {"image", "prompt", "completion"} <= set(rows[0])
    names = sorted(p.name for p in out.iterdir())
    assert "aescot.jsonl" in names and "aescot.report.json" in names
    assert not [n for n in names if n.startswith(".")], "the staging folder was left behind"
    (out / "aescot.report.json").unlink()
    assert cold_start_records(config, train, out) == rows  # read, not built again
    assert not (out / "aescot.report.json").exists()
    assert cold_start_records(config, train, out, is_main=False) == rows


def test_a_given_file_is_read(synthetic, tmp_path):
    config, train = synthetic
    given = tmp_path / "given.jsonl"
    record = {"id": "a", "image": "a.jpg", "prompt": "Rate <image>.", "completion": "fine"}
    given.write_text(json.dumps(record) + "\n")
    config.data.cold_start = str(given)
    assert cold_start_records(config, train, tmp_path / "unused") == [record]
    assert not (tmp_path / "unused").exists()
