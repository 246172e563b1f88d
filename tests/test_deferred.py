"""methods/deferred.py: the generic deferred, masked loss term (LRAT's anchor is one)."""
from __future__ import annotations

import pytest
import torch

from methods.deferred import deferred_masked_term


def test_subset_term_is_padded_to_a_power_of_two_with_zero_coefficients():
    mask = torch.tensor([True, False, True, True, False, False])
    coef = torch.tensor([0.5, 9.0, 0.25, 1.0, 9.0, 9.0])
    values = torch.tensor([2.0, 100.0, 4.0, 8.0, 100.0, 100.0])
    seen = []

    def term(index):
        seen.append(index.tolist())
        return values[index]

    got = deferred_masked_term(mask, coef, term)()
    assert seen == [[0, 2, 3, 0]]  # 3 needing instances padded to 4 by repeating the first index
    assert got.item() == pytest.approx((0.5 * 2 + 0.25 * 4 + 1.0 * 8) / 6)  # the padded copy adds 0; over n = 6


def test_whole_batch_and_nothing_selected():
    coef = torch.tensor([0.0, 2.0, 0.0])
    values = torch.tensor([5.0, 3.0, 7.0])
    calls = []
    whole = deferred_masked_term(coef > 0, coef, lambda i: calls.append(i.tolist()) or values[i], whole_batch=True)
    assert whole().item() == pytest.approx(2.0 * 3.0 / 3) and calls == [[0, 1, 2]]
    assert deferred_masked_term(torch.zeros(3, dtype=torch.bool), coef, lambda i: values[i])() is None


def test_term_runs_under_the_autocast_state_it_was_created_in():
    states = []

    def term(index):
        states.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return torch.ones(len(index))

    with torch.autocast("cpu", dtype=torch.bfloat16):
        deferred = deferred_masked_term(torch.tensor([True]), torch.ones(1), term)
    deferred()  # called later, outside autocast, as the training loop does after the main backward
    assert states == [(True, torch.bfloat16)]
