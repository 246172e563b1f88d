"""One verdict per run on whether its stored rows may be used: the check behind `bench status`, `bench report`
and `bench export` (torch-free).

    ok          DONE written, no FAILED, every stored file readable, every row computed on the checkpoint file
                stored (its `checkpoint_sha`) with an `accuracy` that is the mean of its flags, and every eval
                file present that the run says it has (DONE's `evals`, the cell's `suite`, each worst row's
                `worst_of`); a trained run also has TRAINED and the checkpoints its rows name
    unfinished  no DONE (training or evaluation under way, interrupted, or not started)
    failed      FAILED written (a failed attempt; never read as a result)
    stale       rows computed on another checkpoint file than the one stored
    damaged     anything else above (a file missing, truncated, garbled, edited, or refused as unsafe)

Each problem is a StoreError naming the file and the reason. `repair` says what repairs the run, and says
"`bench run` ... repairs it" only where `bench run` does: the cell's own suite (DONE's `suite`), its training
files and markers; rows `bench eval` added get the `bench eval` command that evaluates them again, an external
model's the re-evaluation of its module, and a refused (unsafe) file nothing automatic.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.config.catalog import is_external
from bench.store import DONE, FAILED, TRAINED, Store, StoreError, check_eval, inspect_run, read_json

Verdict = Literal["ok", "unfinished", "failed", "stale", "damaged"]
RUN_REPAIRS = "`bench run` with the cell's settings repairs it"
_GROUP = re.compile(r"(?P<ckpt>.+)-(?P<threat>linf|l2)-eps(?P<eps>[0-9.]+(?:e[-+]?\d+)?)-n(?P<n>\d+)"
                    r"(?:-(?P<prec>\w+))?")  # bench.store.eval_group's folder name


@dataclass(frozen=True)
class Integrity:
    run_id: str
    verdict: Verdict
    problems: tuple[StoreError, ...] = ()
    repair: str = ""  # what repairs it ("" when nothing needs repairing)

    @property
    def usable(self) -> bool:
        return self.verdict == "ok"

    def detail(self, run_dir: Path) -> str:
        """'evals/best-.../pgd20.json: missing (...) (+2 more)': the first problem, relative to the run."""
        if not self.problems:
            return ""
        first = self.problems[0]
        name = first.path.relative_to(run_dir) if first.path.is_relative_to(run_dir) else first.path
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"{name}: {first.reason}{more}"


def _read_marker(path: Path, problems: list[StoreError]) -> dict[str, Any]:
    """A marker's JSON ({} when absent); a damaged one is a problem (DONE's record cannot be trusted)."""
    if not path.exists():
        return {}
    try:
        info = read_json(path)
    except StoreError as exc:
        problems.append(exc)
        return {}
    if not isinstance(info, dict):
        problems.append(StoreError(path, "valid JSON but not a marker record (an object)"))
        return {}
    return info


def _eval_rows(store: Store, run_id: str) -> dict[str, dict[str, dict[str, Any]]]:
    """{group: {attack: row}} of the readable eval files (inspect_run names the others)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for group, attack in store.eval_files(run_id):
        path = store.eval_path(run_id, group, attack)
        try:
            out.setdefault(group, {})[attack] = check_eval(read_json(path), path)["row"]
        except StoreError:
            out.setdefault(group, {})
    return out


def _pairs(value: Any) -> set[tuple[str, str]]:
    return {(str(e[0]), str(e[1])) for e in value or [] if isinstance(e, (list, tuple)) and len(e) == 2}


def expected_evals(done: dict[str, Any], rows: dict[str, dict[str, dict]]) -> dict[tuple[str, str], str]:
    """(group, attack) -> why it must be stored: DONE's record of the files it saw, the cell's suite, and the
    attacks each stored worst row combines (`worst_of`; a DONE marker from before the record has only these)."""
    out = {pair: "the cell's evaluation suite" for pair in _pairs(done.get("suite"))}
    out.update({pair: "DONE records it" for pair in _pairs(done.get("evals"))})
    for group, by_attack in rows.items():
        worst = by_attack.get("worst") or {}
        for attack in str(worst.get("worst_of") or "").split(","):
            if attack:
                out.setdefault((group, attack), "the worst row of its group combines it")
    return out


def _done_problems(store: Store, run_id: str, done: dict[str, Any], external: bool) -> list[StoreError]:
    """What a DONE run lacks: TRAINED (a trained run), eval files it says it has, checkpoints its rows name."""
    run_dir = store.run_dir(run_id)
    out = []
    if not external and not (run_dir / TRAINED).exists():
        out.append(StoreError(run_dir / TRAINED, "missing, though DONE is written: training is not recorded as "
                              "finished"))
    rows = _eval_rows(store, run_id)
    for (group, attack), why in sorted(expected_evals(done, rows).items()):
        path = store.eval_path(run_id, group, attack)
        if not path.exists():
            out.append(StoreError(path, f"missing ({why})"))
    named = {r.get("checkpoint") for by_attack in rows.values() for r in by_attack.values()} - {None}
    missing_named = sorted(n for n in named if not (run_dir / f"{n}.pt").exists())
    if (run_dir / TRAINED).exists():  # inspect_run names best.pt and last.pt already
        missing_named = [n for n in missing_named if n not in ("best", "last")]
    out += [StoreError(run_dir / f"{n}.pt", "missing, though stored rows were computed on it") for n in missing_named]
    return out


def _verdict(problems: list[StoreError], failed: bool, done: bool) -> Verdict:
    if any(p.kind != "stale" for p in problems):
        return "damaged"
    if problems:
        return "stale"
    return "failed" if failed else "ok" if done else "unfinished"


def run_integrity(store: Store, run_id: str, deep: bool = False) -> Integrity:
    """The verdict on one run (see the module docstring). `deep`: every CRC of every torch file, whatever its
    size (inspect_run)."""
    run_dir = store.run_dir(run_id)
    problems = list(inspect_run(store, run_id, deep))
    done = (run_dir / DONE).exists()
    info = _read_marker(run_dir / DONE, problems)
    external = False
    try:
        external = is_external(store.config(run_id)["train"]) if (run_dir / "config.json").exists() else False
    except StoreError:
        pass  # inspect_run named it
    if done:
        problems += _done_problems(store, run_id, info, external)
    verdict = _verdict(problems, (run_dir / FAILED).exists(), done)
    repair = repair_text(store, run_id, problems, info, external) if problems else ""
    return Integrity(run_id, verdict, tuple(problems), repair)


def run_label(store: Store, run_id: str) -> str:
    """'at/pgd synthetic/small-cnn seed 1 [3f2a9c1b0d4e]' (as `bench status` labels it); '? [id]' when its
    config cannot be read."""
    try:
        t = store.config(run_id)["train"]
        return f"{t['method']}/{t['train_attack']} {t['dataset']}/{t['model']} seed {t['seed']} [{run_id}]"
    except (StoreError, KeyError):
        return f"? [{run_id}]"


class RunsRefused(RuntimeError):
    """Runs whose stored results cannot be used, refused by name (`bench report`, `bench export`: exit 1)."""


def refusal_lines(store: Store, unusable: dict[str, Integrity], brief: bool = False) -> list[str]:
    """One line per run that cannot be used: its label, the verdict, the first problem and (unless `brief`: the
    report's own note, paths relative to the run) what repairs it."""
    lines = []
    for run_id, v in sorted(unusable.items()):
        first = v.problems[0] if v.problems else None
        what = (f"{'refused' if first.kind == 'unsafe' else first.kind} store file {first}" if first
                else "FAILED beside DONE")
        more = f" (+{len(v.problems) - 1} more)" if len(v.problems) > 1 else ""
        line = f"{run_label(store, run_id)}: {v.verdict}: {what}{more}"
        lines.append(line.replace(f"{store.run_dir(run_id)}/", "") if brief
                     else f"  {line}; {v.repair or 'see bench status'}")
    return lines


def check_store(store: Store) -> dict[str, Integrity]:
    """The verdict on every run with a DONE marker (the runs a report or an export may read)."""
    return {r: run_integrity(store, r) for r in store.finished_runs()}


def usable_runs(store: Store, skip_damaged: bool, how_to_skip: str) -> tuple[list[str], dict[str, Integrity]]:
    """(the finished runs whose rows may be read, the finished runs that may not): RunsRefused naming the
    latter unless `skip_damaged` (`how_to_skip`: how to leave them out, for the message)."""
    verdicts = check_store(store)
    unusable = {r: v for r, v in verdicts.items() if not v.usable}
    if unusable and not skip_damaged:
        n = len(unusable)
        raise RunsRefused("\n".join([f"{n} finished run{'s' if n > 1 else ''} cannot be used (stale or damaged "
                                     f"stored results); {how_to_skip}:",
                                     *refusal_lines(store, unusable)]))
    return [r for r, v in verdicts.items() if v.usable], unusable


def _group_eps(store: Store, run_id: str, text: str) -> str:
    """The budget of a group folder (its eps to 6 significant digits, `text`) as a flag: a stored row's exact
    eval_eps that prints as `text`, else `text` itself when shorter than 6 digits (exact), else the fraction it
    rounds (8/255): the command then lands in the same group with the very same eps."""
    from fractions import Fraction

    from bench.config import format_eps

    for g, attack in store.eval_files(run_id):
        path = store.eval_path(run_id, g, attack)
        try:
            eps = float(check_eval(read_json(path), path)["row"]["eval_eps"])
        except (StoreError, KeyError, TypeError, ValueError):
            continue
        if f"{eps:.6g}" == text:
            return format_eps(eps)
    shown = float(text)
    if len(text.replace("0.", "").lstrip("0").replace(".", "")) < 6:
        return text
    frac = Fraction(shown).limit_denominator(1000)
    return f"{frac.numerator}/{frac.denominator}" if abs(float(frac) - shown) <= 5e-7 * shown else text


def eval_command(store: Store, run_id: str, group: str, attacks: list[str]) -> str | None:
    """The `bench eval` command that evaluates `attacks` of `group` again (None: a group name it cannot read)."""
    m = _GROUP.fullmatch(group)
    if m is None:
        return None
    precision = f" --eval-precision {m['prec']}" if m["prec"] else ""
    eps = _group_eps(store, run_id, m["eps"])
    return (f"`bench eval {run_id} --results {store.root} --checkpoint {m['ckpt']} --eval-attacks "
            f"{','.join(sorted(attacks))} --threat-model {m['threat']} --eps {eps} --test-subset {m['n']}"
            f"{precision}`")


def _eval_pair(store: Store, run_id: str, path: Path) -> tuple[str, str] | None:
    evals = store.run_dir(run_id) / "evals"
    if not path.is_relative_to(evals) or len(path.relative_to(evals).parts) != 2:
        return None
    return path.parent.name, path.name.split(".")[0]


def repair_text(store: Store, run_id: str, problems: list[StoreError], done: dict[str, Any], external: bool) -> str:
    """What repairs the run, true for each problem (see the module docstring)."""
    if any(p.kind == "unsafe" for p in problems):
        return ("never loaded: if you did not put it there, delete it and `bench run` trains the cell again"
                if not external else "never loaded: delete the run folder and evaluate the model again")
    if external:
        return ("evaluating the model again with the same attacks (`bench eval --model-file`, bench.api.evaluate) "
                "repairs it")
    suite = _pairs(done.get("suite"))
    suite_groups = {g for g, _ in suite}
    by_group: dict[str, set[str]] = {}
    by_run = False
    for p in problems:
        pair = _eval_pair(store, run_id, p.path)
        if pair is None or pair in suite or (pair[1] == "worst" and pair[0] in suite_groups):
            by_run = True  # training files, markers and the cell's own suite: bench run redoes them
        else:
            by_group.setdefault(pair[0], set()).add(pair[1])
    parts = [RUN_REPAIRS] if by_run else []
    for group, attacks in sorted(by_group.items()):
        named = (attacks - {"worst"}) or {a for g, a in store.eval_files(run_id) if g == group and a != "worst"}
        command = eval_command(store, run_id, group, sorted(named or {"natural"}))
        parts.append(f"{command} evaluates evals/{group} again" if command else
                     f"`bench eval` with the settings of evals/{group} evaluates it again")
    return "; ".join(parts)
