"""A small corpus with planted cases, and readers of a pipeline output directory."""

import glob
import gzip
import random
from pathlib import Path

import orjson

from data_pipeline.sample import generate as g
from data_pipeline.steps.minhash import MinhashConfig, MinhashHasher

BLOCKED_DOMAIN = "blocked-casino.com"
FOOTER = "Subscribe to our newsletter for more stories from the valley."
LINE_MAX_COUNT = 3
MAX_DOC_BYTES = 20000


def jaccard(a: str, b: str) -> float:
    hasher = MinhashHasher(MinhashConfig())
    x, y = set(hasher.shingles(a).tolist()), set(hasher.shingles(b).tolist())
    return len(x & y) / len(x | y)


def build_planted(root: Path) -> dict:
    """Writes `root/input/{a.jsonl.gz,b.jsonl,c.warc.gz}`; returns the texts the tests compare against."""
    rng = random.Random(7)
    texts = {f"base-{i:02d}": g.english_doc(rng) for i in range(12)}
    texts.update({f"zh-{i:02d}": g.chinese_doc(rng) for i in range(4)})
    exact, norm, near, far = (g.english_doc(rng) for _ in range(4))
    texts.update({"exact-a": exact, "exact-b": exact, "exact-c": exact, "norm-a": norm,
                  "norm-b": g.normalized_variant(norm), "near-a": near, "near-b": g.edit_words(near, rng, 75),
                  "near-c": g.edit_words(near, rng, 75), "far-a": far, "far-b": g.edit_words(far, rng, 9)})
    texts.update({
        "spam-lorem": g.english_doc(rng, paragraphs=3) + "\n" + g.lorem_ipsum(),
        "spam-repeat": g.repeated_lines(rng),
        "spam-keywords": g.keyword_list(rng),
        "spam-nav": g.navigation_text(),
        "mixed-en": g.mixed_doc(rng, "en"),
        "mixed-zh": g.mixed_doc(rng, "zh"),
        "french": g.french_doc(rng),
        "blocked": g.english_doc(rng),
    })
    for i in range(2 * LINE_MAX_COUNT):  # the same last line in 6 documents: the last 3 lose it
        texts[f"footer-{i}"] = g.english_doc(rng) + "\n" + FOOTER
    records = [{"id": k, "text": v} for k, v in texts.items()]
    for r in records:
        r["url"] = f"https://{BLOCKED_DOMAIN if r['id'] == 'blocked' else 'ok.example.com'}/{r['id']}"
    html_text = g.english_doc(rng)
    records.append({"id": "html-page", "html": g.html_page("A page", html_text)})
    records.append({"id": "html-nav", "html": g.navigation_page()})
    malformed = list(g.MALFORMED_LINES.values())
    # footers must come in key order: keep the file order fixed (no shuffle of footer docs)
    first, second = records[:20], records[20:]
    inp = root / "input"
    inp.mkdir(parents=True)
    (inp / "a.jsonl.gz").write_bytes(gzip.compress(g.jsonl(first[:10] + malformed[:4] + first[10:])))
    (inp / "b.jsonl").write_bytes(g.jsonl(second[:5] + malformed[4:] + second[5:]))
    warc_text = g.english_doc(rng)
    g.write_warc(inp / "c.warc.gz", [("https://ok.example.com/w1", "text/html", g.html_page("W", warc_text)),
                                     ("https://ok.example.com/img", "image/png", "PNG")])
    return {"texts": texts, "html_text": html_text, "warc_text": warc_text, "malformed": len(malformed),
            "input_lines": len(records) + len(malformed) + 2}


def read_jsonl(pattern: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(pattern, recursive=True)):
        with open(path, "rb") as f:
            rows.extend(orjson.loads(line) for line in f)
    return rows


def outputs(out: Path) -> dict:
    """kept documents by id, rejected records by id, error records, manifest."""
    kept = {d["id"]: d for d in read_jsonl(f"{out}/docs/*.jsonl")}
    rejected = {r["id"]: r for r in read_jsonl(f"{out}/rejected/**/*.jsonl")}
    return {"kept": kept, "rejected": rejected, "errors": read_jsonl(f"{out}/errors/*.jsonl"),
            "kept_list": read_jsonl(f"{out}/docs/*.jsonl"), "rejected_list": read_jsonl(f"{out}/rejected/**/*.jsonl"),
            "manifest": orjson.loads((out / "manifest.json").read_bytes())}


def sources(out: Path) -> list[str]:
    """`file:line` of every kept, rejected and error record (the accounting invariant's left side)."""
    o = outputs(out)
    return ([d["source"] for d in o["kept_list"]] + [r["source"] for r in o["rejected_list"]]
            + [f"{e['file']}:{e['line']}" for e in o["errors"]])
