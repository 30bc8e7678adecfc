"""Pipeline assembly: the config → datatrove stages → executors (local, SLURM, Ray) → `manifest.json`.

Stages (each a datatrove executor run, resumable per task through its completion files):
  ingest        (`tasks`) read, URL filter, HTML extraction, language ID, dedup records by MD5 (each
                noting whether the rule filters would drop the document, for exact dedup to keep a copy that passes)
  dedup_index   (`steps.dedup_index.tasks`) exact-dedup decisions per MD5 partition, then line
                counts per line-hash partition: two runs, `exact` and `lines`
  filter        (`tasks`) exact dedup, line dedup, rule filters, MinHash band records
  minhash_buckets (`steps.minhash.bucket_tasks`) near-duplicate pairs per band group
  minhash_cluster (1 task) union-find of the pairs
  tokenizer     (1 task, only without `steps.tokenize.tokenizer`) trains SentencePiece BPE on the kept text
  final         (`tasks`) MinHash filter, kept documents to `docs/`, Megatron shards to `tokens/`
Task `r` of ingest, filter and final handles the same documents, in key order; the dedup stages
sort and merge on disk (`data_pipeline.sorted_runs`) and list their decisions per task `r`.
"""

import contextlib
import os
import threading
import time
from dataclasses import dataclass

from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from loguru import logger
from omegaconf import DictConfig, OmegaConf

from data_pipeline.manifest import write_manifest
from data_pipeline.records import RejectedWriter
from data_pipeline.steps.dedup_index import DedupHasher, ExactIndex, LineIndex
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

_OUTPUT = "${rank}.jsonl.gz"  # per-task intermediate files


class IntermediateReader(JsonlReader):
    """Reads the file that task `rank` of the previous stage wrote (none when it kept nothing)."""

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        name = _OUTPUT.replace("${rank}", f"{rank:05d}")
        if self.data_folder.isfile(name):
            for doc in self.read_files_shard([name]):
                self.update_doc_stats(doc)
                yield doc


@dataclass
class Stage:
    name: str  # its section of manifest.json
    pipeline: list
    tasks: int
    part: str = ""  # names the runs of a stage that takes several

    @property
    def run_name(self) -> str:
        return f"{self.name}/{self.part}" if self.part else self.name


def _kept_document(writer, doc) -> dict:  # a datatrove writer adapter: bound to the writer as a method
    record = {"id": doc.id, "text": doc.text}
    for key in ("url", "language", "source"):
        if key in doc.metadata:
            record[key] = doc.metadata[key]
    return record


def rule_filters(config: DictConfig, with_rejects: bool = True) -> list[RuleFilter]:
    """The enabled rule filters of `steps.quality`, in config order; `with_rejects`: writing rejected documents."""
    filters = []
    for kind, rule in config.steps.quality.items():
        if rule.enabled:
            params = OmegaConf.to_container(rule.params)
            per_language = OmegaConf.to_container(rule.per_language)
            rejects = RejectedWriter(config.output_dir, kind) if with_rejects else None
            filters.append(RuleFilter(kind, params, per_language, rejects))
    return filters


def build_stages(config: DictConfig) -> list[Stage]:
    """The stages the config enables, in order."""
    out, steps, tasks = config.output_dir, config.steps, config.tasks
    work = f"{out}/work"

    def intermediate_reader(name):
        return IntermediateReader(f"{work}/{name}")

    def intermediate_writer(name):
        return JsonlWriter(f"{work}/{name}", output_filename=_OUTPUT, compression="gzip")

    ingest = [InputReader(list(config.input.paths), out, config.input.max_doc_bytes)]
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
    exact, lines = steps.exact_dedup.enabled, steps.line_dedup.enabled
    index, dedup = steps.dedup_index, f"{work}/dedup"
    if exact or lines:
        edge_lines = steps.line_dedup.edge_lines if lines else None
        checks = rule_filters(config, with_rejects=False) if exact and steps.exact_dedup.keep_passing_copy else []
        ingest.append(DedupHasher(dedup, index.tasks, index.buffer_bytes, edge_lines, checks))
    ingest.append(intermediate_writer("ingest"))
    stages = [Stage("ingest", ingest, tasks)]

    if exact or lines:
        exact_index = ExactIndex(dedup, tasks, index.tasks, index.buffer_bytes, exact, lines)
        stages.append(Stage("dedup_index", [exact_index], index.tasks, "exact"))
    if lines:
        line_index = LineIndex(dedup, tasks, index.tasks, index.buffer_bytes, steps.line_dedup.max_count)
        stages.append(Stage("dedup_index", [line_index], index.tasks, "lines"))

    filtering = [intermediate_reader("ingest")]
    if exact:
        exact_rejects = RejectedWriter(out, "exact_dedup")
        filtering.append(DuplicateFilter(f"{dedup}/exact", "exact_duplicate", "🎯 Exact dedup", exact_rejects))
    if lines:
        filtering.append(LineDedup(f"{dedup}/marks", RejectedWriter(out, "line_dedup")))
    filtering += rule_filters(config)
    minhash, near = steps.minhash, f"{work}/minhash"
    if minhash.enabled:
        mh_config = MinhashConfig(minhash.n_grams, minhash.bands, minhash.rows, minhash.seed)
        filtering.append(MinhashSignature(near, mh_config, minhash.bucket_tasks, minhash.buffer_bytes))
    filtering.append(intermediate_writer("filtered"))
    stages.append(Stage("filter", filtering, tasks))
    if minhash.enabled:
        buckets = MinhashBuckets(near, minhash.bucket_tasks, minhash.buffer_bytes)
        stages.append(Stage("minhash_buckets", [buckets], minhash.bucket_tasks))
        stages.append(Stage("minhash_cluster", [MinhashCluster(near, tasks, minhash.buffer_bytes)], 1))

    final = [intermediate_reader("filtered")]
    if minhash.enabled:
        near_rejects = RejectedWriter(out, "minhash")
        final.append(DuplicateFilter(f"{near}/removals", "near_duplicate", "🎯 MinHash filter", near_rejects))
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


@contextlib.contextmanager
def _datatrove_console(verbose: bool):
    """Unless `verbose`, keeps datatrove's messages (per-task stat blocks, progress lines) off the console."""
    if verbose:
        yield
        return
    logger.disable("datatrove")
    try:
        yield
    finally:
        logger.enable("datatrove")


class _QuietExecutor:
    """A datatrove executor whose console shows only errors unless `verbose`; task logs keep every line in
    `<logging_dir>/logs/`. datatrove logs a task to the console at INFO only for local rank 0."""

    def __init__(self, *args, verbose: bool = False, **kwargs):
        self.verbose = verbose
        with _datatrove_console(verbose):
            super().__init__(*args, **kwargs)

    def run(self):
        with _datatrove_console(self.verbose):
            return super().run()

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        if self.verbose:
            return super()._run_for_rank(rank, local_rank, node_rank)
        logger.enable("datatrove")  # for the task's log file, also when it runs in this process
        try:
            return super()._run_for_rank(rank, local_rank + 1, node_rank)
        finally:
            logger.disable("datatrove")


class LocalExecutor(_QuietExecutor, LocalPipelineExecutor):
    pass


class RayExecutor(_QuietExecutor, RayPipelineExecutor):
    pass


def make_executor(config: DictConfig, stage: Stage, depends=None):
    """The datatrove executor of `config.executor` for one stage run, logging to `<output_dir>/logs/<run>`."""
    logging_dir = f"{config.output_dir}/logs/{stage.run_name}"
    if config.executor == "local":
        workers = min(stage.tasks, config.workers if config.workers > 0 else stage.tasks)
        return LocalExecutor(stage.pipeline, tasks=stage.tasks, workers=workers, logging_dir=logging_dir,
                             verbose=config.verbose)
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
            job_name=f"{slurm.job_name}_{stage.run_name.replace('/', '_')}",
            sbatch_args=OmegaConf.to_container(slurm.sbatch_args),
            logging_dir=logging_dir,
            slurm_logs_folder=f"{config.output_dir}/logs/slurm/{stage.run_name}",
            depends=depends,
        )
    workers = config.workers if config.workers > 0 else stage.tasks
    return RayExecutor(stage.pipeline, tasks=stage.tasks, workers=workers, logging_dir=logging_dir,
                       cpus_per_task=config.ray.cpus_per_task, mem_per_cpu_gb=config.ray.mem_per_cpu_gb,
                       verbose=config.verbose)


def run_pipeline(config: DictConfig) -> dict | None:
    """Runs every stage (skipping completed tasks) and returns the manifest; None while SLURM jobs still run."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    stages = build_stages(config)
    os.makedirs(config.output_dir, exist_ok=True)
    start = time.time()
    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TextColumn("tasks"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not config.progress) as progress:
        if config.executor == "slurm":
            executors = []
            for stage in stages:
                executors.append(make_executor(config, stage, depends=executors[-1] if executors else None))
            executors[-1].run()  # submits the whole dependency chain
            if not config.slurm.wait:
                return None
            for executor, stage in zip(executors, stages):
                with _progress_bar(progress, stage, executor):
                    _wait_for_slurm(executor, stage)
        else:
            for stage in stages:
                executor = make_executor(config, stage)
                with _progress_bar(progress, stage, executor):
                    executor.run()
                _check_complete(executor, stage)
    return write_manifest(config, [s.run_name for s in stages], time.time() - start)


@contextlib.contextmanager
def _progress_bar(progress, stage: Stage, executor):
    """One bar for the stage run, counting its completed tasks while the block runs."""
    bar = progress.add_task(stage.run_name, total=stage.tasks)
    done = threading.Event()

    def update():
        progress.update(bar, completed=stage.tasks - len(executor.get_incomplete_ranks(skip_completed=True)))

    def poll():
        while not done.wait(0.5):
            update()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        update()


def _wait_for_slurm(executor, stage: Stage) -> None:
    """Polls the stage's completion files; raises once its jobs have left the queue unfinished."""
    import subprocess

    while executor.get_incomplete_ranks(skip_completed=True):
        queued = subprocess.run(["squeue", "-h", "-j", str(executor.job_id)], capture_output=True, text=True)
        if not queued.stdout.strip():
            time.sleep(2)  # completion files of jobs that just ended may still be landing
            _check_complete(executor, stage)
        time.sleep(1)


def _check_complete(executor, stage: Stage) -> None:
    if missing := executor.get_incomplete_ranks(skip_completed=True):
        raise RuntimeError(f"stage {stage.run_name}: tasks {missing} did not complete; see {executor.logging_dir.path}")
