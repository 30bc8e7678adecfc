"""The README's main command: the embedded sample corpus through configs/data/sample.yaml."""

import gzip
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[2]


def test_sample_config_runs_end_to_end(sample_run):
    tmp_path, manifest = sample_run
    corpus = REPO / "data_pipeline/sample/corpus"
    lines = len(gzip.decompress((corpus / "web-00.jsonl.gz").read_bytes()).splitlines())
    zst = (corpus / "web-01.jsonl.zst").read_bytes()
    lines += len(zstandard.ZstdDecompressor().decompressobj().decompress(zst).splitlines())
    lines += 16  # WARC response records
    totals = manifest["totals"]
    assert totals["input_lines"] == lines
    assert totals["balanced"] and totals["kept"] > 100 and totals["errors"] == 9
    assert set(manifest["stages"]) == {"ingest", "dedup_index", "filter", "minhash_buckets", "minhash_cluster",
                                       "tokenizer", "final"}
    assert totals["tokens"] == sum((tmp_path / "tokens").joinpath(f).stat().st_size // 2
                                   for f in ("00000.bin", "00001.bin"))
