"""The training loop on synthetic data: schedule, checkpoints, weight statistics, NaN detection, and the GPU
path's options (bf16 autocast, channels_last) exercised on the CPU with the same code."""
from __future__ import annotations

import pytest
import torch

from bench.config import TrainConfig
from bench.data import load_data
from bench.training.loop import REL_HIST_EDGES, NonFiniteLoss, RuntimeOptions, milestones, train_run, weight_stats

DATA = None


def data():
    global DATA
    if DATA is None:
        DATA = load_data("synthetic", val_size=64, train_subset=128, test_subset=32)
    return DATA


def config(**kw):
    base = dict(method="at", train_attack="pgd", dataset="synthetic", model="small-cnn", eps=0.1,
                attack_steps=2, attack_step_size=0.05, epochs=2, batch_size=64, lr=0.05, val_size=64,
                train_subset=128)
    return TrainConfig(**{**base, **kw})


def test_piecewise_schedule_divides_by_ten_at_60_and_90_percent(tmp_path):
    assert milestones(config(epochs=100)) == [60, 90]
    history = train_run(config(epochs=3, lr_milestones=(0.34, 0.67)), data(), tmp_path, torch.device("cpu"))
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.005, 0.0005])
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    best = [h for h in history if h.get("best")]
    assert best and best[-1]["val_pgd"] == max(h["val_pgd"] for h in history)
    assert all(0 <= h["val_pgd"] <= h["val_natural"] + 0.1 for h in history)


def test_weight_statistics_by_hand():
    s = weight_stats([torch.tensor([0.1, 0.3]), torch.tensor([1.0, 2.7])])
    assert s["w_mean"] == pytest.approx(1.025) and s["w_min"] == pytest.approx(0.1) and s["w_max"] == pytest.approx(2.7)
    assert s["w_frac_below_0.2"] == 0.25
    assert s["w_std"] == pytest.approx(torch.tensor([0.1, 0.3, 1.0, 2.7]).double().std(unbiased=False).item())
    hist = s["w_hist"]  # bins of 0.2 from 0: 0.1 -> bin 0, 0.3 -> 1, 1.0 -> 5, 2.7 -> 13
    assert sum(hist) == 4 and [i for i, c in enumerate(hist) if c] == [0, 1, 5, 13]
    assert len(hist) == 21 and weight_stats([torch.tensor([9.0])])["w_hist"][-1] == 1  # overflow bin
    assert weight_stats([]) == {}


def test_relative_weight_statistics_by_hand():
    # rw_hist: bins of 0.1 from 0 to 3, then [3, inf): 0.05 -> bin 0, 0.95 -> 9, 1.0 -> 10, 3.5 -> 30
    s = weight_stats([torch.tensor([0.05, 0.95, 1.0, 3.5])], "rw", REL_HIST_EDGES)
    assert set(s) == {"rw_mean", "rw_std", "rw_min", "rw_max", "rw_frac_below_0.2", "rw_hist"}
    assert s["rw_mean"] == pytest.approx(1.375) and s["rw_frac_below_0.2"] == 0.25
    assert len(s["rw_hist"]) == 31 and [i for i, c in enumerate(s["rw_hist"]) if c] == [0, 9, 10, 30]


def test_reweighted_methods_record_weight_statistics(tmp_path):
    history = train_run(config(method="gairat", method_params={"lam": -1.0, "burn_in": 0.5}), data(), tmp_path,
                        torch.device("cpu"))
    assert not history[0]["reweighting"] and "w_mean" not in history[0]  # burn-in epoch: plain AT
    assert history[1]["reweighting"] and history[1]["w_mean"] == pytest.approx(1.0, abs=1e-5)  # batch-normalised
    assert "rw_mean" not in history[0] and history[1]["rw_mean"] == pytest.approx(history[1]["w_mean"], abs=1e-6)
    assert sum(history[1]["rw_hist"]) == 128  # one relative weight per training instance


@pytest.mark.parametrize("method", ["mail", "lrat"])
def test_relative_weights_in_the_history_have_mean_one(tmp_path, method):
    """Beside the raw w_* (MAIL: not batch-normalised; LRAT: its n*m variant coefficients), rw_* hold one
    relative weight per instance with batch mean 1 (batches of 64: the epoch mean is 1 too)."""
    params = {"burn_in": 0.0} if method == "mail" else {}
    history = train_run(config(method=method, train_attack="pgd+cw" if method == "lrat" else "pgd", epochs=1,
                               method_params=params), data(), tmp_path, torch.device("cpu"))
    h = history[0]
    assert h["rw_mean"] == pytest.approx(1.0, abs=1e-5) and sum(h["rw_hist"]) == 128
    assert sum(h["w_hist"]) == (256 if method == "lrat" else 128)
    if method == "mail":
        assert h["w_mean"] != pytest.approx(1.0, abs=1e-3)  # raw MAIL weights are on another scale


def test_non_finite_loss_stops_the_run(tmp_path):
    with pytest.raises(NonFiniteLoss, match="epoch 1"):
        train_run(config(lr=1e30, epochs=1), data(), tmp_path, torch.device("cpu"))


def test_channels_last_matches_the_default_layout(tmp_path):
    a = train_run(config(epochs=1), data(), tmp_path / "a", torch.device("cpu"))
    b = train_run(config(epochs=1), data(), tmp_path / "b", torch.device("cpu"), runtime=RuntimeOptions(channels_last=True))
    sa, sb = (torch.load(p / "last.pt", weights_only=True) for p in (tmp_path / "a", tmp_path / "b"))
    assert all(torch.allclose(sa[k], sb[k], atol=1e-4) for k in sa)
    assert b[0]["channels_last"] and a[0]["train_loss"] == pytest.approx(b[0]["train_loss"], rel=1e-4)


def test_bf16_autocast_trains_on_the_cpu_close_to_fp32(tmp_path):
    fp32 = train_run(config(epochs=1, method="lrat"), data(), tmp_path / "a", torch.device("cpu"))
    bf16 = train_run(config(epochs=1, precision="bf16", method="lrat"), data(), tmp_path / "b", torch.device("cpu"))
    assert bf16[0]["train_loss"] == pytest.approx(fp32[0]["train_loss"], rel=0.05)  # bf16: ~3 significant digits
    assert bf16[0]["train_loss"] != fp32[0]["train_loss"]  # autocast really ran in bf16


def test_compiled_training_step_matches_eager():
    """--compile on the CPU, the same code path as on a GPU: a PGD-3 AT step through the compiled model (attack
    graph without weight gradients, train-mode graph for the loss) gives eager's adversarial examples (PGD's
    sign steps may flip a few near-zero components), loss and weight gradients. Dropout is set to 0: compiled
    dropout draws other random numbers than eager."""
    import copy

    from bench.attacks.pgd import PGD
    from bench.models import build_model
    from methods import StepContext, build_method
    from methods.base import run_attack

    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, 28)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x, y = data().train.x[:64].float() / 255, data().train.y[:64]
    ctx = StepContext(attacks=(PGD(0.1, steps=3),), attack_names=("pgd",), epoch=0, epochs=1)
    advs, losses, grads = [], [], []
    for compiled in (False, True):
        copy_ = copy.deepcopy(model).train()
        step_model = torch.compile(copy_) if compiled else copy_
        torch.manual_seed(1)
        advs.append(run_attack(step_model, ctx.attacks[0], x, y, "eval").x_adv)
        torch.manual_seed(1)
        loss = build_method("at").loss(step_model, x, y, ctx).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in copy_.parameters()]))
    assert (advs[0] == advs[1]).float().mean() > 0.99 and (advs[0] - x).abs().max() > 0.05
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.999


@pytest.mark.parametrize("C,share", [(5.0, 1.0), (0.0, 0.0)])  # w = 1 - t <= 2: C = 5 needs every anchor, 0 none
def test_lrat_records_the_share_of_instances_that_needed_the_anchor(tmp_path, C, share):
    params = {"alpha": 1.0, "beta": 1.0, "C": C}
    history = train_run(config(method="lrat", method_params=params, epochs=1), data(), tmp_path, torch.device("cpu"))
    assert history[0]["anchor_share"] == share
