"""The layout: no import cycles among the modules of bench/ and methods/ (function-level imports included), the
config layer (bench/config/) self-contained, no function longer than a screen, and the light commands (`bench
--help`, `bench ls`, `bench status`, `bench run --dry-run`, `bench report`) never import torch."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (a package is its __init__.py)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of `name` that is one of our modules (None: outside the packages)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """Every module of ours that `module` imports, at module level, in a function or under TYPE_CHECKING:
    `import a.b` -> a.b; `from a import b` -> a.b when that is a module, else a. Relative imports resolved.
    The implicit import of a parent package (importing a.b runs a/__init__.py) is not an edge: every
    submodule would otherwise "import" its package."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_pkg else module.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        out |= {m for t in targets if (m := _resolve(t, modules)) is not None and m != module}
    return out


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {m: imports_of(m, p, set(files)) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # the graph is small: recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, set(comp)) for comp in components]


def _one_cycle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component (BFS)."""
    start = min(comp)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def test_the_cycle_finder_finds_a_cycle_and_only_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_from_imports_resolve_to_the_module_or_the_package():
    files = module_files()
    graph = {m: imports_of(m, p, set(files)) for m, p in files.items()}
    assert "bench.cli.common" in graph["bench.cli.run"]  # from bench.cli.common import ...
    assert "bench.cli.run" in graph["bench.cli"]  # from bench.cli.run import run
    assert "bench.execution.status" in graph["bench.execution.runner"]
    assert "bench.execution.executors" in graph["bench.cli.run"]  # imported inside the command
    assert "bench.cli" not in graph["bench.cli.run"]  # the parent package is not an edge


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (function-level imports included):\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_command_module_imports_the_group():
    graph = import_graph()
    commands = [m for m in graph if m.startswith("bench.cli.")]
    assert commands and not [m for m in commands if "bench.cli" in graph[m]]


def test_the_config_layer_imports_nothing_outside_it():
    """bench/config/ is torch-free and self-contained: every reader (the CLI's light commands, the report) can
    import it without pulling in the data, the models or the methods."""
    graph = import_graph()
    config = [m for m in graph if m == "bench.config" or m.startswith("bench.config.")]
    outside = {m: sorted(t for t in graph[m] if not (t == "bench.config" or t.startswith("bench.config.")))
               for m in config}
    assert config and not {m: t for m, t in outside.items() if t}, outside


MAX_FUNCTION_LINES = 60  # one screen, from `def` to the last line (decorators aside, docstring included)


def long_functions(path: Path, root: Path = ROOT, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """'file:line name (N lines)' for every function or method in `path` longer than `limit` lines."""
    tree = ast.parse(path.read_text(), str(path))
    return [f"{path.relative_to(root)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > limit]


def test_the_length_check_counts_from_def_to_the_last_line(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(59))  # def + 59 lines: 60, the most allowed
    (tmp_path / "m.py").write_text(f"@staticmethod\ndef ok():\n{body}\n\n\ndef long():\n{body}\n    return 1\n")
    assert long_functions(tmp_path / "m.py", tmp_path) == ["m.py:64 long (61 lines)"]


def test_no_function_is_longer_than_a_screen():
    found = [line for path in module_files().values() for line in long_functions(path)]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(found)


def test_the_run_commands_defaults_are_run_defaults():
    """`bench status --config` resolves a matrix file over RUN_DEFAULTS; `bench run` must use the same."""
    from bench.cli.common import RUN_DEFAULTS
    from bench.cli.run import run
    from bench.config.matrix_merge import defaults_of

    defaults = defaults_of(run)
    assert set(defaults) == set(RUN_DEFAULTS)
    assert {k: v for k, v in defaults.items() if k != "method_params"} == \
        {k: v for k, v in RUN_DEFAULTS.items() if k != "method_params"}


# ---- commands that must not import torch -------------------------------------------------------------------

BLOCK_TORCH = textwrap.dedent("""
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} imported by a command that must not need it")
            return None

    sys.meta_path.insert(0, NoTorch())
""")
NO_TORCH = BLOCK_TORCH + textwrap.dedent("""
    from bench.cli import main

    try:
        main.main(args=sys.argv[1:], prog_name="bench")
    finally:
        assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
""")


def test_the_torch_block_blocks_torch():
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import torch.nn"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "torch imported by a command that must not need it" in proc.stderr


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, add_run, random_flags) -> Path:
    """A finished AT run and a GAIRAT run on 40 points (no training: rows written as the evaluator would)."""
    import numpy as np

    from bench.store import Store

    root = tmp_path_factory.mktemp("store")
    store = Store(root)
    for method in ("at", "gairat"):
        add_run(store, method, "pgd", 0, random_flags(np.random.default_rng(len(method)), 40,
                                                      {"natural": 0.8, "pgd20": 0.5}))
    return root


@pytest.mark.parametrize("case", ["help", "run-help", "status", "status-config", "dry-run", "status-json", "dry-run-json",
                                  "report", "ls", "ls-method", "ls-json", "status-empty", "quiet-report"])
def test_light_commands_never_import_torch(case, tiny_store, tmp_path):
    (tmp_path / "empty").mkdir()
    args = {
        "help": ["--help"],
        "ls": ["ls"],  # from the catalog, which the registries and the plugins fill
        "ls-method": ["ls", "lrat"],
        "ls-json": ["ls", "--json"],
        "status-empty": ["status", "--results", str(tmp_path / "empty")],
        "quiet-report": ["-q", "report", "--results", str(tiny_store), "--out", str(tmp_path / "out"), "--no-pdf"],
        "run-help": ["run", "--help"],
        "status": ["status", "--results", str(tiny_store)],
        "status-config": ["status", "--results", str(tmp_path / "empty"), "--config", "experiments/smoke.toml"],
        "dry-run": ["run", "--dry-run", "--config", "experiments/smoke.toml", "--results", str(tmp_path / "r")],
        "status-json": ["status", "--results", str(tiny_store), "--json"],
        "dry-run-json": ["run", "--dry-run", "--json", "--config", "experiments/smoke.toml", "--results",
                         str(tmp_path / "r")],
        "report": ["report", "--results", str(tiny_store), "--out", str(tmp_path / "out"), "--no-pdf"],
    }[case]
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    if case == "status":
        assert "2 cells: 2 finished" in proc.stdout
    if case in ("status-config", "dry-run"):
        assert "pending" in proc.stdout
    if case in ("report", "quiet-report"):
        assert (tmp_path / "out" / "summary.md").exists()
    if case == "quiet-report":  # -q: nothing but warnings and errors, and there are none
        assert proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr
    if case == "ls-method":
        assert proc.stdout.startswith("lrat (LRAT): ") and "anchor_bn" in proc.stdout
    if case == "status-empty":
        assert proc.stdout.startswith("No runs in")
    if case.endswith("-json"):  # stdout is the document alone
        import json

        doc = json.loads(proc.stdout)
        if case == "ls-json":
            assert [m["name"] for m in doc["methods"]][:2] == ["at", "trades"]
        else:
            assert doc["totals"]["cells"] == (2 if case == "status-json" else 6)
