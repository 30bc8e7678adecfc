"""Pipeline configuration: a YAML file, the defaults below, and dotted `key=value` overrides (OmegaConf)."""

from omegaconf import DictConfig, OmegaConf

DEFAULTS = {
    "input": {"paths": [], "max_doc_bytes": 1 << 20},
    "output_dir": "???",
    "executor": "local",  # local | slurm | ray
    "tasks": 2,
    "workers": -1,  # -1: one per task
    "progress": True,  # a bar per stage on the console
    "verbose": False,  # datatrove's log lines and per-task stat blocks on the console too (always in logs/)
    "slurm": {
        "partition": "???",
        "time": "04:00:00",
        "cpus_per_task": 1,
        "mem_per_cpu_gb": 2,
        "venv_path": None,
        "job_name": "dotsllm_data",
        "sbatch_args": {},
        "wait": True,  # block until the last stage is done, then write manifest.json
    },
    "ray": {"cpus_per_task": 1, "mem_per_cpu_gb": 2},
    "steps": {
        "url_filter": {"enabled": True, "use_integrated_lists": True, "extra_domains": [], "extra_urls": [],
                       "banned_words": [], "banned_subwords": [], "soft_banned_words": []},
        "extract": {"enabled": True, "extractor": "trafilatura", "timeout": 5.0},  # seconds per page
        "language": {"enabled": True, "languages": ["en", "zh"], "threshold": 0.65},
        # keep_passing_copy: of each MD5 keep the smallest key among the copies that pass the rule filters
        # (checked in ingest on a copy, so a kept document goes through the rule filters twice)
        "exact_dedup": {"enabled": True, "keep_passing_copy": True},
        "line_dedup": {"enabled": True, "edge_lines": 5, "max_count": 200},
        # the exact and line-dedup index: tasks (MD5 / line-hash partitions) and the records each task of
        # ingest and dedup_index holds in memory before it spills a sorted run to disk
        "dedup_index": {"tasks": 2, "buffer_bytes": 256 << 20},
        # datatrove's defaults are English; Chinese has no spaces, short words and its own stop words
        "quality": {
            "gopher_quality": {"enabled": True, "params": {}, "per_language": {"zh": {
                "stop_words": ["的", "了", "是", "在", "和", "我们", "这"], "min_avg_word_length": 1,
                "max_avg_word_length": 6, "min_doc_words": 80}}},
            "gopher_repetition": {"enabled": True, "params": {}, "per_language": {}},
            # FineWeb's setting: the C4 rule that drops lines without terminal punctuation keeps only the
            # last line of a hard-wrapped paragraph
            "c4": {"enabled": True, "params": {"filter_no_terminal_punct": False},
                   "per_language": {"zh": {"min_words_per_line": -1}}},
            "fineweb": {"enabled": True, "params": {}, "per_language": {"zh": {"short_line_length": 12}}},
        },
        # bucket_tasks split the bands; buffer_bytes: records a filter, bucket or cluster task holds in memory
        "minhash": {"enabled": True, "n_grams": 5, "bands": 128, "rows": 16, "seed": 1, "bucket_tasks": 4,
                    "buffer_bytes": 256 << 20},
        "tokenize": {"enabled": True, "tokenizer": None, "eod_token": None, "train_vocab_size": 8192},
    },
}


def load_config(path: str, overrides: list[str] = ()) -> DictConfig:
    """Defaults ← YAML file ← `key=value` overrides; unknown keys and missing required values raise."""
    defaults = OmegaConf.create(DEFAULTS)
    OmegaConf.set_struct(defaults, True)
    for open_dict in ("slurm.sbatch_args", *(f"steps.quality.{k}" for k in DEFAULTS["steps"]["quality"])):
        OmegaConf.set_struct(OmegaConf.select(defaults, open_dict), False)
    try:
        config = OmegaConf.merge(defaults, OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:
        raise ValueError(f"config {path}: {e}") from None
    for key in ("output_dir", "input.paths"):
        if OmegaConf.is_missing(config, key) or not OmegaConf.select(config, key):
            raise ValueError(f"config {path}: `{key}` is required")
    if config.executor not in ("local", "slurm", "ray"):
        raise ValueError(f"config {path}: executor={config.executor!r}, expected local, slurm or ray")
    return config
