"""Store: atomic writes leave either the old file or the new one, and unfinished cells are invisible."""
from __future__ import annotations

import json

import pytest

from bench.store import DONE, Store, atomic_path, decode_flags, encode_flags, write_json


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_flags_round_trip():
    flags = [True, False, False, True]
    assert encode_flags(flags) == "1001" and decode_flags("1001") == flags


def test_only_done_runs_are_visible(tmp_path):
    store = Store(tmp_path)
    for run_id in ("finished", "unfinished"):
        write_json(store.run_dir(run_id) / "config.json", {"run_id": run_id})
        store.write_eval(run_id, "best-linf-eps0.1-n4", "natural", {"run_id": run_id, "accuracy": 0.5},
                         [True, False, True, False])
    store.mark("finished", DONE)
    rows = store.load_rows(with_flags=True)
    assert [r["run_id"] for r in rows] == ["finished"] and rows[0]["flags"] == "1010"
