"""The bottom of `bench report`: the store's rows as a frame, the selection, and the settings and variants the
tables are made of, with the label and escape helpers every layer above uses. Never imports torch: it reads
the store's JSON files only. Labels and display orders come from the torch-free catalog
(bench/config/catalog.py), so a new method needs no change here; an unknown one (a plugin) is labelled with
its name upper-cased and sorts after the known ones.

Rows are grouped into *settings* (dataset, model, threat model, eval eps, number of test points: the same
test points, so flags pair up) and, inside a setting, into *variants* (one training config up to its seed:
a table row, its runs the seeds). Above this module: stats.py (statistics), tables.py and plots.py
(rendering), document.py (every output file), and `write_report` in the package's __init__.py.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.config import parse_checkpoint
from bench.config.catalog import (EXTERNAL, METHOD_ALIASES, METHODS, TRAIN_ATTACKS, eval_attack_label,
                                  eval_attack_order, method_label, method_order, row_label, train_attack_order)
from bench.config.names import UsageError, split_list, suggest
from bench.config.relations import row_relation
from bench.fingerprint import recorded_fingerprint
from bench.health import run_health
from bench.store import Store, atomic_path

log = logging.getLogger(__name__)

__all__ = ["FLAG_ID_COLUMNS", "Selection", "Setting", "Variant", "atomic_output", "attack_label", "attack_order",
           "baseline_for", "build_settings", "build_variants", "eps_text", "flag_matrix", "hold_folder", "load_frame",
           "method_label", "parse_selection", "report_rows", "row_guards", "row_label", "row_relations", "select",
           "setting_slug", "sweep_temp_files", "tex_escape"]

# Per-run config keys that are not part of a variant: they define the setting, or they are the seed.
NOT_VARIANT_KEYS = ("seed", "dataset", "model")


def attack_order(attacks: Iterable[str]) -> list[str]:
    """Eval attacks in table-column order (the catalog's), unknown ones after them, alphabetically."""
    attacks = set(attacks)
    known = [a for a in eval_attack_order() if a in attacks]
    return known + sorted(attacks - set(known))


def attack_label(name: str) -> str:
    """'pgd20' -> 'PGD-20'; an unknown eval attack keeps its name."""
    return eval_attack_label(name)


# Every character LaTeX's text mode treats specially; one pass, so no escape is escaped again. ^ and ~ have
# no backslash form that prints them (\^ and \~ are accents), hence the text commands.
_TEX_SPECIALS = str.maketrans({"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&",
                               "#": r"\#", "^": r"\textasciicircum{}", "_": r"\_", "%": r"\%",
                               "~": r"\textasciitilde{}"})


def tex_escape(text: str) -> str:
    """Plain text (labels, names) -> LaTeX text mode: \\ { } $ & # ^ _ % ~ escaped."""
    return text.translate(_TEX_SPECIALS)


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed over it once written: a report file is the old one or the
    whole new one, never half of it (a reader, a crash, Ctrl-C). Its name ends in .tmp: writers that guess
    the format from the name (savefig) must be told it. Its mode is the one open() gives (atomic_path)."""
    with atomic_path(path) as tmp:
        yield tmp


_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # store_files._create_temp's .<name>.<8 hex digits>.tmp


def sweep_temp_files(folder: Path) -> list[Path]:
    """Remove the temporary files a report killed mid-write left in `folder` (only names of atomic_output's
    own pattern), under an exclusive flock on the folder: a report writing into it right now holds it shared
    (`hold_folder`), so its temporary files are never taken from under it."""
    removed = []
    with _folder_lock(folder, exclusive=True):
        for path in folder.iterdir():
            if _TEMP_NAME.fullmatch(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def hold_folder(folder: Path) -> contextlib.AbstractContextManager[None]:
    """A shared flock on `folder` while a report writes into it (see `sweep_temp_files`)."""
    return _folder_lock(folder, exclusive=False)


@contextlib.contextmanager
def _folder_lock(folder: Path, exclusive: bool) -> Iterator[None]:
    """flock on the folder itself (no lock file); a no-op where flock is missing or refused."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except OSError:
        pass
    try:
        yield
    finally:
        os.close(fd)


def eps_text(eps: float) -> str:
    """8/255 -> '8/255' (the way papers write it); other budgets as the shortest decimal that reads back as the
    same float ('0.1', '0.10001'), so two settings with different budgets never share a title."""
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-9 * max(k, 1.0):
        return f"{round(k)}/255"
    short = f"{eps:.4g}"
    return short if float(short) == eps else repr(float(eps))


def flag_matrix(flags: Sequence[str]) -> np.ndarray:
    """Stored '0110...' strings (one per run) -> bool array of shape (runs, points)."""
    if not flags:
        return np.zeros((0, 0), dtype=bool)
    lengths = {len(f) for f in flags}
    if len(lengths) != 1:
        raise ValueError(f"flag strings of different lengths {sorted(lengths)}: not the same test points")
    raw = np.frombuffer("".join(flags).encode("ascii"), dtype=np.uint8)
    return (raw == ord("1")).reshape(len(flags), lengths.pop())


@dataclass(frozen=True)
class Selection:
    """What `bench report` puts in the tables. Empty tuples select everything in the store."""

    checkpoint: str = "best"  # best | last | epochN
    datasets: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    train_attacks: tuple[str, ...] = ()
    baseline: str = "at"
    compile_pdf: bool = True


@dataclass(frozen=True)
class Variant:
    """One table row: a training config up to its seed; its runs are ordered by seed."""

    label: str
    method: str
    train_attack: str
    run_ids: tuple[str, ...]
    seeds: tuple[int, ...]
    # eval attack -> seen | related | unseen (bench/config/relations.py), as stored in the rows of its first run
    relations: Mapping[str, str] = field(default_factory=dict)
    reference: bool = False  # added only as the baseline's fallback row, not selected by --train-attack

    def relation(self, attack: str) -> str:
        return self.relations.get(attack, "unseen")

    @property
    def seen(self) -> frozenset[str]:
        return frozenset(a for a, r in self.relations.items() if r == "seen")


@dataclass(frozen=True)
class Setting:
    """Runs that share test points (dataset, model, threat model, eps, n): their flags pair up."""

    dataset: str
    model: str
    threat_model: str
    eps: float
    n_points: int
    checkpoint: str
    baseline: str
    variants: tuple[Variant, ...]
    attacks: tuple[str, ...]
    flags: dict[tuple[str, str], np.ndarray] = field(repr=False)  # (run_id, eval attack) -> bool (n,)
    histories: dict[str, list[dict[str, Any]]] = field(repr=False)
    slug: str = ""
    filters: str = ""  # the --methods / --train-attack filters, named in every caption
    # (run_id, eval attack) -> {guard: reason} of the guards that flagged the row ({} when none did), or None
    # when the row predates the guards (not checked); see `row_guards`
    guards: dict[tuple[str, str], dict[str, str] | None] = field(default_factory=dict, repr=False)
    # run_id -> {flag: reason} of its training-health flags (bench/health.py; {} when healthy)
    health: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    # run_id -> the code fingerprint that trained it (bench/fingerprint.py), None where not recorded
    fingerprints: dict[str, str | None] = field(default_factory=dict, repr=False)

    def describe(self, tex: bool) -> str:
        """The selection, for every caption (LaTeX) and for summary.md (Markdown), with its number of test points:
        two settings of one store may differ only in the points evaluated (the demo's AutoAttack subset)."""
        eps = f"$\\epsilon = {eps_text(self.eps)}$" if tex else f"ε = {eps_text(self.eps)}"
        ckpt = {"best": "best checkpoint (highest validation PGD accuracy)", "last": "last-epoch checkpoint"}.get(
            self.checkpoint, f"checkpoint after epoch {self.checkpoint[5:]}")
        external = [v for v in self.variants if v.train_attack == EXTERNAL]
        if external and len(external) == len(self.variants):  # no checkpoint of ours was selected here
            ckpt = "external model" if len(external) == 1 else "external models"
        elif external:
            ckpt += ", external models as evaluated"
        threat = {"linf": "$\\ell_\\infty$" if tex else "L∞", "l2": "$\\ell_2$" if tex else "L2"}.get(
            self.threat_model, self.threat_model)
        name = f"{self.dataset}, {self.model}" + (f" ({self.filters})" if self.filters else "")
        return f"{tex_escape(name) if tex else name}, {threat} {eps}, {self.n_points:,} test points, {ckpt}"

    def variant(self, label: str) -> Variant:
        return next(v for v in self.variants if v.label == label)


def row_guards(row: Mapping[str, Any]) -> dict[str, str] | None:
    """{guard: reason} of the guards that flagged a stored row, in `guards_flagged` order ({} when none did);
    None for a row written before the guards existed (no `guard_<name>` column and no `guards_flagged`).
    Cells are "ok", "flag: <why>" or "skip: <why>" (bench/guards.py); a DataFrame gives NaN for a missing one."""
    values = {k[len("guard_"):]: v for k, v in row.items() if k.startswith("guard_") and isinstance(v, str)}
    listed = row.get("guards_flagged")
    if not values and not isinstance(listed, str):
        return None
    names = ([n for n in listed.split(",") if n] if isinstance(listed, str)
             else [n for n, v in values.items() if v.startswith("flag")])
    return {n: values.get(n, "").partition(":")[2].strip() for n in names}


def _canonical_train_attack(name: str) -> str:
    return "+".join(p.strip().lower() for p in name.split("+"))


def _check_names(kind: str, wanted: tuple[str, ...], present: set[str], known: Iterable[str], results) -> None:
    """Refuse names the store has no finished runs for: a typo gets a suggestion, a valid name absent from
    the store gets the list of what is there."""
    for name in wanted:
        if name in present:
            continue
        hint = suggest(name, sorted(present | set(known)))
        if hint and name not in set(known):
            raise UsageError(f"Unknown {kind} '{name}'.{hint} (the store has: {', '.join(sorted(present))})")
        raise UsageError(f"No finished runs with {kind} '{name}' in {results} "
                         f"(the store has: {', '.join(sorted(present))}).")


def parse_selection(*, checkpoint: str = "best", datasets: str = "", models: str = "", methods: str = "",
                    train_attacks: str = "", baseline: str = "at", compile_pdf: bool = True) -> Selection:
    """CLI strings -> Selection (aliases resolved; validated against the store later, in `select`)."""
    canon = [METHOD_ALIASES.get(m.lower(), m.lower()) for m in split_list(methods)]
    return Selection(checkpoint=parse_checkpoint(checkpoint), datasets=tuple(d.lower() for d in split_list(datasets)),
                     models=tuple(m.lower() for m in split_list(models)), methods=tuple(dict.fromkeys(canon)),
                     train_attacks=tuple(_canonical_train_attack(a) for a in split_list(train_attacks)),
                     baseline=METHOD_ALIASES.get(baseline.lower(), baseline.lower()), compile_pdf=compile_pdf)


def load_frame(results: str | Path, with_flags: bool = True, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """The rows of the store's finished runs (DONE), or of `run_ids` only (the usable ones:
    bench/store_integrity.py)."""
    store = Store(results)
    if run_ids is None:
        return pd.DataFrame(store.load_rows(with_flags=with_flags))
    return pd.DataFrame([row for r in sorted(run_ids) for row in store.iter_evals(r, with_flags)])


def select(df: pd.DataFrame, sel: Selection, results: str | Path = "the store") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(selected rows, baseline pool): every name checked against the store first (UsageError, exit 2)."""
    known_methods = [*METHODS, *METHOD_ALIASES]
    _check_names("dataset", sel.datasets, set(df.dataset), [], results)
    _check_names("model", sel.models, set(df.model), [], results)
    _check_names("method", sel.methods, set(df.method), known_methods, results)
    valid_combos = [a for a in sel.train_attacks if all(p in TRAIN_ATTACKS for p in a.split("+"))]
    _check_names("training attack", sel.train_attacks, set(df.train_attack), [*TRAIN_ATTACKS, *valid_combos],
                 results)
    if sel.baseline not in set(df.method) and sel.baseline not in known_methods:
        raise UsageError(f"Unknown baseline method '{sel.baseline}'.{suggest(sel.baseline, sorted(set(df.method)))}")
    external = df.train_attack == EXTERNAL  # one model each, shown whatever the checkpoint and architecture
    pool = df[(df.checkpoint == sel.checkpoint) | external]
    if sel.datasets:
        pool = pool[pool.dataset.isin(sel.datasets)]
    if sel.models:
        pool = pool[pool.model.isin(sel.models) | (pool.train_attack == EXTERNAL)]
    chosen = pool
    if sel.methods:
        chosen = chosen[chosen.method.isin(sel.methods)]
    if sel.train_attacks:
        chosen = chosen[chosen.train_attack.isin(sel.train_attacks)]
    if chosen.empty:
        raise UsageError(f"No finished runs match the selection ({sel.checkpoint} checkpoint) in {results}.")
    return chosen, pool[pool.method == sel.baseline]


def _variant_key(config: dict[str, Any], row: pd.Series) -> dict[str, Any]:
    """The run's training config minus seed, dataset and model, method parameters flattened."""
    train = config.get("train") or {"method": row.method, "train_attack": row.train_attack}
    key = {k: v for k, v in train.items() if k not in NOT_VARIANT_KEYS and k != "method_params"}
    key.update({f"p_{k}": v for k, v in (train.get("method_params") or {}).items()})
    return key


def _sort_key(v: Variant) -> tuple:
    methods, attacks = method_order(), train_attack_order()  # the catalog's; unknown names after the known
    m = methods.index(v.method) if v.method in methods else len(methods)
    first = v.train_attack.split("+")[0]
    t = attacks.index(first) if first in attacks else len(attacks)
    return m, v.method, t, v.train_attack.count("+"), v.train_attack, v.label


LABELLED_PARAMS = {"p_gd_attack"}  # shown by the row label itself ('LRAT (GD+CW)'), not as '[p_gd_attack=pgd]'


def build_variants(runs: pd.DataFrame, configs: dict[str, dict]) -> list[Variant]:
    """Group runs (one row per run) into variants; labels name what differs when one (method, train
    attack) has several configs, e.g. 'GAIRAT (PGD) [p_lam=0.0]'."""
    keys = {r.run_id: _variant_key(configs.get(r.run_id, {}), r) for r in runs.itertuples()}
    groups: dict[str, list] = {}
    for r in runs.itertuples():
        groups.setdefault(json.dumps(keys[r.run_id], sort_keys=True, default=str), []).append(r)
    by_row: dict[tuple[str, str], list[str]] = {}
    for k, members in groups.items():
        by_row.setdefault((members[0].method, members[0].train_attack), []).append(k)
    variants = []
    for (method, attack), group_keys in by_row.items():
        dicts = [json.loads(k) for k in group_keys]
        differing = sorted({f for d in dicts for f in d if len({json.dumps(x.get(f)) for x in dicts}) > 1
                            and f not in LABELLED_PARAMS})
        for k, d in zip(group_keys, dicts):
            members = sorted(groups[k], key=lambda r: (r.seed, r.run_id))
            extra = ", ".join(f"{f}={d.get(f)}" for f in differing)
            params = {f[2:]: v for f, v in d.items() if f.startswith("p_")}
            variants.append(Variant(label=row_label(method, attack, params) + (f" [{extra}]" if extra else ""),
                                    method=method, train_attack=attack,
                                    run_ids=tuple(r.run_id for r in members),
                                    seeds=tuple(int(r.seed) for r in members)))
    return sorted(variants, key=_sort_key)


def baseline_for(variant: Variant, baselines: list[Variant]) -> Variant | None:
    """[choice] The baseline row of `variant`: the baseline method with the same training attack when the
    store has it (the paper's like-for-like comparison), else the baseline trained with PGD (the paper's
    AT row), else none. A baseline variant is never compared with itself."""
    same = [b for b in baselines if b.train_attack == variant.train_attack]
    pgd = [b for b in baselines if b.train_attack == "pgd"]
    chosen = (same or pgd or [None])[0]
    return None if chosen is None or chosen.label == variant.label else chosen


def row_relations(rows: pd.DataFrame) -> dict[str, dict[str, str]]:
    """run_id -> {eval attack: relation}: the stored `attack_relation`, or for rows written before it existed
    the same rule applied to the row's own columns (bench/config/relations.py)."""
    out: dict[str, dict[str, str]] = {}
    for row in rows.to_dict("records"):
        stored = row.get("attack_relation")
        relation = stored if isinstance(stored, str) else row_relation(row)
        out.setdefault(row["run_id"], {})[row["eval_attack"]] = relation
    return out


SETTING_COLUMNS = ["dataset", "model", "threat_model", "eval_eps", "n_eval"]


def setting_slug(dataset: str, model: str, threat: str, eps: float, n: int, sha: str = "",
                 taken: Iterable[str] = ()) -> str:
    """The suffix of a setting's file names and LaTeX labels when a report has several settings, e.g.
    '-synthetic-small-cnn-linf-eps0p1-n64': the whole setting, and no dot (a dot would be read as the start of
    a file extension, by Path.suffix and by LaTeX's \\includegraphics, and cut the rest of the setting off).
    A slug already `taken` (budgets equal to 4 significant digits) gets a counter."""
    slug = (f"-{dataset}-{model}-{threat}-eps{eps:.4g}-n{n}" + (f"-{sha[:8]}" if sha else "")).replace(".", "p")
    taken, base, k = set(taken), slug, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    return slug


def _setting_groups(chosen: pd.DataFrame, baseline_pool: pd.DataFrame, keys: list[str]) -> list[tuple]:
    """(setting key, its selected rows), sorted by key. The rows of a model evaluated from outside (train
    attack and model "external": bench.api.evaluate) join every setting of the selected trained runs that has
    its test points and budget, whatever their architecture, else every such setting of the baseline's runs;
    only when none has them do they make a setting of their own."""
    external = chosen.train_attack == EXTERNAL
    groups = dict(list(chosen[~external].groupby(keys, sort=True)))
    m = keys.index("model")
    hosts = [list(groups), [k for k, _ in baseline_pool[baseline_pool.train_attack != EXTERNAL].groupby(keys)]]
    for key, rows in chosen[external].groupby(keys, sort=True):
        def same(k: tuple) -> bool:
            return k[:m] + k[m + 1:] == key[:m] + key[m + 1:]
        for host in next(([k for k in ks if same(k)] for ks in hosts if any(map(same, ks))), [key]):
            groups[host] = pd.concat([groups[host], rows]) if host in groups else rows
    return sorted(groups.items(), key=lambda item: item[0])


def build_settings(store: Store, chosen: pd.DataFrame, baseline_pool: pd.DataFrame, sel: Selection) -> list[Setting]:
    settings = []
    filters = "; ".join(f"{kind} {', '.join(names)}" for kind, names in
                        (("selected methods", sel.methods), ("training attacks", sel.train_attacks)) if names)
    # Rows that record which test points they used (points_sha) pair only with rows on the very same points.
    keys = SETTING_COLUMNS + (["points_sha"] if "points_sha" in chosen else [])
    chosen, baseline_pool = (f.assign(points_sha=f["points_sha"].fillna("")) if "points_sha" in f else f
                             for f in (chosen, baseline_pool))
    groups = _setting_groups(chosen, baseline_pool, keys)
    slugs: set[str] = set()
    for key, rows in groups:
        (dataset, model, threat, eps, n), sha = key[:5], (key[5] if len(key) > 5 else "")
        base_rows = baseline_pool
        for col, val in zip(keys, key):
            base_rows = base_rows[base_rows[col] == val] if col in base_rows else base_rows.iloc[:0]
        run_rows = pd.concat([rows, base_rows]).drop_duplicates(["run_id", "eval_attack"])
        per_run = run_rows.drop_duplicates("run_id")
        configs = {r: store.config(r) for r in per_run.run_id}
        variants = build_variants(per_run, configs)
        selected_runs = set(rows.run_id)
        baselines = [v for v in variants if v.method == sel.baseline]
        needed = {b.label for v in variants if set(v.run_ids) <= selected_runs
                  for b in [baseline_for(v, baselines)] if b is not None}
        relations = row_relations(run_rows)
        kept = []
        for v in variants:
            in_selection = set(v.run_ids) <= selected_runs
            if in_selection or v.label in needed:
                kept.append(Variant(v.label, v.method, v.train_attack, v.run_ids, v.seeds,
                                    relations.get(v.run_ids[0], {}), reference=not in_selection))
        run_ids = {r for v in kept for r in v.run_ids}
        used = run_rows[run_rows.run_id.isin(run_ids)]
        flags = dict(zip(zip(used.run_id, used.eval_attack), flag_matrix(list(used["flags"]))))
        guards = {(r["run_id"], r["eval_attack"]): row_guards(r) for r in used.to_dict("records")}
        slug = "" if len(groups) == 1 else setting_slug(dataset, model, threat, eps, n, sha, taken=slugs)
        slugs.add(slug)
        histories = {r: store.history(r) for r in sorted(run_ids)}
        settings.append(Setting(dataset=dataset, model=model, threat_model=threat, eps=float(eps), n_points=int(n),
                                checkpoint=sel.checkpoint, baseline=sel.baseline, variants=tuple(kept),
                                attacks=tuple(attack_order(used.eval_attack.unique())), flags=flags,
                                histories=histories, slug=slug, filters=filters, guards=guards,
                                health={r: run_health(h, dataset, configs[r]["train"].get("epochs"))
                                        for r, h in histories.items()},
                                fingerprints={r: recorded_fingerprint(configs[r]) for r in histories}))
    return settings


# The identity of a stored result row in flags.csv.gz (docs/results.md): the run, the evaluation group (checkpoint
# and the checkpoint file, threat model, budget, test points, precision) and the attack; the points by their count,
# their protocol and the hash of the exact ordered points (`points_sha`). Empty where a row predates a column.
FLAG_ID_COLUMNS = ("run_id", "method", "train_attack", "dataset", "model", "seed", "checkpoint", "checkpoint_sha",
                   "eval_attack", "threat_model", "eval_eps", "eval_precision", "n_eval", "test_points", "points_sha")


def report_rows(chosen: pd.DataFrame, baseline_pool: pd.DataFrame, settings: Sequence[Setting]) -> pd.DataFrame:
    """The stored rows behind a report's tables: the selected rows, and the baseline's rows a setting shows as
    its reference (outside the selection, for the gaps), each at that setting only. Both frames are slices of
    one `load_frame`, so a row in both is kept once."""
    parts = [chosen]
    for s in settings:
        refs = {r for v in s.variants if v.reference for r in v.run_ids}
        if refs:
            b = baseline_pool
            parts.append(b[b.run_id.isin(refs) & (b.dataset == s.dataset) & (b.model == s.model)
                           & (b.threat_model == s.threat_model) & (b.eval_eps == s.eps) & (b.n_eval == s.n_points)])
    rows = pd.concat(parts)
    return rows[~rows.index.duplicated()]
