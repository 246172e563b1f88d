"""Executors: who runs the cells. Both write the same store layout, through the same `Runner.run_cell`.

- `local` (default): the cells one after another in this process; with `workers` > 1, that many cells at
  once, each in its own process with an equal share of the CPU threads (on a small CPU two cells side by side
  use the cores better than one cell with every thread: small batches leave threads waiting on each other).
- `ray`: each cell a Ray task with `cpus_per_cell` CPUs and `gpus_per_cell` GPUs (fractions share a GPU), so a
  Ray cluster (a laptop, a multi-node cluster, one started on SLURM nodes) runs many cells at once. A task
  whose worker dies (pre-emption, OOM, node loss) is retried by Ray up to `max_retries` times and resumes
  from the cell's checkpoint; the dead worker's flock lock died with it. Workers write straight into the
  results directory, which must therefore be a path every node sees (a shared filesystem).

Multi-node: start Ray on each node (`ray start --head` on one, `ray start --address HEAD:6379` on the
others, each in an environment with lrat-bench installed at the same commit and the data under the same
path), then on the head: `bench run --config experiments/NAME.toml --executor ray --ray-address auto
--gpus-per-cell 1 --results /shared/results`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.config.names import UsageError
from bench.execution.progress import MatrixProgress
from bench.store import FAILED, Store, write_json

if TYPE_CHECKING:
    from bench.execution.runner import CellOutcome
    from bench.config.matrix_cells import Cell
    from bench.training.loop import RuntimeOptions

log = logging.getLogger(__name__)


def _runtime(runtime: RuntimeOptions | None) -> RuntimeOptions:
    """None: the default RuntimeOptions. The runner (torch) is imported only when cells run, so that choosing
    an executor (`bench run --dry-run --executor ray`) costs no torch import."""
    from bench.training.loop import RuntimeOptions

    return RuntimeOptions() if runtime is None else runtime


@dataclass(frozen=True)
class LocalExecutor:
    store: Store
    device: Any  # torch.device
    data_dir: str | None = None
    data: dict | None = None  # bundles already loaded by the presence check
    workers: int = 1
    runtime: RuntimeOptions | None = None  # None: RuntimeOptions()

    def run(self, cells: list[Cell], force: bool = False) -> list[CellOutcome]:
        from bench.execution.runner import Runner

        if self.workers > 1 and len(cells) > 1:
            return self._run_parallel(cells, force)
        runner = Runner(self.store, self.device, self.data_dir, self.data, _runtime(self.runtime))
        return runner.run(cells, force, MatrixProgress(len(cells), self.workers))

    def _run_parallel(self, cells: list[Cell], force: bool) -> list[CellOutcome]:
        """`workers` processes (spawned: no torch state forked), each running whole cells through the same
        `_run_cell_task` as a Ray worker; the per-cell locks keep them apart as they keep two `bench run`s."""
        from concurrent.futures import as_completed

        results = str(Path(self.store.root).absolute())
        progress = MatrixProgress(len(cells), self.workers)
        outcomes: dict[str, CellOutcome] = {}
        with worker_pool(self.workers) as pool:
            futures = {pool.submit(_run_cell_task, cell, results, str(self.device), self.data_dir, force,
                                   self.runtime): cell for cell in cells}
            for cell in cells:
                progress.start(cell.label, "submitted")
            for future in as_completed(futures):
                cell = futures[future]
                outcome = future.result()
                progress.finish(cell.label, outcome.status, outcome.seconds)
                outcomes[cell.train.run_id] = outcome
        progress.close()
        return [outcomes[c.train.run_id] for c in cells]


def worker_pool(workers: int):
    """`workers` spawned processes (no torch state forked), each with an equal share of the CPU threads and a
    watchdog that ends it when this process dies: a `bench run`/`bench eval` killed with SIGTERM or SIGKILL
    must not leave workers training on, holding cells' locks that its rerun would then find busy."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // workers)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(threads, os.getpid()))


PARENT_POLL_S = 0.5


def _init_worker(threads: int, parent: int) -> None:
    import threading
    import time

    import torch

    torch.set_num_threads(threads)

    def watch() -> None:
        while os.getppid() == parent:  # reparented (to init or a subreaper) once the parent is gone
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # what the cell wrote is atomic; not DONE, so the next run resumes it

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_cell_task(cell: Cell, results: str, device: str, data_dir: str | None, force: bool,
                   runtime: RuntimeOptions | None = None) -> CellOutcome:
    """The body of one Ray task or local worker process: a fresh Runner in that process, on the shared store.
    Ray finds it by its import path (bench.execution.executors._run_cell_task) in every worker."""
    from bench.verbosity import log_level

    logging.basicConfig(level=log_level(), format="%(message)s")  # -q reaches the workers through the environment
    from bench.execution.runner import Runner
    from bench.provenance import resolve_device

    return Runner(Store(results), resolve_device(device), data_dir, runtime=_runtime(runtime)).run_cell(cell, force)


@dataclass(frozen=True)
class RayExecutor:
    store: Store
    device: str = "auto"  # resolved on each worker: the driver may have no GPU
    data_dir: str | None = None
    address: str | None = None  # None: a local Ray instance (or $RAY_ADDRESS)
    cpus_per_cell: float = 1.0
    gpus_per_cell: float | None = None  # None: 1 when the cluster has GPUs and device is not cpu, else 0
    max_retries: int = 3
    init_kwargs: dict | None = None  # extra ray.init arguments (tests: num_cpus=2)
    runtime: RuntimeOptions | None = None  # None: RuntimeOptions()

    def _gpus(self, ray) -> float:
        if self.gpus_per_cell is not None:
            return self.gpus_per_cell
        return 1.0 if self.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0.0

    def run(self, cells: list[Cell], force: bool = False) -> list[CellOutcome]:
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            try:
                ray.init(address=self.address, **{**_plugin_runtime_env(), **(self.init_kwargs or {})})
            except (ConnectionError, RuntimeError, ValueError) as exc:  # nothing was written yet
                raise UsageError(f"Cannot start or join Ray ({self.address or 'local instance'}): {exc}") from None
        try:
            gpus = self._gpus(ray)
            if self.device == "cuda" and gpus == 0:
                raise UsageError("--device cuda with --gpus-per-cell 0: the workers would see no GPU.")
            cpus = ray.cluster_resources().get("CPU", 1)
            workers = max(1, int(cpus // self.cpus_per_cell)) if self.cpus_per_cell else 1
            if gpus:
                workers = min(workers, max(1, int(ray.cluster_resources().get("GPU", 0) // gpus)))
            log.info("ray: %s, %g CPU and %g GPU per cell, up to %d cells at once, %d retries",
                     self.address or "local instance", self.cpus_per_cell, gpus, workers, self.max_retries)
            task = ray.remote(num_cpus=self.cpus_per_cell, num_gpus=gpus, max_retries=self.max_retries)(_run_cell_task)
            results = str(Path(self.store.root).absolute())
            data_dir = str(Path(self.data_dir).absolute()) if self.data_dir else None
            progress = MatrixProgress(len(cells), workers)
            pending = {}
            for cell in cells:
                pending[task.remote(cell, results, self.device, data_dir, force, self.runtime)] = cell
                progress.start(cell.label, "submitted")
            outcomes: dict[str, CellOutcome] = {}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ready[0])
                outcome = self._collect(ray, ready[0], cell)
                progress.finish(cell.label, outcome.status, outcome.seconds)
                outcomes[cell.train.run_id] = outcome
            progress.close()
            return [outcomes[c.train.run_id] for c in cells]
        finally:
            if started:
                ray.shutdown()

    def _collect(self, ray, ref, cell: Cell) -> CellOutcome:
        from bench.execution.runner import CellOutcome

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:  # retries exhausted: the worker died every time
            reason = f"Ray task lost after {self.max_retries} retries: {type(exc).__name__}: {exc}"
            log.error("cell %s failed: %s", cell.label, reason)
            write_json(self.store.run_dir(cell.train.run_id) / FAILED, {"reason": reason, "traceback": str(exc)})
            return CellOutcome(cell, "failed", 0.0, reason)


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'lrat-bench[ray]' (or pip install 'ray[default]').") \
            from None
    return ray


def _plugin_runtime_env() -> dict:
    """`--plugin` modules reach Ray workers through the environment (bench/plugins.py: ENV); installed entry
    points need nothing: the workers' environment has the same packages."""
    from bench.plugins import ENV

    return {"runtime_env": {"env_vars": {ENV: os.environ[ENV]}}} if os.environ.get(ENV) else {}
