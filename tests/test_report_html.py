"""report.html: written by every `bench report`, self-contained (figures inline, no network, no script), and,
opened in headless Chromium (Debian's `chromium`, installed by .ci/run), it shows the Answer and every table."""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory, paper_store) -> Path:
    """`bench report` on a two-seed paper store: AT, GAIRAT and LRAT, every table and figure."""
    root = tmp_path_factory.mktemp("store")
    paper_store(root, seeds=(0, 1), n=60)
    out = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(main, ["report", "--results", str(root), "--out", str(out), "--no-pdf"])
    assert result.exit_code == 0, result.output
    return out


class _Text(HTMLParser):
    """The page's text and its tags, as a browser's DOM holds them."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Text:
    parser = _Text()
    parser.feed(page)
    return parser


def _plain(md: str) -> str:
    """A Markdown line as the page shows it: no bold or code marks, whitespace collapsed."""
    return re.sub(r"\s+", " ", md.replace("**", "").replace("`", "")).strip()


def _answer_lines(summary: str) -> list[str]:
    start = summary.index("## Answer")
    section = summary[start:summary.index("\n## ", start + 3)]
    return [_plain(line[2:]) for line in section.splitlines() if line.startswith("- ")]


def _markdown_tables(summary: str) -> int:
    return sum(1 for line in summary.splitlines() if re.fullmatch(r"\|(:?-+:?\|)+", line))


def test_report_html_is_one_self_contained_page(report):
    page = (report / "report.html").read_text()
    parsed = _parse(page)
    sources = [attrs.get("src", "") for tag, attrs in parsed.tags if tag == "img"]
    figures = sorted(p.name for p in report.glob("fig_*.png"))
    assert len(sources) == len(figures) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not [t for t, _ in parsed.tags if t in ("script", "link", "iframe")]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched
    summary = (report / "summary.md").read_text()
    text = _plain(" ".join(parsed.text))
    for line in _answer_lines(summary):
        assert line in text, line  # the Answer in summary.md's own sentences
    assert sum(t == "table" for t, _ in parsed.tags) == _markdown_tables(summary) == 3  # main, gap, per attack


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs Debian's `chromium`)")
def test_report_html_renders_in_headless_chromium(report, tmp_path):
    """Chromium loads the page (file://, no network) and its rendered DOM shows the Answer and every table of
    summary.md; a screenshot of the page is painted."""
    url = (report / "report.html").as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path}"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "</html>" in dom.stdout, dom.stderr[-2000:]
    parsed = _parse(dom.stdout)
    summary = (report / "summary.md").read_text()
    assert sum(t == "table" for t, _ in parsed.tags) == _markdown_tables(summary) == 3
    text = _plain(" ".join(parsed.text))
    answer = _answer_lines(summary)
    assert answer and all(line in text for line in answer)
    for header in ("Method (train attack)", "Δ seen", "p seeds", "PGD-20"):
        assert header in text
    shot = tmp_path / "page.png"
    subprocess.run([*flags, "--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
