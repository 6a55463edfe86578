"""Dataset loaders on tiny fixture trees in each distributed format (interface 4)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import (
    build_aadb,
    build_aesr1_json,
    build_ava,
    build_csv,
    build_flickr_aes,
    build_jsonl,
    build_koniq,
    build_para,
    build_q_align_json,
    build_spaq,
    build_tad66k,
    build_vqr1_jsonl,
    write_garbage,
)

from aesr1.data import (
    DatasetFileNotFoundError,
    LoadedDataset,
    find_dataset_root,
    load_dataset,
    parse_data_spec,
)


def reference_normalise(value: float, lo: float, hi: float) -> float:
    return (np.float64(value) - np.float64(lo)) / (np.float64(hi) - np.float64(lo))


def by_id(items) -> dict:
    return {item.id: item for item in items}


def assert_matches(items, expected, lo, hi, split):
    """Every expected record of `split` is loaded with the float64-normalised score and std."""
    want = {key: exp for key, exp in expected.items() if split == "all" or exp.split == split}
    got = by_id(items)
    assert set(got) == set(want)
    for key, exp in want.items():
        assert got[key].score == pytest.approx(reference_normalise(exp.score, lo, hi), abs=1e-12)
        assert 0.0 <= got[key].score <= 1.0
        if exp.std is None:
            assert got[key].std is None
        else:
            assert got[key].std == pytest.approx(exp.std / (hi - lo), abs=1e-12)
        assert Path(got[key].image) == exp.image


# ------------------------------------------------------------------------------------------------ AVA


def ava_reference(votes: list[int]) -> tuple[float, float]:
    levels = np.arange(1, 11, dtype=np.float64)
    weights = np.asarray(votes, dtype=np.float64)
    mos = np.average(levels, weights=weights)
    std = math.sqrt(np.average((levels - mos) ** 2, weights=weights))
    return mos, std


def test_ava_mos_std_and_official_split(tmp_path):
    root, expected, votes = build_ava(tmp_path, n=20)
    for key, counts in zip(expected, votes, strict=True):
        expected[key].score, expected[key].std = ava_reference(counts)
    test = load_dataset("ava", root, "test")
    train = load_dataset("ava", root, "train")
    assert len(test) == 5 and len(train) == 15
    assert_matches(test, expected, 1, 10, "test")
    assert_matches(train, expected, 1, 10, "train")
    assert not set(by_id(test)) & set(by_id(train))
    assert len(load_dataset("ava", root, "all")) == 20
    assert test[0].source == "ava" and test[0].attributes["votes"] == votes[0]
    assert isinstance(test, LoadedDataset) and test.report.split_rule == "official"


def test_ava_rows_without_votes_are_reported_not_loaded(tmp_path):
    root, _, _ = build_ava(tmp_path, n=8, zero_votes=True)
    items = load_dataset("ava", root, "all")
    assert len(items) == 8
    assert len(items.report.invalid_rows) == 1 and "no votes" in items.report.invalid_rows[0][1]


def test_ava_missing_files_are_named(tmp_path):
    root, _, _ = build_ava(tmp_path, n=4)
    (root / "aesthetics_image_lists" / "generic_test.jpgl").unlink()
    with pytest.raises(DatasetFileNotFoundError, match="generic_test.jpgl"):
        load_dataset("ava", root, "test")
    assert len(load_dataset("ava", root, "all")) == 4  # "all" needs no test list
    (root / "AVA.txt").unlink()
    with pytest.raises(FileNotFoundError, match="AVA.txt") as info:
        load_dataset("ava", root, "all")
    assert str(root / "AVA.txt") in info.value.expected


def test_ava_malformed_line_names_file_and_line(tmp_path):
    root, _, _ = build_ava(tmp_path, n=3)
    with open(root / "AVA.txt", "a") as handle:
        handle.write("4 12345 1 2 3\n")
    with pytest.raises(ValueError, match=r"AVA.txt:4 has 5 fields, expected 15"):
        load_dataset("ava", root, "all")


def test_missing_and_unreadable_images_are_skipped_counted_and_listed(tmp_path):
    root, expected, _ = build_ava(tmp_path, n=12, missing=["953001"], corrupt=["953002", "953004"])
    items = load_dataset("ava", root, "all")
    report = items.report
    assert len(items) == 9 and report.loaded == 9 and report.in_split == 12 and report.skipped == 3
    assert report.missing == [str(expected["953001"].image)]
    assert sorted(path for path, _ in report.unreadable) == sorted(
        str(expected[key].image) for key in ("953002", "953004")
    )
    assert all(reason.startswith("unreadable") for _, reason in report.unreadable)
    assert {"953001", "953002", "953004"}.isdisjoint(by_id(items))
    summary = report.summary()
    assert "9 of 12" in summary and "1 missing" in summary and "2 unreadable" in summary
    report.write(tmp_path / "report.json")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["skipped"] == 3 and saved["missing"] == report.missing
    assert [path for path, _ in saved["unreadable"]] == [path for path, _ in report.unreadable]
    # "exists" does not open files: the garbage files pass, the missing one does not
    assert len(load_dataset("ava", root, "all", check_images="exists")) == 11
    assert len(load_dataset("ava", root, "all", check_images="none")) == 12


def test_truncated_image_caught_only_by_decode(tmp_path):
    root, expected, _ = build_ava(tmp_path, n=4)
    target = expected["953003"].image
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(target, quality=95)
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])  # header intact, pixels cut
    assert len(load_dataset("ava", root, "all")) == 4
    decoded = load_dataset("ava", root, "all", check_images="decode")
    assert len(decoded) == 3 and decoded.report.unreadable[0][0] == str(target)


def test_image_dir_override(tmp_path):
    root, _, _ = build_ava(tmp_path / "ava", n=4)
    (root / "images").rename(tmp_path / "elsewhere")
    assert len(load_dataset("ava", root, "all")) == 0
    assert len(load_dataset("ava", root, "all", image_dir=tmp_path / "elsewhere")) == 4


# ---------------------------------------------------------------------------------------- other IAA


def test_tad66k_official_split_and_scale(tmp_path):
    root, expected = build_tad66k(tmp_path)
    assert_matches(load_dataset("tad66k", root, "train"), expected, 1, 10, "train")
    assert_matches(load_dataset("tad66k", root, "test"), expected, 1, 10, "test")
    (root / "labels" / "merge" / "test.csv").unlink()
    assert len(load_dataset("tad66k", root, "train")) == 12  # train needs only train.csv
    with pytest.raises(DatasetFileNotFoundError, match="test.csv"):
        load_dataset("tad66k", root, "test")


def test_tad66k_score_outside_documented_range_is_an_error(tmp_path):
    root, _ = build_tad66k(tmp_path)
    with open(root / "labels" / "merge" / "test.csv", "a") as handle:
        handle.write("x.jpg,11.5\n")
    with pytest.raises(ValueError, match=r"11.5 at .*test.csv:8 lies outside the stated range \[1, 10\]"):
        load_dataset("tad66k", root, "test")


def test_flickr_aes_leading_spaces_worker_std_and_seeded_split(tmp_path):
    root, expected = build_flickr_aes(tmp_path, n=30)
    train, test = load_dataset("flickr-aes", root, "train"), load_dataset("flickr", root, "test")
    assert (len(train), len(test)) == (27, 3)
    assert not set(by_id(train)) & set(by_id(test))
    assert_matches(list(train) + list(test), expected, 1, 5, "all")
    assert test.report.split_rule == "seeded 9:1 (seed=0)"
    assert by_id(load_dataset("flickr-aes", root, "test")) == by_id(test)  # same seed, same split
    quarter = load_dataset("flickr-aes", root, "test", test_fraction=0.25)
    assert len(quarter) == 8 and quarter.report.split_rule == "seeded 0.75:0.25 (seed=0)"
    other = load_dataset("flickr-aes", root, "test", seed=1)
    assert set(by_id(other)) != set(by_id(test)) and len(other) == 3


def test_flickr_aes_without_worker_file_has_no_std(tmp_path):
    root, expected = build_flickr_aes(tmp_path, n=10, workers=False)
    assert_matches(load_dataset("flickr-aes", root, "all"), expected, 1, 5, "all")


def test_para_sessions_std_and_split(tmp_path):
    root, expected = build_para(tmp_path)
    assert_matches(load_dataset("para", root, "train"), expected, 1, 5, "train")
    assert_matches(load_dataset("para", root, "test"), expected, 1, 5, "test")
    (root / "annotation" / "PARA-GiaaTest.csv").unlink()
    with pytest.raises(DatasetFileNotFoundError, match="PARA-GiaaTest.csv"):
        load_dataset("para", root, "test")


def test_para_missing_column_is_named(tmp_path):
    root, _ = build_para(tmp_path)
    path = root / "annotation" / "PARA-GiaaTest.csv"
    path.write_text(path.read_text().replace("aestheticScore_mean", "meanScore"))
    with pytest.raises(ValueError, match="aestheticScore_mean"):
        load_dataset("para", root, "test")


def test_aadb_three_official_splits(tmp_path):
    root, expected = build_aadb(tmp_path)
    for split, count in (("train", 6), ("val", 3), ("test", 4), ("all", 13)):
        items = load_dataset("aadb", root, split)
        assert len(items) == count
        assert_matches(items, expected, 0, 1, split)


# ------------------------------------------------------------------------------------ quality + files


def test_koniq_mos_sd_and_official_sets(tmp_path):
    root, expected = build_koniq(tmp_path)
    for split, count in (("train", 12), ("val", 4), ("test", 4)):
        items = load_dataset("koniq10k", root, split)
        assert len(items) == count
        assert_matches(items, expected, 1, 5, split)
    zscore = by_id(load_dataset("koniq", root, "all", mos="zscore"))
    for key, exp in expected.items():
        assert zscore[key].score == pytest.approx(exp.zscore / 100.0, abs=1e-12) and zscore[key].std is None


def test_koniq_without_sets_uses_seeded_split(tmp_path):
    root, _ = build_koniq(tmp_path, n=20, sets=False)
    assert len(load_dataset("koniq10k", root, "test")) == 2
    with pytest.raises(ValueError, match="validation"):
        load_dataset("koniq10k", root, "val")


@pytest.mark.parametrize("as_csv", [False, True])
def test_spaq_xlsx_and_csv_export(tmp_path, as_csv):
    root, expected = build_spaq(tmp_path, as_csv=as_csv)
    items = load_dataset("spaq", root, "all")
    assert_matches(items, expected, 0, 100, "all")
    assert set(items[0].attributes) == {"brightness", "colorfulness", "contrast", "noisiness", "sharpness"}
    assert len(load_dataset("spaq", root, "test")) == 1


def test_csv_with_stated_range(tmp_path):
    path, expected = build_csv(tmp_path, lo=1, hi=10)
    with pytest.raises(ValueError, match="score_range must be stated"):
        load_dataset("csv", path, "all")
    assert_matches(load_dataset("csv", path, "all", score_range=(1, 10)), expected, 1, 10, "all")
    assert len(load_dataset("csv", path, "test", score_range="1..10")) == 2
    with pytest.raises(ValueError, match="outside the stated range"):
        load_dataset("csv", path, "all", score_range=(1, 5))


def test_csv_split_column_is_used(tmp_path):
    path, expected = build_csv(tmp_path, with_split=True)
    items = load_dataset("csv", path, "test", score_range=(1, 10))
    assert_matches(items, expected, 1, 10, "test")
    assert items.report.split_rule == "official"


def test_jsonl_and_image_root(tmp_path):
    path, expected = build_jsonl(tmp_path / "a")
    assert_matches(load_dataset("jsonl", path, "all", score_range=(0, 100)), expected, 0, 100, "all")
    moved = tmp_path / "b" / "scores.jsonl"
    moved.parent.mkdir()
    path.rename(moved)
    assert len(load_dataset("jsonl", moved, "all", score_range=(0, 100))) == 0
    assert len(load_dataset("jsonl", moved, "all", score_range=(0, 100), image_root=tmp_path / "a")) == 12


def test_released_aesr1_json(tmp_path):
    path, expected = build_aesr1_json(tmp_path)
    assert_matches(load_dataset("aesr1", path, "all"), expected, 0, 1, "all")


def test_visualquality_r1_jsonl(tmp_path):
    path, expected = build_vqr1_jsonl(tmp_path)
    assert_matches(load_dataset("visualquality-r1", path, "all"), expected, 1, 5, "all")


def test_q_align_json_needs_range(tmp_path):
    path, expected = build_q_align_json(tmp_path, lo=0, hi=100)
    with pytest.raises(ValueError, match="score_range"):
        load_dataset("q-align", path, "all")
    assert_matches(load_dataset("qalign", path, "all", score_range=(0, 100)), expected, 0, 100, "all")


def test_generic_root_kind_is_checked(tmp_path):
    path, _ = build_csv(tmp_path)
    with pytest.raises(ValueError, match="annotation file itself"):
        load_dataset("csv", tmp_path, "all", score_range=(1, 10))
    with pytest.raises(ValueError, match="dataset folder"):
        load_dataset("ava", path, "all")


# ------------------------------------------------------------------------------------- bad arguments


def test_bad_arguments_raise_naming_the_argument(tmp_path):
    root, _ = build_aadb(tmp_path)
    with pytest.raises(ValueError, match="name: unknown dataset 'imagenet'"):
        load_dataset("imagenet", root)
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("aadb", root, "dev")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['colour'\]"):
        load_dataset("aadb", root, colour="red")
    with pytest.raises(ValueError, match="check_images"):
        load_dataset("aadb", root, check_images="maybe")
    with pytest.raises(DatasetFileNotFoundError, match="dataset root"):
        load_dataset("aadb", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no validation split"):
        load_dataset("ava", root, "val")
    with pytest.raises(TypeError, match="seed"):
        load_dataset("aadb", root, seed="0")


def test_seeded_split_does_not_depend_on_file_order(tmp_path):
    root, _ = build_flickr_aes(tmp_path, n=40)
    before = set(by_id(load_dataset("flickr-aes", root, "test")))
    path = root / "FLICKR-AES_image_score.txt"
    lines = path.read_text().splitlines()
    random.Random(0).shuffle(lines)
    path.write_text("\n".join(lines) + "\n")
    assert set(by_id(load_dataset("flickr-aes", root, "test"))) == before


def test_seeded_split_is_decided_before_skipping_images(tmp_path):
    root, expected = build_flickr_aes(tmp_path, n=40)
    before = set(by_id(load_dataset("flickr-aes", root, "test")))
    victim = sorted(before)[0]
    write_garbage(expected[victim].image)
    after = load_dataset("flickr-aes", root, "test")
    assert set(by_id(after)) == before - {victim} and after.report.skipped == 1


def test_synthetic_loads_through_the_registry(tmp_path):
    train = load_dataset("synthetic", tmp_path, "train", n=20)
    test = load_dataset("synthetic", tmp_path, "test", n=20)
    assert (len(train), len(test)) == (18, 2) and test[0].source == "synthetic"
    assert set(test[0].attributes) >= {"exposure", "contrast", "palette"}


# ------------------------------------------------------------------------------------------ data spec


def test_parse_data_spec_entries_and_options(tmp_path):
    specs = parse_data_spec("ava:/data/AVA, tad66k:/data/TAD66K,synthetic,csv:/x/y.csv?range=1..10&split=all")
    assert [(s.name, s.root) for s in specs] == [
        ("ava", "/data/AVA"),
        ("tad66k", "/data/TAD66K"),
        ("synthetic", None),
        ("csv", "/x/y.csv"),
    ]
    assert specs[3].load_options() == {"score_range": "1..10"} and specs[3].options["split"] == "all"
    assert parse_data_spec("synthetic:/tmp/s?n=30")[0].load_options() == {"n": 30}
    two = parse_data_spec("csv:/a.csv?label=mine&range=0..1,csv:/b.csv?label=theirs&range=0..1")
    assert [s.label for s in two] == ["mine", "theirs"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty data spec"),
        ("ava", "needs a root"),
        ("nope:/x", "unknown dataset"),
        ("ava:/a,ava:/b", "more than once"),
        ("csv:/a.csv?range", "key=value"),
    ],
)
def test_parse_data_spec_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_data_spec(spec)


def test_spec_load_applies_options(tmp_path):
    path, _ = build_csv(tmp_path)
    (spec,) = parse_data_spec(f"csv:{path}?range=1..10&split=all")
    assert len(spec.load("test")) == 20


def test_find_dataset_root_under_common_root(tmp_path):
    build_para(tmp_path / "PARA")
    build_aadb(tmp_path / "aadb")
    assert find_dataset_root("para", tmp_path) == tmp_path / "PARA"
    assert find_dataset_root("AADB", tmp_path) == tmp_path / "aadb"
    assert find_dataset_root("para", tmp_path / "PARA") == tmp_path / "PARA"
    with pytest.raises(DatasetFileNotFoundError, match="AVA"):
        find_dataset_root("ava", tmp_path)
