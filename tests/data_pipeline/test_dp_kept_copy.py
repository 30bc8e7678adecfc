"""Of every duplicate group the pipeline keeps a copy that passes the rule filters, when one does.

Each planted group's first copy in key order (the one dedup used to keep) is upper-cased: the same text
to exact dedup's normalization and to MinHash (both lower-case), but without the lower-case stop words
Gopher's quality filter asks for, so the filters drop it."""

import random

import orjson
import pytest
import yaml

from data_pipeline.config import load_config
from data_pipeline.pipeline import run_pipeline
from data_pipeline.sample import generate as g
from dp_planted import jaccard, outputs

GROUPS = 4
TEXT = g.english_doc(random.Random(12))


def run(root, records: list[dict], overrides: list[str] = ()) -> dict:
    (root / "in.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    config = {"input": {"paths": [str(root / "in.jsonl")]}, "output_dir": str(root / "out"), "tasks": 2,
              "workers": 1, "progress": False,
              "steps": {"url_filter": {"use_integrated_lists": False}, "minhash": {"bucket_tasks": 2},
                        "tokenize": {"enabled": False}}}
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    run_pipeline(load_config(str(root / "c.yaml"), list(overrides)))
    return outputs(root / "out")


@pytest.fixture(scope="module")
def kept_copy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("kept_copy")
    rng = random.Random(11)
    records, groups = [], {}
    for i in range(GROUPS):
        text = g.english_doc(rng)
        groups[f"norm-{i}"] = {"bad": f"norm-{i}-upper", "clean": [f"norm-{i}-clean", f"norm-{i}-punct"]}
        records += [{"id": f"norm-{i}-upper", "text": text.upper()}, {"id": f"norm-{i}-clean", "text": text},
                    {"id": f"norm-{i}-punct", "text": text.replace(".", " .")}]
        text = g.english_doc(rng)
        edited = g.edit_words(text, rng, 75)
        groups[f"near-{i}"] = {"bad": f"near-{i}-upper", "clean": [f"near-{i}-clean", f"near-{i}-edited"]}
        records += [{"id": f"near-{i}-upper", "text": g.edit_words(text, rng, 75).upper()},
                    {"id": f"near-{i}-clean", "text": text}, {"id": f"near-{i}-edited", "text": edited}]
    bad_only = g.english_doc(rng).upper()  # a group of which no copy passes: nothing of it is kept
    records += [{"id": "bad-only-a", "text": bad_only}, {"id": "bad-only-b", "text": bad_only + " ."}]
    return run(root, records), groups, {r["id"]: r["text"] for r in records}


def test_the_planted_groups_are_duplicates_and_their_first_copy_fails_a_filter(kept_copy_run):
    o, groups, texts = kept_copy_run
    for i in range(GROUPS):
        assert jaccard(texts[f"near-{i}-upper"], texts[f"near-{i}-clean"]) > 0.7
    for group in groups.values():
        assert o["rejected"][group["bad"]]["reason"] in ("exact_duplicate", "gopher_enough_stop_words")
    assert o["rejected"]["bad-only-a"]["reason"] == "gopher_enough_stop_words"


def test_a_clean_copy_is_kept_in_every_group_and_the_others_name_it(kept_copy_run):
    o, groups, _ = kept_copy_run
    for name, group in groups.items():
        members = [group["bad"], *group["clean"]]
        kept = [m for m in members if m in o["kept"]]
        assert kept == [group["clean"][0]], name  # the smallest key of the copies that pass
        for m in members[1:]:
            if m not in kept:
                assert o["rejected"][m]["duplicate_of"] == kept[0], m
    for i in range(GROUPS):  # exact dedup now drops the bad copy, naming the clean one
        rejected = o["rejected"][f"norm-{i}-upper"]
        assert (rejected["reason"], rejected["duplicate_of"]) == ("exact_duplicate", f"norm-{i}-clean")
    assert "bad-only-a" not in o["kept"] and o["rejected"]["bad-only-b"]["duplicate_of"] == "bad-only-a"
    exact_index = next(s for s in o["manifest"]["stages"]["dedup_index"] if s["step"].endswith("Exact index"))
    assert exact_index["exact_duplicates_no_copy_passes"] == 1  # bad-only-b


def test_without_keep_passing_copy_the_smallest_key_is_kept_as_before(tmp_path):
    records = [{"id": "upper", "text": TEXT.upper()}, {"id": "clean", "text": TEXT}]
    o = run(tmp_path, records, ["steps.exact_dedup.keep_passing_copy=false"])
    assert o["rejected"]["clean"]["duplicate_of"] == "upper"
    assert o["rejected"]["upper"]["reason"] == "gopher_enough_stop_words" and o["kept"] == {}
