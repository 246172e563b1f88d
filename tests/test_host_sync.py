"""A training step reads nothing back from the device before its backward is queued.

On a GPU each such read (`.item()`, `if tensor:`, `nonzero`, a boolean-mask index) makes the host wait for
the whole queue: the H200 measured LRAT's one per-step read at 2-6% of a step (docs/speed/README.md). The
reads are visible on the CPU too, as the ATen ops that perform them, so this checks the GPU property here.
SAA is exempt: it runs the official APGD, which reads back every iteration (for AT as much as for any method).
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.data import augment_batch, to_float
from bench.config.catalog import TRAIN_ATTACKS as CATALOG_ATTACKS
from methods import METHODS, build_method_reweighting_now
from support import context

# Ops that need a device value on the host: a scalar read, or an output whose size depends on the data.
HOST_READS = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "masked_scatter", "is_nonzero",
              "equal", "_unique", "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave", "bincount"}


class HostReads(TorchDispatchMode):
    """Records every dispatched op that reads a device value back to the host (boolean-mask indexing included)."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        name = func._schema.name.split("::")[1]
        bool_index = func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default,
                              torch.ops.aten.index_put.default) \
            and any(t is not None and t.dtype == torch.bool for t in args[1])
        if name in HOST_READS or bool_index:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def test_the_recorder_sees_host_reads_in_forward_and_backward():
    x = torch.randn(8, requires_grad=True)
    with HostReads() as clean:
        (x * 2).sum().backward()
    with HostReads() as dirty:
        x[x > 0].sum().backward()
        (x.sum() > 0).item()
    assert not clean.reads and clean.ops >= 3  # the backward's ops are seen too
    # the mask index, its backward (index_put with the mask) and the .item()
    assert dirty.reads == ["aten.index.Tensor", "aten.index_put.default", "aten._local_scalar_dense.default"]


@pytest.mark.parametrize("name,attack", [(name, attack) for name in sorted(METHODS) for attack in ("pgd", "cw", "fgsm")
                                          if CATALOG_ATTACKS[attack].has_kappa or not METHODS[name].entry().needs_kappa])
def test_a_training_step_reads_nothing_back_before_its_backward(name, attack, tiny_model, batch):
    method = build_method_reweighting_now(name)
    x, y = batch
    torch.manual_seed(0)
    tiny_model.train()
    with HostReads() as rec:
        out = method.loss(tiny_model, x, y, context(attack, epoch=1, epochs=2))
        out.loss.backward()
    assert rec.reads == [], f"{name}/{attack} reads device values back: {sorted(set(rec.reads))}"
    assert rec.ops > 50  # the attack, the forward and the backward were all seen


def test_batch_preparation_reads_nothing_back():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    with HostReads() as rec:
        augment_batch(to_float(images[torch.randperm(16)[:8]]))
    assert rec.reads == [] and rec.ops > 5
