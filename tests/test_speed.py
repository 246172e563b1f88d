"""The speed benchmark in its tiny mode: it works and its derived figures follow from its measurements.
(Timings themselves are never asserted: speed is reported by `bench speed`, not tested.)"""
from __future__ import annotations

import json

from click.testing import CliRunner

from bench.cli import main


def test_speed_tiny_mode_writes_consistent_json(tmp_path):
    out = tmp_path / "speed.json"
    result = CliRunner().invoke(main, ["speed", "--batch-size", "16", "--steps", "1", "--warmup", "1",
                                       "--methods", "at,gairat,lrat", "--train-attacks", "pgd,saa+cw",
                                       "--eval-points", "8", "--epoch-images", "64", "--device", "cpu", "--channels-last",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    rows = {(r["method"], r["train_attack"]): r for r in data["rows"]}
    # gairat cannot take saa+cw (no kappa, two attacks); at cannot take two attacks
    assert set(rows) == {("at", "pgd"), ("gairat", "pgd"), ("lrat", "pgd"), ("lrat", "saa+cw")}
    plain = data["plain_images_per_s"]
    for r in data["rows"]:
        assert r["ratio"] == plain / r["images_per_s"]
        assert r["efficiency"] == ((2 * r["attack_steps"] + 3) / 3) / r["ratio"]
    assert rows[("lrat", "saa+cw")]["attack_steps"] == 3 * 20 + 10
    assert rows[("at", "pgd")]["overhead"] == 1.0
    assert rows[("lrat", "pgd")]["overhead"] == rows[("at", "pgd")]["images_per_s"] / rows[("lrat", "pgd")]["images_per_s"]
    assert 0.0 <= data["epoch_overhead"]["outside_steps_fraction"] <= 1.0
    assert data["device"]["device"].startswith("cpu") and "torch_version" in data["device"]
    assert "plain training" in result.output and "channels_last" in result.output
    assert data["settings"]["channels_last"] is True and data["settings"]["compile"] is False
