"""Hard-wrapped plain text (man pages, mirrored pages): FineWeb's C4 setting keeps the body, near-duplicate
mirrors are still found after cleaning, and every removed character is reported by stage and reason."""

import gzip
import random
import textwrap

import orjson
import yaml
from datatrove.data import Document
from dp_planted import outputs

from data_pipeline.config import DEFAULTS, load_config
from data_pipeline.pipeline import run_pipeline
from data_pipeline.sample import generate as g
from data_pipeline.steps.quality import RuleFilter

MAN_SECTIONS = {
    "NAME": ["pack - store files together in one archive and restore them later"],
    "DESCRIPTION": [
        "The pack program saves many files together into a single archive on a tape or a disk, and it can "
        "restore individual files from that archive when they are needed again. The files are stored in the "
        "order in which they are named on the command line, and directories are read recursively unless the "
        "caller asks for the opposite with one of the options described below.",
        "When an archive is restored, the files are written relative to the current directory, and the owner "
        "and the permissions of each file are set as they were when the file was stored, provided that the "
        "user running the program is allowed to set them. A file that already exists is replaced by default, "
        "which can be changed with the options that keep the newer of the two copies.",
        "The program reads its options from the command line only. It does not look at the environment except "
        "for the name of the default archive, and it writes its messages to the standard error stream so that "
        "an archive written to the standard output is never mixed with any of them.",
    ],
    "EXIT STATUS": ["The program returns zero when every file was stored or restored, and a positive number "
                    "that names the first error otherwise, as listed in the section on diagnostics."],
}


def man_page() -> str:
    """Section headings, and paragraphs hard-wrapped at 72 columns and indented, as `man` prints them."""
    indent = " " * 7
    parts = []
    for heading, paragraphs in MAN_SECTIONS.items():
        parts.append(heading + "\n" + "\n\n".join(textwrap.fill(p, 72, initial_indent=indent,
                                                                subsequent_indent=indent) for p in paragraphs))
    return "\n\n".join(parts)


def wrapped(text: str, width: int) -> str:
    """`text`'s one-line paragraphs hard-wrapped at `width`, blank lines between them."""
    return "\n\n".join(textwrap.fill(paragraph, width) for paragraph in text.split("\n"))


def c4(params: dict) -> RuleFilter:
    return RuleFilter("c4", params, DEFAULTS["steps"]["quality"]["c4"]["per_language"])


def test_c4_default_keeps_a_hard_wrapped_body_and_counts_what_it_removed():
    text = man_page()
    doc = Document(text=text, id="man", metadata={"language": "en"})
    rule = c4(DEFAULTS["steps"]["quality"]["c4"]["params"])
    assert rule.filter(doc) is True
    lines = [line for line in text.split("\n") if line.strip()]
    headings = [line for line in lines if line in MAN_SECTIONS]
    assert doc.text == "\n".join(line.strip() for line in lines if line not in headings)  # the whole body
    assert len(lines) - len(headings) == 21  # 5 of them end a sentence
    removed = {k.removeprefix("removed_chars_"): v.total for k, v in rule.stats.stats.items()
               if k.startswith("removed_chars_")}
    assert removed == {"too_few_words": len("NAME") + len("DESCRIPTION") + len("EXIT STATUS"),
                       "whitespace": len(text) - len(doc.text) - len("NAMEDESCRIPTIONEXIT STATUS")}
    # datatrove's default drops every line without terminal punctuation: the 5 left hold too few sentences
    datatrove_default = Document(text=text, id="man", metadata={"language": "en"})
    assert c4({"filter_no_terminal_punct": True}).filter(datatrove_default) == (False, "c4_too_few_sentences")


def test_hard_wrapped_mirrors_are_near_duplicates_after_cleaning(tmp_path):
    rng = random.Random(11)
    page = g.english_doc(rng, paragraphs=9)
    records = [{"id": "man", "text": man_page()}, {"id": "page", "text": wrapped(page, 72)}]
    records += [{"id": f"mirror-{width}", "text": wrapped(g.edit_words(page, rng, 75), width)}
                for width in (72, 76, 80)]
    records += [{"id": f"other-{i}", "text": wrapped(g.english_doc(rng, paragraphs=9), 72)} for i in range(3)]
    (tmp_path / "in.jsonl").write_bytes(g.jsonl(records))
    off = {"enabled": False}
    config = {"input": {"paths": [str(tmp_path / "in.jsonl")]}, "output_dir": str(tmp_path / "out"), "workers": 1,
              "progress": False, "steps": {"url_filter": off, "language": off, "tokenize": off,
                                           "minhash": {"bucket_tasks": 2}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    manifest = run_pipeline(load_config(str(tmp_path / "c.yaml")))

    o = outputs(tmp_path / "out")
    assert sorted(o["kept"]) == ["man", "other-0", "other-1", "other-2", "page"]
    assert o["kept"]["man"]["text"] == "\n".join(line.strip() for line in man_page().split("\n")
                                                 if len(line.split()) >= 3)
    for width in (72, 76, 80):
        rejected = o["rejected"][f"mirror-{width}"]
        assert (rejected["reason"], rejected["duplicate_of"]) == ("near_duplicate", "page")
    # only C4 edits text here: the characters it reports removed are all that the filter stage's output lost
    given = {r["id"]: r["text"] for r in records}
    filtered = [orjson.loads(line) for f in (tmp_path / "out/work/filtered").glob("*.jsonl.gz")
                for line in gzip.decompress(f.read_bytes()).splitlines()]
    assert len(filtered) == 8
    lost = sum(len(given[d["id"]]) - len(d["text"]) for d in filtered)
    c4_step = next(step for step in manifest["stages"]["filter"] if step["step"].endswith("c4"))
    assert sum(c4_step["removed_chars"].values()) == manifest["totals"]["removed_chars"] == lost > 0
    assert manifest["summary"]["filter"]["removed_chars"] == c4_step["removed_chars"]
    assert orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())["totals"] == manifest["totals"]
