"""The planted corpus through the whole pipeline: dedup clusters, spam reasons, languages, accounting."""

import gzip
from collections import Counter

import pytest
from dp_planted import FOOTER, jaccard, outputs, sources

from data_pipeline.sample.generate import MALFORMED_LINES


@pytest.fixture(scope="module")
def o(planted_run):
    return outputs(planted_run)


def test_planted_pairs_have_the_intended_similarity(planted):
    texts = planted[1]["texts"]
    assert 0.85 <= jaccard(texts["near-a"], texts["near-b"]) <= 0.9
    assert 0.85 <= jaccard(texts["near-a"], texts["near-c"]) <= 0.9
    assert 0.25 <= jaccard(texts["far-a"], texts["far-b"]) <= 0.35


def test_one_document_kept_per_duplicate_cluster(o):
    kept, rejected = o["kept"], o["rejected"]
    for cluster, stage, reason in [(["exact-a", "exact-b", "exact-c"], "exact_dedup", "exact_duplicate"),
                                   (["norm-a", "norm-b"], "exact_dedup", "exact_duplicate"),
                                   (["near-a", "near-b", "near-c"], "minhash", "near_duplicate")]:
        assert cluster[0] in kept
        for dup in cluster[1:]:
            assert dup not in kept
            assert rejected[dup] | {"source": None} == {"id": dup, "stage": stage, "reason": reason,
                                                        "duplicate_of": cluster[0], "source": None}
    assert "far-a" in kept and "far-b" in kept


@pytest.mark.parametrize("doc_id, stage, reason", [
    ("spam-lorem", "c4", "c4_lorem_ipsum"),
    ("spam-repeat", "gopher_repetition", "gopher_repetition_dup_line_frac"),
    ("spam-keywords", "gopher_quality", "gopher_enough_stop_words"),
    ("spam-nav", "gopher_quality", "gopher_short_doc"),
    ("html-nav", "gopher_quality", "gopher_short_doc"),
    ("french", "language", "language_fr"),
    ("blocked", "url_filter", "url_domain"),
])
def test_spam_and_unwanted_documents_dropped_with_their_reason(o, doc_id, stage, reason):
    assert doc_id not in o["kept"]
    assert (o["rejected"][doc_id]["stage"], o["rejected"][doc_id]["reason"]) == (stage, reason)


def test_languages_are_labelled_by_the_dominant_language(o):
    kept = o["kept"]
    assert kept["mixed-en"]["language"] == "en" and kept["mixed-zh"]["language"] == "zh"
    assert {kept[f"zh-{i:02d}"]["language"] for i in range(4)} == {"zh"}
    assert {kept[f"base-{i:02d}"]["language"] for i in range(12)} == {"en"}


def test_html_is_replaced_by_its_main_text(o, planted):
    assert o["kept"]["html-page"]["text"] == planted[1]["html_text"]
    warc = [d for d in o["kept_list"] if d["source"].endswith("c.warc.gz:1")]
    assert [d["text"] for d in warc] == [planted[1]["warc_text"]]
    assert [r["reason"] for r in o["rejected_list"] if r["source"].endswith("c.warc.gz:2")] == ["not_html"]


def test_edge_lines_beyond_their_first_occurrences_are_removed(o, planted):
    with_footer = sorted(i for i, d in o["kept"].items() if FOOTER in d["text"])
    assert with_footer == ["footer-0", "footer-1", "footer-2"]
    for i in range(3, 6):  # the footer line is gone, the rest is untouched
        assert o["kept"][f"footer-{i}"]["text"] == planted[1]["texts"][f"footer-{i}"].removesuffix("\n" + FOOTER)


def test_every_malformed_line_is_an_error_record(o, planted):
    root = planted[0]
    errors = {(e["file"].rsplit("/", 1)[1], e["line"]) for e in o["errors"]}
    assert errors == {("a.jsonl.gz", n) for n in range(11, 15)} | {("b.jsonl", n) for n in range(6, 11)}
    assert len(o["errors"]) == len(MALFORMED_LINES)
    assert len(gzip.decompress((root / "input" / "a.jsonl.gz").read_bytes()).splitlines()) == 24


def test_every_input_line_appears_exactly_once(planted_run, planted):
    root, info = planted
    seen = Counter(sources(planted_run))
    assert max(seen.values()) == 1
    expected = {f"{root}/input/a.jsonl.gz:{n}" for n in range(1, 25)}
    expected |= {f"{root}/input/b.jsonl:{n}" for n in range(1, info["input_lines"] - 24 - 2 + 1)}
    expected |= {f"{root}/input/c.warc.gz:{n}" for n in (1, 2)}
    assert set(seen) == expected


def test_manifest_counts_match_the_output_files(o):
    m = o["manifest"]
    totals = m["totals"]
    assert totals["balanced"] is True
    assert (totals["kept"], totals["rejected"], totals["errors"]) == (
        len(o["kept_list"]), len(o["rejected_list"]), len(o["errors"]))
    dropped = Counter()
    for steps in m["stages"].values():
        for step in steps:
            dropped.update(step.get("dropped", {}))
    assert dropped == Counter(r["reason"] for r in o["rejected_list"])
    assert m["config"]["steps"]["line_dedup"]["max_count"] == 3
    assert totals["tokens"] > totals["kept"]


def test_same_result_whatever_the_number_of_tasks(planted_run, planted_run_one_task):
    three, one = outputs(planted_run), outputs(planted_run_one_task)
    assert {i: d["text"] for i, d in three["kept"].items()} == {i: d["text"] for i, d in one["kept"].items()}
    assert three["rejected"] == one["rejected"]
    assert sorted(map(str, three["errors"])) == sorted(map(str, one["errors"]))


def test_a_run_that_keeps_nothing_still_accounts_for_every_line(tmp_path):
    import orjson
    import yaml

    from data_pipeline.config import load_config
    from data_pipeline.pipeline import run_pipeline

    (tmp_path / "in.jsonl").write_bytes(orjson.dumps({"id": "a", "text": "Too short."}) + b"\nnot json\n")
    config = {"input": {"paths": [str(tmp_path / "in.jsonl")]}, "output_dir": str(tmp_path / "out"), "workers": 1,
              "progress": False, "steps": {"url_filter": {"use_integrated_lists": False}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    totals = run_pipeline(load_config(str(tmp_path / "c.yaml")))["totals"]
    assert (totals["input_lines"], totals["kept"], totals["rejected"], totals["errors"]) == (2, 0, 1, 1)
    assert not (tmp_path / "out" / "tokens").exists() and not (tmp_path / "out" / "tokenizer.model").exists()
    assert outputs(tmp_path / "out")["kept_list"] == []


def test_manifest_reports_the_characters_each_editing_stage_removed(o):
    m = o["manifest"]
    line_dedup = next(step for step in m["stages"]["filter"] if step["step"].endswith("Line dedup"))
    footers = 3 * len("\n" + FOOTER)  # and the lines spam-repeat repeats past 3 times, before it is dropped
    assert line_dedup["removed_chars"]["repeated_edge_lines"] > footers
    extract = next(step for step in m["stages"]["ingest"] if step["step"].endswith("HTML extraction"))
    assert extract["removed_chars"]["markup_and_boilerplate"] > 0
    per_stage = sum(sum(summary["removed_chars"].values()) for summary in m["summary"].values())
    assert m["totals"]["removed_chars"] == per_stage


def test_line_dedup_removes_the_listed_lines_and_counts_their_characters(tmp_path):
    from datatrove.data import Document

    from data_pipeline.sorted_runs import RunWriter, key_bytes
    from data_pipeline.steps.line_dedup import LineDedup

    marks = RunWriter(str(tmp_path), "00000", 1 << 20, record_size=12)
    for key, line in ((1, 0), (1, 2), (2, 0)):
        marks.add(0, key_bytes(key) + line.to_bytes(4, "big"))
    marks.close()
    docs = [Document(text="head\nbody\nfoot", id="a", metadata={"key": 1}),
            Document(text="only", id="b", metadata={"key": 2}), Document(text="x", id="c", metadata={"key": 3})]
    step = LineDedup(str(tmp_path))
    assert [(d.id, d.text) for d in step.run(iter(docs), rank=0)] == [("a", "body"), ("c", "x")]
    assert step.stats["removed_chars_repeated_edge_lines"].total == len("head\n\nfoot")
    assert step.stats["dropped_line_dedup_empty"].total == 1
