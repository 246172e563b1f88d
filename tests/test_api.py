"""bench.api: an arbitrary nn.Module evaluated through the harness (and `bench eval --model-file`) lands in the
store under its name, with the numbers an oracle computes by hand, beside the trained runs in `bench report`,
`bench status` and `results()`; bad input is refused with a clear error and writes nothing; `run()` is `bench
run` from Python."""
from __future__ import annotations

import json
import re
import textwrap

import pandas as pd
import pytest
import torch
import torch.nn as nn
from support import TinyNet, invoke, tree

import bench.api as api
from bench.config.names import UsageError
from bench.data import load_data, to_float
from bench.store import Store, file_sha, load_run

N, EPS = 32, 0.02  # the `finished` store's setting: 32 test points, eps 0.02
ATTACKS = "natural,fgsm,pgd20"
VOLATILE = ["created_at", "eval_seconds"]


def tinynet(seed: int = 0, steps: int = 0) -> TinyNet:
    """A TinyNet, fitted to the synthetic training data for `steps` Adam steps (left in train mode)."""
    torch.manual_seed(seed)
    model = TinyNet()
    if steps:
        train = load_data("synthetic", val_size=64, train_subset=256).train
        x, y = to_float(train.x), train.y
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for i in range(steps):
            batch = slice(64 * (i % 4), 64 * (i % 4 + 1))
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def oracle_flags(model: nn.Module, n: int = N) -> list[bool]:
    """Correct or not, per test point, computed here: the same points (synthetic, class-balanced n), eval mode."""
    test = load_data("synthetic", test_subset=n).test
    was = model.training
    model.eval()
    with torch.no_grad():
        flags = (model(to_float(test.x)).argmax(1) == test.y).tolist()
    model.train(was)
    return flags


def evaluate(model, results, **kw):
    args = dict(name="tinynet", dataset="synthetic", eval_attacks=ATTACKS, eps=EPS, test_subset=N,
                results=results, device="cpu")
    return api.evaluate(model, **{**args, **kw})


def test_an_external_model_is_stored_under_its_name_with_the_oracles_accuracy(tmp_path, one_thread):
    model = tinynet(steps=12).train()  # BN and dropout in train mode: evaluate must use eval mode, then give it back
    rows = evaluate(model, tmp_path / "results")
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    df = api.results(tmp_path / "results")
    assert list(df.columns[:len(api.IDENTITY_COLUMNS)]) == list(api.IDENTITY_COLUMNS)
    assert set(df.method) == {"tinynet"} and set(df.train_attack) == {"external"} and set(df.model) == {"external"}
    assert set(df.checkpoint) == {"external"} and set(df.eval_attack) == {"natural", "fgsm", "pgd20", "worst"}
    assert set(df.attack_relation) == {"unseen"} and not df.seen.any()
    natural = df[df.eval_attack == "natural"].iloc[0]
    flags = oracle_flags(model)
    assert natural["flags"] == "".join("1" if f else "0" for f in flags) and 0.2 < sum(flags) / N < 1
    assert natural.accuracy == sum(flags) / N and natural.n_eval == N
    assert rows.drop(columns="flags").equals(df.drop(columns="flags"))  # what evaluate returned is what is stored
    # the store: the state dict evaluated, hashed into checkpoint_sha and the run id
    run_dir = Store(tmp_path / "results").run_dir(natural.run_id)
    assert set(df.checkpoint_sha) == {file_sha(run_dir / "external.pt")}
    stored = torch.load(run_dir / "external.pt", weights_only=True)
    assert stored.keys() == model.state_dict().keys()
    assert all(torch.equal(stored[k], v) for k, v in model.state_dict().items())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["weights_sha"] == natural.checkpoint_sha
    assert config["external"]["model_class"].endswith("TinyNet")
    with pytest.raises(UsageError, match="external model"):
        load_run(run_dir, "external")
    # the same weights under the same name again: the same run, its rows reused (not recomputed)
    before = (run_dir / "evals").rglob("*.json")
    mtimes = {p: p.stat().st_mtime_ns for p in before}
    again = evaluate(model, tmp_path / "results", eval_attacks="natural,fgsm")
    assert set(again.run_id) == {natural.run_id}
    assert again[again.eval_attack == "natural"].iloc[0].created_at == natural.created_at
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p.name != "worst.json")
    # other weights under the same name: another run
    other = evaluate(tinynet(seed=1), tmp_path / "results", eval_attacks="natural")
    assert set(other.run_id) != {natural.run_id}


def test_bench_report_and_status_show_it_beside_the_trained_runs(store_copy, tmp_path):
    evaluate(tinynet(), store_copy.root, eval_attacks="natural,pgd20")
    out = tmp_path / "reports"
    res = invoke("report", "--results", str(store_copy.root), "--out", str(out), "--no-pdf")
    assert res.exit_code == 0, res.output
    table = (out / "table.md").read_text()  # one setting: the external model joined the trained runs' table
    assert "tinynet (external)" in table and "AT (PGD)" in table
    gaps = pd.read_csv(out / "gap_table.csv")
    row = gaps[gaps.method == "tinynet"].iloc[0]
    assert row.baseline == "AT (PGD)" and row.n_points == N and pd.isna(row.seen_attacks)
    assert "tinynet" in (out / "summary.md").read_text()
    status = invoke("status", "--results", str(store_copy.root))
    assert status.exit_code == 0 and "3 cells: 3 finished" in status.output
    assert "tinynet/external synthetic/external seed 0" in status.output
    # `bench eval` over the whole store leaves it alone (it cannot rebuild it); named, it is refused
    res = invoke("eval", "--results", str(store_copy.root), "--eval-attacks", "natural,pgd20", "--checkpoint", "best")
    assert res.exit_code == 0 and "skipped" in res.output and "external model 'tinynet'" in res.output
    external = next(r for r in store_copy.run_ids() if store_copy.config(r)["train"]["method"] == "tinynet")
    res = invoke("eval", external, "--results", str(store_copy.root))
    assert res.exit_code == 2 and "--model-file" in res.output
    res = invoke("export", external, "--results", str(store_copy.root), "--out", str(tmp_path / "exported"))
    assert res.exit_code == 2 and "external model" in res.output and not (tmp_path / "exported").exists()


MODEL_FILE = textwrap.dedent("""
    import torch.nn as nn

    class FileNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64, 10))

        def forward(self, x):
            return self.body(x)

    def build():
        return FileNet()

    def not_a_model():
        return 3

    def broken():
        raise ValueError("no GPU here")
""")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "filenet.py"
    path.write_text(MODEL_FILE)
    return path


def test_bench_eval_model_file_gives_the_apis_rows(model_file, tmp_path, one_thread):
    model = api.load_model_file(f"{model_file}:build")
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    by_api = evaluate(model, tmp_path / "a", name="filenet")
    res = invoke("eval", "--model-file", f"{model_file}:build", "--weights", str(tmp_path / "weights.pt"),
                 "--name", "filenet", "--dataset", "synthetic", "--eval-attacks", ATTACKS, "--eps", str(EPS),
                 "--test-subset", str(N), "--results", str(tmp_path / "b"), "--device", "cpu")
    assert res.exit_code == 0, res.output
    by_cli = api.results(tmp_path / "b")
    assert set(by_cli.run_id) == set(by_api.run_id)  # the same name and weights: the same run
    assert by_cli.drop(columns=VOLATILE).equals(by_api.drop(columns=VOLATILE))
    assert by_api[by_api.eval_attack == "natural"].iloc[0]["flags"] == "".join("1" if f else "0"
                                                                             for f in oracle_flags(model))


def test_bad_input_is_refused_clearly_and_writes_nothing(results, tmp_path, model_file):
    before = tree(results)
    cases = [  # (keyword arguments, the message)
        ({"name": "At"}, "lowercase"), ({"name": "lrat"}, "is a method of the harness"),
        ({"dataset": "cifar11"}, "Did you mean: cifar10"), ({"eval_attacks": "natural,pgd"}, "Did you mean: pgd20"),
        ({"eps": 8}, "Did you mean 8/255"), ({"test_subset": 10 ** 6}, "test_subset"),
        ({"checkpoint": "train_state"}, "Checkpoint label"), ({"seed": -1}, "seed"),
    ]
    for kw, message in cases:
        with pytest.raises(UsageError, match=message):
            evaluate(tinynet(), results, **kw)
    with pytest.raises(UsageError, match="takes a torch.nn.Module"):
        evaluate(lambda x: x, results)
    with pytest.raises(UsageError, match=r"expected logits of shape \(8, 10\)"):
        evaluate(nn.Sequential(nn.Flatten(), nn.Linear(784, 5)), results)
    with pytest.raises(UsageError, match="fails on synthetic inputs"):
        evaluate(nn.Linear(3, 10), results)
    assert tree(results) == before
    torch.save({"epoch": 3, "state_dict": TinyNet().state_dict()}, tmp_path / "checkpoint.pt")
    torch.save(TinyNet().state_dict(), tmp_path / "tiny.pt")
    cli = [  # (arguments, the message)
        ([f"{tmp_path}/missing.py:build"], "does not exist"),
        ([f"{model_file}:biuld"], "has no 'biuld'. Did you mean: build?"),
        ([f"{model_file}:not_a_model"], "returned a int, not a torch.nn.Module"),
        ([f"{model_file}:broken"], r"broken\(\) in .* raised ValueError: no GPU here"),
        ([str(model_file)], "PATH.py:FACTORY"),
        ([f"{model_file}:build", "--weights", str(tmp_path / "checkpoint.pt")], "not a state dict .*'state_dict'"),
        ([f"{model_file}:build", "--weights", str(tmp_path / "tiny.pt")], "does not fit the model build"),
        ([f"{model_file}:build", "--weights", str(model_file)], "weights_only=True"),
        ([f"{model_file}:build", "--name", "at"], "is a method of the harness"),
        ([f"{model_file}:build", "--eps", "8"], "Did you mean 8/255"),
        ([f"{model_file}:build", "--workers", "2"], "--workers"),
    ]
    for args, message in cli:
        res = invoke("eval", "--results", str(results), "--name", "filenet", "--dataset", "synthetic",
                     "--model-file", *args)
        assert res.exit_code == 2, (args, res.output)
        assert re.search(message, " ".join(res.output.split())), (args, res.output)
    for args, message in ([["--name", "x"], "goes with --model-file"],
                          [["--model-file", f"{model_file}:build", "--name", "x"], "needs --dataset"]):
        res = invoke("eval", "--results", str(results), *args)
        assert res.exit_code == 2 and message in res.output, res.output
    assert tree(results) == before
    with pytest.raises(UsageError, match="No results store"):
        api.results(tmp_path / "nowhere")


def test_run_trains_one_cell_and_returns_its_rows(tmp_path, one_thread):
    root = tmp_path / "results"
    kw = dict(dataset="synthetic", methods=["at"], train_attack="pgd", epochs=1, train_subset=64, val_size=32,
              test_subset=32, batch_size=32, attack_steps=2, eval_attacks="natural", seeds=0, results=str(root),
              device="cpu")
    rows = api.run(**kw)
    assert len(set(rows.run_id)) == 1 and set(rows.method) == {"at"} and set(rows.train_attack) == {"pgd"}
    assert sorted(zip(rows.checkpoint, rows.eval_attack)) == [("best", "natural"), ("best", "worst"),
                                                               ("last", "natural"), ("last", "worst")]
    assert rows.equals(api.results(root))
    (run_id,) = set(rows.run_id)
    attempts = Store(root).run_dir(run_id) / "attempts.json"
    assert len(json.loads(attempts.read_text())) == 1
    assert api.run(**kw).equals(rows)  # finished: skipped, the same rows
    assert len(json.loads(attempts.read_text())) == 1
    with pytest.raises(UsageError, match="Did you mean: epochs"):
        api.run(epoch=1, results=str(root))
    with pytest.raises(UsageError, match="does not take dry_run"):
        api.run(dry_run=True, results=str(root))
    with pytest.raises(UsageError, match="Unknown method 'atx'"):
        api.run(**{**kw, "methods": "atx"})
