"""The one build step pyproject.toml cannot declare: `lrat_bench_autoattack.pth` into site-packages, for a normal
install (the wheel's root is site-packages) and an editable one (`pip install -e .`: the editable wheel's root).
Its line imports lrat_bench_autoattack.py, which lets `import robustbench` find an `autoattack` when no real
one is installed (README, "Dependencies"). Everything else is in pyproject.toml."""
from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "lrat_bench_autoattack.pth"
PTH_LINE = "import lrat_bench_autoattack\n"  # sorts after __editable__.*.pth, whose finder it may need


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        Path(self.build_lib, PTH_NAME).write_text(PTH_LINE)


class EditableWheelWithPth(editable_wheel):
    # setuptools (>= 64, < 81 here) assembles an editable wheel from this folder; its own files are a .pth and
    # a finder, so ours goes beside them.
    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        outputs = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        Path(unpacked_wheel, PTH_NAME).write_text(PTH_LINE)
        return outputs


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
