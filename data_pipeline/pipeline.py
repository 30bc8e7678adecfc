"""Pipeline assembly: the config → datatrove stages → executors (local, SLURM, Ray) → `manifest.json`.

Stages (each a datatrove executor run, resumable per task through its completion files):
  ingest        read, URL filter, HTML extraction, language ID, dedup hashes
  dedup_index   (1 task) exact-dedup and line-dedup decisions in global key order
  filter        exact dedup, line dedup, rule filters, MinHash signatures
  minhash_buckets / minhash_cluster   LSH edges per band group, then connected components (1 task)
  tokenizer     (1 task, only without `steps.tokenize.tokenizer`) trains SentencePiece BPE on the kept text
  final         MinHash filter, kept documents to `docs/`, Megatron shards to `tokens/`
"""

import os
import time
from dataclasses import dataclass

from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from omegaconf import DictConfig, OmegaConf

from data_pipeline.manifest import write_manifest
from data_pipeline.records import RejectedWriter
from data_pipeline.steps.dedup_index import DedupHasher, DedupIndex
from data_pipeline.steps.duplicate_filter import DuplicateFilter
from data_pipeline.steps.extract import HtmlExtractor
from data_pipeline.steps.language import LanguageFilter
from data_pipeline.steps.line_dedup import LineDedup
from data_pipeline.steps.minhash import MinhashBuckets, MinhashCluster, MinhashConfig, MinhashSignature
from data_pipeline.steps.quality import RuleFilter
from data_pipeline.steps.reader import InputReader
from data_pipeline.steps.tokenize import MegatronShardWriter
from data_pipeline.steps.train_tokenizer import TrainTokenizer
from data_pipeline.steps.url_filter import UrlBlocklistFilter


class IntermediateReader(JsonlReader):
    """datatrove's JsonlReader of a previous stage's output, which may be empty when nothing was kept."""

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if self.data_folder.list_files(glob_pattern=self.glob_pattern):  # JsonlReader raises on no file
            yield from super().run(data, rank, world_size)


@dataclass
class Stage:
    name: str
    pipeline: list
    tasks: int


def _kept_document(writer, doc) -> dict:  # a datatrove writer adapter: bound to the writer as a method
    record = {"id": doc.id, "text": doc.text}
    for key in ("url", "language", "source"):
        if key in doc.metadata:
            record[key] = doc.metadata[key]
    return record


def build_stages(config: DictConfig) -> list[Stage]:
    """The stages the config enables, in order."""
    out, steps, tasks = config.output_dir, config.steps, config.tasks
    work = f"{out}/work"
    progress = config.progress

    def intermediate_reader(name):
        return IntermediateReader(f"{work}/{name}", glob_pattern="*.jsonl.gz", doc_progress=progress)

    def intermediate_writer(name):
        return JsonlWriter(f"{work}/{name}", output_filename="${rank}.jsonl.gz", compression="gzip")

    ingest = [InputReader(list(config.input.paths), out, config.input.max_doc_bytes, progress)]
    if steps.url_filter.enabled:
        url = OmegaConf.to_container(steps.url_filter)
        del url["enabled"]
        ingest.append(UrlBlocklistFilter(exclusion_writer=RejectedWriter(out, "url_filter"), **url))
    if steps.extract.enabled:
        extract = steps.extract
        ingest.append(HtmlExtractor(extract.extractor, extract.timeout, RejectedWriter(out, "extract")))
    if steps.language.enabled:
        lang = steps.language
        ingest.append(LanguageFilter(list(lang.languages), lang.threshold, RejectedWriter(out, "language")))
    dedup = steps.exact_dedup.enabled or steps.line_dedup.enabled
    if dedup:
        ingest.append(DedupHasher(f"{work}/dedup_hashes", steps.line_dedup.edge_lines))
    ingest.append(intermediate_writer("ingest"))
    stages = [Stage("ingest", ingest, tasks)]

    index_file = f"{work}/dedup_index.json"
    if dedup:
        max_count = steps.line_dedup.max_count if steps.line_dedup.enabled else None
        index = DedupIndex(f"{work}/dedup_hashes", index_file, steps.exact_dedup.enabled, max_count)
        stages.append(Stage("dedup_index", [index], 1))

    filtering = [intermediate_reader("ingest")]
    if steps.exact_dedup.enabled:
        exact_rejects = RejectedWriter(out, "exact_dedup")
        filtering.append(DuplicateFilter(index_file, "exact_duplicate", "🎯 Exact dedup", "exact", exact_rejects))
    if steps.line_dedup.enabled:
        filtering.append(LineDedup(index_file, RejectedWriter(out, "line_dedup")))
    for kind, rule in steps.quality.items():
        if rule.enabled:
            params = OmegaConf.to_container(rule.params)
            per_language = OmegaConf.to_container(rule.per_language)
            filtering.append(RuleFilter(kind, params, per_language, RejectedWriter(out, kind)))
    minhash = steps.minhash
    if minhash.enabled:
        mh_config = MinhashConfig(minhash.n_grams, minhash.bands, minhash.rows, minhash.seed)
        filtering.append(MinhashSignature(f"{work}/minhash", mh_config))
    filtering.append(intermediate_writer("filtered"))
    stages.append(Stage("filter", filtering, tasks))
    if minhash.enabled:
        stages.append(Stage("minhash_buckets", [MinhashBuckets(f"{work}/minhash", mh_config)], minhash.bucket_tasks))
        stages.append(Stage("minhash_cluster", [MinhashCluster(f"{work}/minhash")], 1))

    final = [intermediate_reader("filtered")]
    if minhash.enabled:
        marks, near_rejects = f"{work}/minhash/duplicates.json", RejectedWriter(out, "minhash")
        final.append(DuplicateFilter(marks, "near_duplicate", "🎯 MinHash filter", None, near_rejects))
    final.append(JsonlWriter(f"{out}/docs", output_filename="${rank}.jsonl", compression=None, adapter=_kept_document))
    tok = steps.tokenize
    if tok.enabled:
        tokenizer = tok.tokenizer
        if tokenizer is None:
            tokenizer = f"{out}/tokenizer.model"
            stages.append(Stage("tokenizer", [TrainTokenizer(f"{work}/filtered", tokenizer, tok.train_vocab_size)], 1))
        elif not os.path.exists(tokenizer):
            raise FileNotFoundError(f"steps.tokenize.tokenizer: {tokenizer} does not exist")
        final.append(MegatronShardWriter(f"{out}/tokens", tokenizer, tok.eod_token))
    stages.append(Stage("final", final, tasks))
    return stages


def make_executor(config: DictConfig, stage: Stage, depends=None):
    """The datatrove executor of `config.executor` for one stage, logging to `<output_dir>/logs/<stage>`."""
    logging_dir = f"{config.output_dir}/logs/{stage.name}"
    if config.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        workers = min(stage.tasks, config.workers if config.workers > 0 else stage.tasks)
        return LocalPipelineExecutor(stage.pipeline, tasks=stage.tasks, workers=workers, logging_dir=logging_dir)
    if config.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        slurm = config.slurm
        return SlurmPipelineExecutor(
            stage.pipeline,
            tasks=stage.tasks,
            time=slurm.time,
            partition=slurm.partition,
            cpus_per_task=slurm.cpus_per_task,
            mem_per_cpu_gb=slurm.mem_per_cpu_gb,
            venv_path=slurm.venv_path,
            job_name=f"{slurm.job_name}_{stage.name}",
            sbatch_args=OmegaConf.to_container(slurm.sbatch_args),
            logging_dir=logging_dir,
            slurm_logs_folder=f"{config.output_dir}/logs/slurm/{stage.name}",
            depends=depends,
        )
    from datatrove.executor import RayPipelineExecutor

    return RayPipelineExecutor(
        stage.pipeline,
        tasks=stage.tasks,
        workers=config.workers,
        logging_dir=logging_dir,
        cpus_per_task=config.ray.cpus_per_task,
        mem_per_cpu_gb=config.ray.mem_per_cpu_gb,
        depends=depends,
    )


def run_pipeline(config: DictConfig) -> dict | None:
    """Runs every stage (skipping completed tasks) and returns the manifest; None while SLURM jobs still run."""
    stages = build_stages(config)
    os.makedirs(config.output_dir, exist_ok=True)
    start = time.time()
    executors = []
    for stage in stages:
        executors.append(make_executor(config, stage, depends=executors[-1] if executors else None))
        if config.executor == "local":
            _announce(stage)
            executors[-1].run()
            _check_complete(executors[-1], stage)
    if config.executor != "local":
        executors[-1].run()  # runs (Ray) or submits (SLURM) the whole dependency chain
        if config.executor == "slurm":
            if not config.slurm.wait:
                return None
            _wait_for_slurm(executors, stages)
        for executor, stage in zip(executors, stages):
            _check_complete(executor, stage)
    return write_manifest(config, [s.name for s in stages], time.time() - start)


def _announce(stage: Stage) -> None:
    from rich.console import Console

    Console(stderr=True).rule(f"[bold]stage {stage.name}[/] ({stage.tasks} task{'s' * (stage.tasks > 1)})")


def _wait_for_slurm(executors, stages) -> None:
    """Polls the stages' completion files; raises once a stage's jobs have left the queue unfinished."""
    import subprocess

    for executor, stage in zip(executors, stages):
        while executor.get_incomplete_ranks(skip_completed=True):
            queued = subprocess.run(["squeue", "-h", "-j", str(executor.job_id)], capture_output=True, text=True)
            if not queued.stdout.strip():
                time.sleep(2)  # completion files of jobs that just ended may still be landing
                _check_complete(executor, stage)
            time.sleep(1)


def _check_complete(executor, stage: Stage) -> None:
    if missing := executor.get_incomplete_ranks(skip_completed=True):
        raise RuntimeError(f"stage {stage.name}: tasks {missing} did not complete; see {executor.logging_dir.path}")
