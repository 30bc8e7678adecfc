"""Docs/s per core of each data pipeline stage, next to datatrove's own steps measured in the same run.

    python bench/bench_data_pipeline.py [--docs 1000] [--baseline-docs 200]

On a generated corpus of ~3 kB documents (90% English, 10% Chinese; HTML pages for extraction), one
process. "per core" is documents per CPU-second (process time, all threads), best of 3 runs for our
steps and one run for datatrove's slow ones. Columns: ours, the baseline where one exists (datatrove's
default step, with spaCy word splitting; for MinHash 14×8 also datasketch), and ours / baseline.
Needs the bench extra (`pip install -e ".[bench]"`: spaCy, datasketch).
Targets: MinHash 128×16 ≥ 2,000 docs/s/core and 14×8 ≥ 2× datasketch; tokenize + shard writing ≥ 0.98×
the bare tokenizer.
"""

import argparse
import importlib.util
import random
import sys
import tempfile
import time
from collections.abc import Callable

from datatrove.data import Document
from rich.console import Console
from rich.table import Table

from data_pipeline.sample import generate as g
from data_pipeline.steps.exact_dedup import exact_hash
from data_pipeline.steps.extract import EXTRACTORS
from data_pipeline.steps.language import LanguageFilter
from data_pipeline.steps.line_dedup import edge_lines
from data_pipeline.steps.minhash import MinhashConfig, MinhashSignature
from data_pipeline.steps.quality import FILTERS, RuleFilter
from data_pipeline.steps.tokenize import MegatronShardWriter
from data_pipeline.text import split_words
from dotsllm.tokenizer import Tokenizer, train_sentencepiece


def corpus(n: int, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        zh = i % 10 == 9
        text = g.chinese_doc(rng, paragraphs=6, sentences=6) if zh else g.english_doc(rng, paragraphs=9)
        docs.append(Document(text=text, id=str(i), metadata={"key": i, "language": "zh" if zh else "en"}))
    return docs


def copies(docs: list[Document]) -> list[Document]:  # filters edit text in place
    return [Document(text=d.text, id=d.id, metadata=dict(d.metadata)) for d in docs]


def rate(fn: Callable[[list], object], docs: list[Document], repeats: int = 3) -> float:
    """Documents per CPU-second of `fn` on fresh copies of `docs`, best of `repeats`."""
    best = float("inf")
    for _ in range(repeats):
        batch = copies(docs)
        start = time.process_time()
        fn(batch)
        best = min(best, time.process_time() - start)
    return len(docs) / best


def run_step(step, docs):
    """Runs a datatrove step over `docs`, draining it when it is a generator."""
    for _ in step.run(iter(docs), rank=0, world_size=1) or ():
        pass


def datasketch_minhash(docs: list[Document], bands: int = 14, rows: int = 8) -> None:
    """datasketch's MinHash and LSH index over the same word 5-grams: shingling, signature, band keys."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=bands * rows, params=(bands, rows))
    for doc in docs:
        words = split_words(doc.text.lower())
        grams = [" ".join(words[i : i + 5]).encode() for i in range(max(1, len(words) - 4))]
        signature = MinHash(num_perm=bands * rows, seed=1)
        signature.update_batch(grams)
        lsh.insert(doc.id, signature, check_duplication=False)


def datatrove_minhash(folder: str):
    from datatrove.pipeline.dedup import MinhashDedupSignature

    return MinhashDedupSignature(output_folder=folder)  # its defaults: 14 buckets × 8 hashes, 5-grams, spaCy


def check_bench_extra() -> None:
    missing = [name for name in ("spacy", "datasketch") if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"bench/bench_data_pipeline.py compares against datatrove's steps and datasketch, which need "
                 f"{' and '.join(missing)}: run `.venv/bin/pip install -e '.[bench]'` first")


def main() -> None:
    check_bench_extra()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--baseline-docs", type=int, default=200, help="documents for the slow datatrove steps")
    args = parser.parse_args()
    docs, few = corpus(args.docs), corpus(args.baseline_docs, seed=1)
    en = [d for d in docs if d.metadata["language"] == "en"]
    en_few = [d for d in few if d.metadata["language"] == "en"]
    kb = sum(len(d.text.encode()) for d in docs) / len(docs) / 1000
    rows: dict[str, tuple[float, float | None]] = {}  # stage → (ours, datatrove's)
    tmp = tempfile.mkdtemp()

    html = [Document(text=g.html_page("t", d.text), id=d.id, metadata={"is_html": True}) for d in en_few]
    for name in EXTRACTORS:
        rows[f"extract ({name})"] = rate(lambda ds: [EXTRACTORS[name](d.text) for d in ds], html, 1), None
    lid = LanguageFilter()
    lid.filter(docs[0])
    rows["language ID"] = rate(lambda ds: [lid.filter(d) for d in ds], docs), None
    rows["exact-dedup hash"] = rate(lambda ds: [exact_hash(d.text) for d in ds], docs), None
    rows["line-dedup hashes"] = rate(lambda ds: [edge_lines(d.text, 5) for d in ds], docs), None
    for kind, cls in FILTERS.items():  # English only: datatrove's default filter is English
        ours = RuleFilter(kind)
        theirs = cls()
        theirs.filter(en_few[0])  # loads spaCy once, outside the timing
        ours_rate = rate(lambda ds: [ours.filter(d) for d in ds], en)
        rows[f"{kind} filter (en)"] = ours_rate, rate(lambda ds: [theirs.filter(d) for d in ds], en_few, 1)

    dt = datatrove_minhash(f"{tmp}/dt")
    run_step(dt, en_few[:5])  # spaCy warm-up
    dt_rate = rate(lambda ds: run_step(dt, ds), en_few, 1)
    small = MinhashSignature(f"{tmp}/ours14", MinhashConfig(bands=14, rows=8))
    run_step(small, en[:5])  # numba's compiled kernel loaded once, outside the timing
    rows["MinHash signatures 14×8 (en)"] = rate(lambda ds: run_step(small, ds), en), dt_rate
    datasketch_rate = rate(datasketch_minhash, en)
    rows["MinHash signatures 14×8 (en), vs datasketch"] = rows["MinHash signatures 14×8 (en)"][0], datasketch_rate
    dots = MinhashSignature(f"{tmp}/ours128", MinhashConfig(bands=128, rows=16))
    rows["MinHash signatures 128×16 (en)"] = rate(lambda ds: run_step(dots, ds), en), None
    rows["MinHash signatures 128×16 (en+zh)"] = rate(lambda ds: run_step(dots, ds), docs), None

    model = train_sentencepiece((d.text for d in docs), f"{tmp}/tok", vocab_size=8192)
    tokenizer = Tokenizer(model)
    writer = MegatronShardWriter(f"{tmp}/tokens", model)
    bare = writing = 0.0
    for _ in range(5):  # alternated, so that a slower spell of the machine weighs on both alike
        bare = max(bare, rate(lambda ds: [tokenizer.encode_batch([d.text for d in ds[i : i + 256]])
                                          for i in range(0, len(ds), 256)], docs, 1))
        writing = max(writing, rate(lambda ds: run_step(writer, ds), docs, 1))
    rows["tokenize + shard writing"] = writing, None
    rows["bare tokenizer (encode only)"] = bare, None

    table = Table(title=f"docs/s per core — {len(docs)} docs of {kb:.1f} kB ({len(en_few)} for datatrove's steps)")
    for column in ("stage", "ours", "baseline", "ours / baseline"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, (ours, theirs) in rows.items():
        ratio = f"{ours / theirs:.1f}×" if theirs else ""
        table.add_row(name, f"{ours:,.0f}", f"{theirs:,.0f}" if theirs else "", ratio)
    console = Console()
    console.print(table)
    console.print(f"tokenize + shard writing / bare tokenizer: {rows['tokenize + shard writing'][0] / bare:.2f}"
                  " (target ≥ 0.98)")
    ours14 = rows["MinHash signatures 14×8 (en)"][0]
    console.print(f"MinHash 14×8 vs datasketch: {ours14 / datasketch_rate:.1f}× (target ≥ 2×), vs datatrove "
                  f"{ours14 / dt_rate:.1f}×; 128×16: {rows['MinHash signatures 128×16 (en)'][0]:,.0f} docs/s/core "
                  "(target ≥ 2,000)")


if __name__ == "__main__":
    main()
