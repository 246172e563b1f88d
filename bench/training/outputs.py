"""What a model and a method hand the training loop, checked (issue 24, item 2): the model's logits have the
dataset's number of classes (once, when a run starts), a method's loss is a StepOutput holding a scalar tensor
with a gradient (every batch: attribute checks only, no device sync), and a non-finite loss says whether the
model's logits went non-finite first (a forward hook summing the logits on the device, read only then).
"""
from __future__ import annotations

import torch

from bench.config.names import UsageError
from bench.plugins import source
from methods.base import StepOutput


class ModelOutputError(UsageError):
    """A model or a method returned something the loop cannot train on; the message says what and whose."""


@torch.no_grad()
def check_logit_shape(model: torch.nn.Module, x: torch.Tensor, num_classes: int, model_name: str,
                      dataset: str) -> None:
    """One eval-mode forward pass on a few training inputs (eval mode: no BatchNorm statistics move, no RNG is
    drawn, so the run trains exactly as without the check): logits of shape (n, num_classes), or refused."""
    was = model.training
    model.eval()
    try:
        out = model(x)
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), num_classes):
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ModelOutputError(
            f"Model '{model_name}' ({source('models', model_name)}) returns {got} for {len(x)} {dataset} inputs; "
            f"{dataset} has {num_classes} classes, so logits must have shape ({len(x)}, {num_classes}). Build it "
            f"with the num_classes it is given.")


def check_step_output(out, method: str):
    """A method's loss() result, refused with a sentence unless a StepOutput whose `loss` is a scalar tensor
    that depends on the weights (a float or a detached tensor would fail later as a bare AttributeError)."""
    whose = f"Method '{method}' ({source('methods', method)})"
    if not isinstance(out, StepOutput):
        raise ModelOutputError(f"{whose}: loss() returned a {type(out).__name__}, not a methods.base.StepOutput "
                               f"(return StepOutput(loss) with loss a scalar torch tensor).")
    loss = out.loss
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else f"a {type(loss).__name__}"
        raise ModelOutputError(f"{whose}: loss() returned a StepOutput whose loss is {got}, not a scalar torch "
                               f"tensor (reduce it, e.g. with .mean(), and keep it a tensor).")
    if not loss.requires_grad:
        raise ModelOutputError(f"{whose}: its loss does not depend on the model's weights (no gradient: computed "
                               f"under torch.no_grad(), detached, or from .item()), so training cannot step.")
    return out


class LogitsWatch:
    """Sums the model's outputs (float64, on the device) while the loss so far is finite; `nonfinite()`, read
    only when the loss went non-finite, says whether the logits did so first. Not attached to a compiled model
    (a hook's side effects would break its graph)."""

    def __init__(self, model: torch.nn.Module, loss_so_far: torch.Tensor):
        self.gate, self.total = loss_so_far, torch.zeros((), dtype=torch.float64, device=loss_so_far.device)
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            part = output.detach().sum(dtype=torch.float64)
            self.total += torch.where(torch.isfinite(self.gate), part, torch.zeros_like(part))

    def nonfinite(self) -> bool:
        return not bool(torch.isfinite(self.total))

    def close(self) -> None:
        self.handle.remove()
