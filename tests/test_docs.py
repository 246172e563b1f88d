"""The documentation stays true: docs/cli.md is every command's --help, README.md stays short, every relative
link resolves, every citation of the method reference names docs/methods.md (and a section it has), and the
attack-relation table there is what bench/config/relations.py computes."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REGENERATE = ".venv/bin/python docs/gen_cli.py > docs/cli.md"
README_MAX_LINES = 200


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- docs/cli.md -------------------------------------------------------------------------------------------

def test_cli_md_is_every_commands_help():
    expected = load_generator().cli_markdown()
    actual = (DOCS / "cli.md").read_text() if (DOCS / "cli.md").exists() else ""
    assert actual == expected, (
        f"docs/cli.md is out of date with the commands' --help. Regenerate it from the repository root:\n"
        f"    {REGENERATE}\nand commit it.")


def test_cli_md_covers_every_command():
    from bench.cli import main

    gen = load_generator()
    paths = gen.command_paths(main)
    assert {p[0] for p in paths} == set(main.commands)
    text = (DOCS / "cli.md").read_text()
    for path in paths:
        assert f"$ bench {' '.join(path)} --help\n" in text, f"bench {' '.join(path)} is missing: {REGENERATE}"


# ---- README and links ---------------------------------------------------------------------------------------

def test_readme_is_short():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_readme_commands_are_the_makefiles():
    makefile = (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"the Makefile has no '{target}' target"
        assert f"make {target}" in readme


def user_docs() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def without_code(text: str) -> str:
    """Markdown outside fenced code blocks and inline code (links there are examples, not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (a '#' line inside a fenced code block is no heading)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def relative_links(path: Path) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_code(path.read_text()))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto:


@pytest.mark.parametrize("doc", user_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for target in relative_links(doc):
        file, _, fragment = target.partition("#")
        dest = doc if not file else (doc.parent / file).resolve()
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {dest.relative_to(ROOT)})")
    assert not broken, f"broken links in {doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_sees_links():
    links = relative_links(ROOT / "README.md")
    assert "docs/methods.md" in links or any(t.startswith("docs/methods.md#") for t in links)
    assert github_anchor("## 3. The burn-in rule".lstrip("# ")) == "3-the-burn-in-rule"


# ---- citations of the method reference ----------------------------------------------------------------------

CODE = ("bench", "methods", "tests", "experiments", "benchmarks")
CODE_SUFFIXES = (".py", ".toml", ".sh", ".cfg", ".txt")


def code_files() -> list[Path]:
    files = [ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder in CODE:
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.suffix in CODE_SUFFIXES and p.is_file()]
    return files


def test_code_cites_docs_methods_md():
    methods_md = (ROOT / "docs/methods.md").read_text()
    sections = set(re.findall(r"^## (\d+)\.", methods_md, re.M))
    bad = []
    for path in code_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in re.finditer(r"([\w./-]*)methods\.md", line):
                where = f"{path.relative_to(ROOT)}:{n}"
                if m.group(1) != "docs/":
                    bad.append(f"{where}: '{m.group(0)}' (write docs/methods.md)")
                    continue
                sec = re.match(r",? sec(?:tion|\.)? ?(\d+)", line[m.end():])
                if sec and sec.group(1) not in sections:
                    bad.append(f"{where}: docs/methods.md has no section {sec.group(1)}")
    assert not bad, "citations of the method reference:\n" + "\n".join(bad)


# ---- the attack-relation table -----------------------------------------------------------------------------

def relation_table() -> tuple[list[str], list[tuple[str, dict, list[str]]]]:
    """(eval attacks, [(training attack, method params, cells)]) of the table in docs/methods.md."""
    text = (ROOT / "docs/methods.md").read_text()
    section = text.split("## Attack relations (seen / related / unseen)", 1)[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "training attack"
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        first = re.findall(r"`([^`]+)`", cells[0])
        params = dict(p.split("=", 1) for p in first[1:])
        rows.append((first[0], params, [c.split(" (")[0] for c in cells[1:]]))
    return header[1:], rows


def test_relation_table_is_the_code():
    from bench.config.relations import ATTACK_RELATIONS, attack_relation
    from bench.config.catalog import EVAL_ATTACKS

    attacks, rows = relation_table()
    assert set(attacks) == set(EVAL_ATTACKS)
    assert set(ATTACK_RELATIONS) <= {train for train, params, _ in rows if not params and "+" not in train}
    for train, params, cells in rows:
        expected = [attack_relation(a, train, params) for a in attacks]
        assert cells == expected, f"docs/methods.md, row {train} {params}: {cells} != {expected}"


# ---- docs/results.md names every column ---------------------------------------------------------------------

def documented_names() -> set[str]:
    return set(re.findall(r"`([\w.<>-]+)`", (DOCS / "results.md").read_text()))


def test_results_md_documents_every_row_column(tmp_path, trained_state):
    """Every column of the rows `evaluate_run` writes (a suite with its `worst` row) is named in results.md;
    `p_<name>` and `guard_<name>` stand for their families, and every guard is named too."""
    import torch

    from bench.data import load_data
    from bench.evaluation.evaluate import evaluate_run
    from bench.evaluation.guards import ALL_GUARDS
    from support import CFG, N, suite, write_run

    store, run_id = write_run(tmp_path / "results", trained_state)
    test = load_data("synthetic", val_size=CFG.val_size, train_subset=CFG.train_subset, test_subset=N).test
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = evaluate_run(store, run_id, suite("natural", "fgsm"), test, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    names = documented_names()
    columns = {c for row in rows for c in row}
    missing = sorted(c for c in columns if c not in names
                     and not (c.startswith("p_") and "p_<name>" in names)
                     and not (c.startswith("guard_") and "guard_<name>" in names))
    missing += [f"guard {g}" for g in ALL_GUARDS if g not in names]
    assert not missing, f"docs/results.md does not describe these result-row columns: {', '.join(missing)}"


def test_results_md_documents_every_gap_table_column(tmp_path, paper_store):
    """Every column of gap_table.csv is in results.md, the four groups as `<group>_<key>`."""
    import pandas as pd

    from bench.report import write_report
    from bench.report.frame import Selection

    paper_store(tmp_path / "store", seeds=(0, 1), n=60)
    written = write_report(tmp_path / "store", tmp_path / "out", Selection(compile_pdf=False))
    columns = pd.read_csv(written["gap_table.csv"]).columns
    names = documented_names()
    groups = ("seen", "related", "unseen_mean", "unseen_worst")
    missing = []
    for c in columns:
        group = next((g for g in groups if c.startswith(g + "_") and not c.endswith("_attacks")), None)
        key = f"<group>_{c[len(group) + 1:]}" if group else c
        if key not in names:
            missing.append(c)
    missing += [g for g in groups if g not in names]
    assert not missing, f"docs/results.md does not describe these gap_table.csv columns: {', '.join(missing)}"
