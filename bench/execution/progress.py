"""Progress for long work: a live bar per cell (epoch, batch, loss, ETA) when stderr is a terminal, and one
log line per epoch, per eval attack and per cell always (so CI logs and nohup files show where a run is)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tqdm import tqdm

from bench.verbosity import is_quiet

if TYPE_CHECKING:
    from bench.training.loop import Callbacks

log = logging.getLogger("bench")


class CellProgress:
    def __init__(self, label: str, epochs: int):
        self.label, self.epochs = label, epochs
        self.bar: tqdm | None = None

    def _on_batch(self, epoch: int, batch: int, n_batches: int, loss: float) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.epochs * n_batches, initial=epoch * n_batches, desc=self.label,
                            leave=False, disable=True if is_quiet() else None, dynamic_ncols=True)
        shown = "" if loss != loss else f" loss {loss:.3f}"  # NaN: not read back from the GPU yet
        self.bar.set_postfix_str(f"epoch {epoch + 1}/{self.epochs}{shown}", refresh=False)
        self.bar.update(1)

    def _on_epoch(self, e: dict) -> None:
        weights = f" w<0.2 {e['w_frac_below_0.2']:.0%}" if "w_frac_below_0.2" in e else ""
        health = f" health: {', '.join(e['health'])}" if e.get("health") else ""  # bench/health.py's flags so far
        msg = (f"{self.label} epoch {e['epoch']}/{self.epochs}: loss {e['train_loss']:.4f} "
               f"val natural {e['val_natural']:.3f} pgd {e['val_pgd']:.3f}{weights} ({e['seconds']:.1f}s){health}")
        (self.bar.write(msg) if self.bar is not None and not self.bar.disable else log.info(msg))

    def callbacks(self) -> Callbacks:
        from bench.training.loop import Callbacks  # torch: only once a cell trains

        return Callbacks(on_batch=self._on_batch, on_epoch=self._on_epoch)

    def on_attack(self, checkpoint: str, attack: str, row: dict) -> None:
        log.info("%s eval %s/%s: %.3f on %d points (%.1fs)%s", self.label, checkpoint, attack, row["accuracy"],
                 row["n_eval"], row["eval_seconds"], f" WARN {row['warnings']}" if row.get("warnings") else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class MatrixProgress:
    """The whole matrix: cells finished / running / left and an ETA, one log line per started and finished
    cell, plus a bar above the per-cell bar on a terminal. ETA = mean wall time of the cells that actually
    ran (skipped and busy cells take none) x cells not yet finished / parallel workers; unknown until one ran."""

    def __init__(self, total: int, workers: int = 1):
        self.total, self.workers = total, max(workers, 1)
        self.finished, self.running = 0, 0
        self.counts: dict[str, int] = {"done": 0, "skipped": 0, "failed": 0, "busy": 0}
        self.durations: list[float] = []
        self.bar = tqdm(total=total, desc="matrix", unit="cell", position=0, leave=False,
                        disable=True if is_quiet() else None, dynamic_ncols=True)

    def eta(self) -> float | None:
        if not self.durations:
            return None
        return sum(self.durations) / len(self.durations) * (self.total - self.finished) / self.workers

    def summary(self) -> str:
        eta = self.eta()
        active = min(self.running, self.workers)  # the rest of what was handed out waits in a queue (Ray)
        left = self.total - self.finished - active
        return (f"cells: {self.finished}/{self.total} processed ({self.counts['done']} run, {self.counts['skipped']} "
                f"already done, {self.counts['failed']} failed, {self.counts['busy']} busy elsewhere), "
                f"{active} running, {left} left, ETA {'?' if eta is None else _duration(eta)}")

    def start(self, label: str, verb: str = "started") -> None:
        self.running += 1
        log.info("cell %d/%d %s: %s", self.finished + self.running, self.total, verb, label)

    def finish(self, label: str, status: str, seconds: float) -> None:
        self.running -= 1
        self.finished += 1
        self.counts[status] = self.counts.get(status, 0) + 1
        if status in ("done", "failed"):
            self.durations.append(seconds)
        self.bar.update(1)
        eta = self.eta()
        self.bar.set_postfix_str(f"{min(self.running, self.workers)} running, ETA {'?' if eta is None else _duration(eta)}")
        msg = f"{label}: {status} in {_duration(seconds)}; {self.summary()}"
        (self.bar.write(msg) if not self.bar.disable else log.info(msg))

    def close(self) -> None:
        self.bar.close()
