"""Statistics for `bench report`: mean and spread over seeds, bootstrap intervals over test points, and every
gap to a baseline through `bench.stats.paired_gap` (test points as the unit: valid when seeds share points).
numpy and scipy only (the report path never imports torch).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from bench.report.frame import Setting, Variant, attack_order
from bench.stats import bootstrap_ci, paired_gap, seed_gap

Aggregate = Literal["all", "mean"]  # over a set of attacks: per-example worst case, or share survived

NOT_AN_ATTACK = ("natural", "worst")  # columns that are neither seen, related nor unseen attacks


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) over seeds; the std is NaN for a single seed."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def pair_runs(method_seeds: Sequence[int], baseline_seeds: Sequence[int]) -> list[tuple[int, int]]:
    """Index pairs (method run, baseline run) for the paired test: equal seeds when the two share any,
    otherwise the k-th smallest seed of each (a [choice]; seeds are exchangeable)."""
    common = sorted(set(method_seeds) & set(baseline_seeds))
    if common:
        return [(list(method_seeds).index(s), list(baseline_seeds).index(s)) for s in common]
    m_order = sorted(range(len(method_seeds)), key=lambda i: method_seeds[i])
    b_order = sorted(range(len(baseline_seeds)), key=lambda i: baseline_seeds[i])
    return list(zip(m_order, b_order))


def significance(p: float) -> str:
    """Conventional marks: * p < 0.05, ** p < 0.01, *** p < 0.001."""
    if p != p:
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


# ---- table-level statistics over a Setting (bench/report/frame.py) ------------------------------------------

def run_matrix(setting: Setting, variant: Variant, attacks: Sequence[str],
               how: Aggregate = "all") -> tuple[list[int], np.ndarray]:
    """(seeds, per-run per-point values) of `variant` over `attacks`: 'all' = robust to every attack (the
    per-example worst case, AutoAttack's rule), 'mean' = share of the attacks it survives. Only runs that
    have every attack stored take part."""
    seeds, rows = [], []
    for seed, run in zip(variant.seeds, variant.run_ids):
        if not all((run, a) in setting.flags for a in attacks):
            continue
        m = np.stack([setting.flags[(run, a)] for a in attacks])
        rows.append(m.all(axis=0) if how == "all" else m.mean(axis=0))
        seeds.append(seed)
    return seeds, (np.stack(rows) if rows else np.zeros((0, setting.n_points)))


def worst_sets(setting: Setting) -> dict[str, frozenset[str] | None]:
    """Variant label -> the attacks its Worst (the stored per-example worst row) combines: every other attack
    stored for its runs on these points (natural included), the same for every seed; None when its seeds
    differ. Variants without a worst row are left out."""
    per_run: dict[str, set[str]] = {}
    for run, attack in setting.flags:
        per_run.setdefault(run, set()).add(attack)
    out: dict[str, frozenset[str] | None] = {}
    for v in setting.variants:
        sets = {frozenset(per_run[r] - {"worst"}) for r in v.run_ids if "worst" in per_run.get(r, ())}
        if sets:
            out[v.label] = sets.pop() if len(sets) == 1 else None
    return out


def worst_outliers(setting: Setting) -> tuple[frozenset[str] | None, dict[str, frozenset[str] | None]]:
    """(the attack set the Worst column compares, {variant label: its own set} of the rows whose Worst is over
    another set and is shown as --): the set most rows share, the larger on a tie. A Worst is a number only
    where it is the worst case over the same attacks as the rows it is compared with."""
    sets = worst_sets(setting)
    counts: dict[frozenset[str], int] = {}
    for attack_set in sets.values():
        if attack_set is not None:
            counts[attack_set] = counts.get(attack_set, 0) + 1
    reference = max(counts, key=lambda a: (counts[a], len(a))) if counts else None
    return reference, {label: a for label, a in sets.items() if a != reference}


def cell_stats(setting: Setting) -> pd.DataFrame:
    """One row per (variant, eval attack): accuracy % mean and std over seeds, the bootstrap 95% interval
    over test points (of the seed-averaged accuracy), seeds, points, seen, best-in-column,
    `guards_flagged`: the guards that flagged any of the cell's rows (any seed), comma-separated, "" if none,
    `health_flagged`: likewise the training-health flags of its runs (bench/health.py), and
    `code_fingerprints`: the recorded code fingerprints of its runs (bench/fingerprint.py), sorted."""
    out = []
    _, outliers = worst_outliers(setting)  # their Worst is over other attacks: no number to compare
    for v in setting.variants:
        for a in setting.attacks:
            seeds, m = run_matrix(setting, v, [a])
            if not seeds or (a == "worst" and v.label in outliers):
                continue
            mean, std = mean_std(m.mean(axis=1))
            lo, hi = bootstrap_ci(m.mean(axis=0))
            flagged = [g for r in v.run_ids if (r, a) in setting.flags for g in (setting.guards.get((r, a)) or {})]
            runs = [r for r in v.run_ids if (r, a) in setting.flags]
            health = [f for r in runs for f in setting.health.get(r, {})]
            fingerprints = sorted({fp for r in runs if (fp := setting.fingerprints.get(r))})
            out.append({"variant": v.label, "method": v.method, "train_attack": v.train_attack, "eval_attack": a,
                        "seen": a in v.seen, "relation": v.relation(a), "mean": 100 * mean, "std": 100 * std, "ci_low": 100 * lo,
                        "ci_high": 100 * hi, "n_seeds": len(seeds), "n_points": m.shape[1],
                        "reference": v.reference, "guards_flagged": ",".join(dict.fromkeys(flagged)),
                        "health_flagged": ",".join(dict.fromkeys(health)), "code_fingerprints": ",".join(fingerprints)})
    df = pd.DataFrame(out)
    if not df.empty:
        df["best"] = best_in_column(df)
    return df


def best_before_reweighting(setting: Setting) -> list[tuple[str, int]]:
    """(variant label, seed) of the runs whose best checkpoint was saved before their method's reweighting began
    (history entries: `best` marks each new best epoch, `reweighting` whether the epoch's loss was reweighted):
    such a checkpoint is plain AT trained for fewer epochs, not the method. Empty unless the setting reports
    best checkpoints."""
    if setting.checkpoint != "best":
        return []
    found = []
    for v in setting.variants:
        for seed, run in zip(v.seeds, v.run_ids):
            history = setting.histories.get(run) or []
            best = [e for e in history if e.get("best")]
            if best and any(e.get("reweighting") for e in history) and not best[-1].get("reweighting"):
                found.append((v.label, seed))
    return found


GUARD_COLUMNS = ["variant", "method", "train_attack", "seed", "run_id", "checkpoint", "eval_attack", "guard",
                 "reason"]


@dataclass(frozen=True)
class GuardSummary:
    """The guards over a setting's stored rows (the derived `worst` rows excluded: they only merge the flags
    of the rows they combine). `flagged`: one row per (result row, flagged guard), GUARD_COLUMNS;
    `n_checked`: rows that carry guard columns; `n_unchecked`: rows written before the guards existed."""

    flagged: pd.DataFrame
    n_checked: int
    n_unchecked: int


def guard_stats(setting: Setting) -> GuardSummary:
    out, checked, unchecked = [], 0, 0
    for v in setting.variants:
        for seed, run in zip(v.seeds, v.run_ids):
            for a in setting.attacks:
                if a == "worst" or (run, a) not in setting.flags:
                    continue
                guards = setting.guards.get((run, a))
                if guards is None:
                    unchecked += 1
                    continue
                checked += 1
                out += [{"variant": v.label, "method": v.method, "train_attack": v.train_attack, "seed": seed,
                         "run_id": run, "checkpoint": setting.checkpoint, "eval_attack": a, "guard": g,
                         "reason": reason} for g, reason in guards.items()]
    return GuardSummary(pd.DataFrame(out, columns=GUARD_COLUMNS), checked, unchecked)


def best_in_column(cells: pd.DataFrame) -> pd.Series:
    """Highest mean per eval attack, compared as displayed (2 decimals) so printed ties are all marked."""
    shown = cells["mean"].round(2)
    return shown == shown.groupby(cells["eval_attack"]).transform("max")


RANK_COLUMNS = ["variant", "method", "train_attack", "eval_attack", "relation", "accuracy", "rank", "n_seeds",
                "n_points"]


def attack_ranks(cells: pd.DataFrame) -> pd.DataFrame:
    """Which evaluation attack is strongest against each row (the LRAT paper's Fig. 2: the answer changes with
    the training method). Per variant, its evaluation attacks ranked by the accuracy (%) they leave, mean over
    seeds (`cells`: `cell_stats`, or any frame with `variant`, `eval_attack` and `mean`): rank 1 = the strongest
    attack (lowest accuracy), ties share the lower rank (pandas' method="min"), compared rounded to 1e-9 points
    so that equal shares summed in another order tie. `natural` and the derived `worst` row are no attack: not ranked.
    Tidy, one row per (variant, eval attack): variants in `cells`' order (the report's), attacks in the
    catalog's; `method`, `train_attack`, `relation`, `n_seeds`, `n_points` passed through when `cells` has them."""
    ranked = cells[~cells["eval_attack"].isin(NOT_AN_ATTACK) & cells["mean"].notna()]
    columns = [c for c in RANK_COLUMNS if c in ("variant", "eval_attack", "accuracy", "rank") or c in cells]
    if ranked.empty:
        return pd.DataFrame(columns=columns)
    out = ranked.assign(accuracy=ranked["mean"].astype(float))
    out["rank"] = out["accuracy"].round(9).groupby(out["variant"]).rank(method="min").astype(int)
    variants = {v: i for i, v in enumerate(dict.fromkeys(cells["variant"]))}
    attacks = {a: i for i, a in enumerate(attack_order(out["eval_attack"].unique()))}
    order = sorted(range(len(out)), key=lambda i: (variants[out["variant"].iat[i]], attacks[out["eval_attack"].iat[i]]))
    return out.iloc[order][columns].reset_index(drop=True)


GAP_KEYS = ("acc", "acc_std", "base", "gap", "gap_low", "gap_high", "gap_seed_sd", "b", "c", "p",
            "per_seed", "seed_low", "seed_high", "seed_p", "seeds_lower", "n_pairs")
MIN_VERDICT_SEEDS = 3  # fewer seed pairs: no verdict about the methods (one seed compares two trained models)


def verdict(g: dict, key: str) -> str:
    """The seed-level verdict of gap group `key` in a gap-table row: 'higher' or 'lower' when `seed_gap`'s interval
    excludes 0 (p < 0.05 at the default level), 'no clear difference' otherwise, and 'no verdict' with fewer
    than MIN_VERDICT_SEEDS seed pairs (training variance cannot be told from the gap)."""
    n, lo, hi = g.get(f"{key}_n_pairs", math.nan), g.get(f"{key}_seed_low", math.nan), g.get(f"{key}_seed_high", math.nan)
    if not (n == n) or n < MIN_VERDICT_SEEDS or lo != lo or hi != hi:
        return "no verdict"
    return "higher" if lo > 0 else "lower" if hi < 0 else "no clear difference"


def _compare(setting: Setting, v: Variant, base: Variant, attacks: list[str], how: Aggregate) -> dict[str, float]:
    """Accuracy of v and of the baseline over `attacks`, and `paired_gap` on their seed-paired runs: the gap,
    its bootstrap interval over test points, the sd of the per-seed gaps and the sign-flip p-value; b and c
    count the discordant (run, point) pairs of a binary outcome. Empty `attacks` gives NaNs."""
    nan = dict.fromkeys(GAP_KEYS, math.nan)
    if not attacks:
        return nan
    seeds, m = run_matrix(setting, v, attacks, how)
    base_seeds, bm = run_matrix(setting, base, attacks, how)
    if not seeds or not base_seeds:
        return nan
    pairs = pair_runs(seeds, base_seeds)
    method_rows, base_rows = m[[i for i, _ in pairs]], bm[[j for _, j in pairs]]
    g, s = paired_gap(method_rows, base_rows), seed_gap(method_rows, base_rows)
    acc, std = mean_std(m.mean(axis=1))
    binary = how == "all"
    return {"acc": 100 * acc, "acc_std": 100 * std, "base": 100 * bm.mean(), "gap": g.gap, "gap_low": g.low,
            "gap_high": g.high, "gap_seed_sd": g.seed_sd, "b": g.b if binary else math.nan,
            "c": g.c if binary else math.nan, "p": g.p, "per_seed": ";".join(f"{x:.2f}" for x in s.per_seed),
            "seed_low": s.low, "seed_high": s.high, "seed_p": s.p, "seeds_lower": s.seeds_lower,
            "n_pairs": s.n_seeds}


def common_attacks(setting: Setting, *variants: Variant) -> list[str]:
    """Eval attacks stored for every run of every given variant, in column order."""
    runs = [r for v in variants for r in v.run_ids]
    return [a for a in setting.attacks if all((r, a) in setting.flags for r in runs)]


def worst_difference(mine: frozenset[str] | None, base: frozenset[str] | None) -> str:
    """Why a Worst gap is no number: 'Worst over different attack sets: natural,pgd20 vs natural,aa,...'."""
    def text(a: frozenset[str] | None) -> str:
        return ",".join(attack_order(a)) if a is not None else "seeds differ"
    return f"Worst over different attack sets: {text(mine)} vs the baseline's {text(base)}"


GAP_GROUPS = (("seen", "seen", "all"), ("related", "related", "all"), ("unseen_mean", "unseen", "mean"),
              ("unseen_worst", "unseen", "all"))  # (column prefix, relation, aggregate)


def gap_stats(setting: Setting, baseline_of: Callable[[Variant], Variant | None]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(gap table, per-attack comparisons) of every variant against its baseline (`baseline_of(v)`).

    Gap table: seen, related and unseen attacks kept apart (bench/config/relations.py; unseen never includes related);
    seen and related scored per example as the worst case over their attacks, unseen both as the mean
    accuracy over its attacks and as the per-example worst case (natural and 'worst' are no attack). Every
    gap is `paired_gap` on seed-paired runs: points, %, bootstrap interval over test points, the sd of the
    per-seed gaps, and the sign-flip p-value. The per-attack Worst is compared only where both rows' Worst is
    over the same attacks (else NaN, and `note` says so)."""
    gaps, per_attack = [], []
    sets = worst_sets(setting)
    for v in setting.variants:
        base = baseline_of(v)
        if base is None:
            continue
        attacks = common_attacks(setting, v, base)
        by_relation = {r: [a for a in attacks if a not in NOT_AN_ATTACK and v.relation(a) == r]
                       for r in ("seen", "related", "unseen")}
        row = {"variant": v.label, "method": v.method, "train_attack": v.train_attack, "baseline": base.label,
               "seen_attacks": ",".join(by_relation["seen"]), "related_attacks": ",".join(by_relation["related"]),
               "unseen_attacks": ",".join(by_relation["unseen"]), "n_seeds": len(v.seeds),
               "n_baseline_seeds": len(base.seeds), "n_points": setting.n_points}
        for name, relation, how in GAP_GROUPS:
            row.update({f"{name}_{k}": x for k, x in _compare(setting, v, base, by_relation[relation], how).items()})
        gaps.append(row)
        for a in attacks:
            like = a != "worst" or (sets.get(v.label) is not None and sets.get(v.label) == sets.get(base.label))
            r = _compare(setting, v, base, [a], "all") if like else dict.fromkeys(GAP_KEYS, math.nan)
            per_attack.append({"variant": v.label, "baseline": base.label, "eval_attack": a,
                               "seen": a in v.seen, "relation": v.relation(a), **r, "n_seeds": len(v.seeds),
                               "n_points": setting.n_points,
                               "note": "" if like else worst_difference(sets.get(v.label), sets.get(base.label))})
    return pd.DataFrame(gaps), pd.DataFrame(per_attack)
