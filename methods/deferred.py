"""A deferred, masked loss term: (1/n) sum_i c_i * term_i over the instances a device-side mask selects, computed
after the step's main backward has been queued (`StepOutput.deferred`).

Which instances need the term is known only on the device. Reading the mask at once would make the host wait
for the GPU's whole queue; here the mask goes to pinned host memory with an event, and the host waits for it
only when the term is asked for, while the GPU works through the queued backward. The selected indices go back
the same way (a pageable copy would wait for the backward to finish). A subset is padded to a power of two by
repeating an index with coefficient 0: every new input shape would make cuDNN autotune and torch.compile
recompile. Autocast is re-entered with the state the term was created under.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

Term = Callable[[torch.Tensor], torch.Tensor]  # instance indices (k,) -> per-instance loss (k,)


def deferred_masked_term(mask: torch.Tensor, coef: torch.Tensor, term: Term, *,
                         whole_batch: bool = False) -> Callable[[], torch.Tensor | None]:
    """A callable giving (1/n) sum_{i: mask_i} coef_i term_i, or None when no instance is selected.

    `mask`, `coef`: (n,) on the device. `whole_batch`: when any instance is selected, evaluate `term` on the
    whole batch (coefficients of the others are expected to be 0) instead of on the padded subset."""
    n, device = mask.numel(), coef.device
    ready = None
    if mask.is_cuda:
        host_mask = torch.empty(n, dtype=torch.bool, pin_memory=True).copy_(mask, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
    else:
        host_mask = mask
    amp = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))

    def compute() -> torch.Tensor | None:
        if ready is not None:
            ready.synchronize()
        need = host_mask.nonzero().squeeze(1)
        k = len(need)
        if not k:
            return None
        if whole_batch:
            index, c = torch.arange(n, device=device), coef
        else:
            pad = (1 << (k - 1).bit_length()) - k
            need = torch.cat([need, need[:1].expand(pad)])
            index = (need.pin_memory() if device.type == "cuda" else need).to(device, non_blocking=True)
            c = torch.cat([coef[index[:k]], coef.new_zeros(pad)])
        with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
            return (c * term(index)).sum() / n

    return compute
