"""Progress for long work: a live bar per cell (epoch, batch, loss, ETA) when stderr is a terminal, and one
log line per epoch, per eval attack and per cell always (so CI logs and nohup files show where a run is)."""
from __future__ import annotations

import logging
import time

from tqdm import tqdm

from bench.train import Callbacks

log = logging.getLogger("bench")


class CellProgress:
    def __init__(self, label: str, epochs: int):
        self.label, self.epochs = label, epochs
        self.bar: tqdm | None = None

    def _on_batch(self, epoch: int, batch: int, n_batches: int, loss: float) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.epochs * n_batches, initial=epoch * n_batches, desc=self.label,
                            leave=False, disable=None, dynamic_ncols=True)
        self.bar.set_postfix_str(f"epoch {epoch + 1}/{self.epochs} loss {loss:.3f}", refresh=False)
        self.bar.update(1)

    def _on_epoch(self, e: dict) -> None:
        weights = f" w<0.2 {e['w_frac_below_0.2']:.0%}" if "w_frac_below_0.2" in e else ""
        msg = (f"{self.label} epoch {e['epoch']}/{self.epochs}: loss {e['train_loss']:.4f} "
               f"val natural {e['val_natural']:.3f} pgd {e['val_pgd']:.3f}{weights} ({e['seconds']:.1f}s)")
        (self.bar.write(msg) if self.bar is not None and not self.bar.disable else log.info(msg))

    def callbacks(self) -> Callbacks:
        return Callbacks(on_batch=self._on_batch, on_epoch=self._on_epoch)

    def on_attack(self, checkpoint: str, attack: str, row: dict) -> None:
        log.info("%s eval %s/%s: %.3f on %d points (%.1fs)%s", self.label, checkpoint, attack, row["accuracy"],
                 row["n_eval"], row["eval_seconds"], f" WARN {row['warnings']}" if row.get("warnings") else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class MatrixProgress:
    def __init__(self, total: int):
        self.total, self.done, self.failed, self.t0 = total, 0, 0, time.perf_counter()

    def start(self, index: int, label: str) -> None:
        log.info("cell %d/%d: %s", index + 1, self.total, label)

    def finish(self, status: str, seconds: float) -> None:
        self.done += 1
        self.failed += status == "failed"
        left = self.total - self.done
        rate = (time.perf_counter() - self.t0) / self.done
        log.info("cells: %d done (%d failed), %d left, ETA %.0fs (this cell %s in %.1fs)",
                 self.done, self.failed, left, rate * left, status, seconds)
