"""Store: atomic writes leave either the old file or the new one, and unfinished cells are invisible."""
from __future__ import annotations

import json

import pytest
from support import BASE, invoke, modes

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


def test_atomic_writes_honour_the_umask(tmp_path, umask):
    """mkstemp's 0600 must not reach the renamed file: 0644 under umask 022, 0600 under 077 (as open())."""
    write_json(tmp_path / "new" / "a.json", {"v": 1})
    with atomic_path(tmp_path / "new" / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    assert modes(tmp_path / "new") == {".": 0o777 & ~umask, "a.json": 0o666 & ~umask, "b.bin": 0o666 & ~umask}


def test_a_stored_run_honours_the_umask(tmp_path, umask, one_thread):
    """Every file and folder `bench run` writes (config, history, checkpoints, markers, eval rows, attempts,
    the lock) gets the mode the umask gives: readable by others under 022, private under 077."""
    results = tmp_path / "results"
    res = invoke(*BASE, "--batch-size", "32", "--attack-steps", "2", "--device", "cpu", "--results", str(results))
    assert res.exit_code == 0, res.output
    found = modes(results)
    kinds = ("config.json", "history.json", "attempts.json", "best.pt", "TRAINED", "DONE", "natural.json", ".lock")
    assert all(any(p.endswith(kind) for p in found) for kind in kinds), sorted(found)
    files = {p for p in found if (results / p).is_file()}
    assert {p: found[p] for p in files} == {p: 0o666 & ~umask for p in files}
    assert {p: m for p, m in found.items() if p not in files} == {p: 0o777 & ~umask for p in found if p not in files}
