"""The HTML report in a real browser (headless Chromium, installed by .ci/run from Debian packages): it loads
without a console message, every figure decodes, and the rendered page is not blank."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium on PATH (.ci/run installs it with apt)")

# Appended to a copy of the page: reports how many images there are and how many failed to decode.
PROBE = """<script>window.addEventListener('load', () => { const imgs = [...document.images];
console.log('nnic-probe images=' + imgs.length + ' broken=' + imgs.filter(i => !i.complete || i.naturalWidth === 0).length);
});</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    return re.findall(r":CONSOLE:?\(?\d*\)?\] (.*)", stderr)


def load(page: Path) -> tuple[list[str], str]:
    probed = page.with_name("probed-" + page.name)
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    run = chromium("--dump-dom", probed.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    return console_messages(run.stderr), run.stdout


@needs_chromium
def test_the_console_check_catches_a_broken_page(tmp_path):
    """The check below is not vacuous: a script error and an undecodable image are both seen."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><img src='data:image/png;base64,AAAA'><script>nosuch()</script></body></html>")
    messages, _ = load(page)
    assert any("nosuch is not defined" in m for m in messages)
    assert any("nnic-probe images=1 broken=1" in m for m in messages)


@needs_chromium
def test_the_report_loads_cleanly_and_its_plots_are_visible(report, tmp_path):
    report.save(tmp_path)
    page = tmp_path / "report.html"
    messages, dom = load(page)
    assert [m for m in messages if "nnic-probe" not in m] == []  # no error, no warning, no log
    assert any("nnic-probe images=3 broken=0" in m for m in messages), messages
    assert "nnic report: small-cnn" in dom

    shot = tmp_path / "shot.png"
    run = chromium(f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.std() > 0.05  # not a blank page
    non_white = (pixels < 0.95).any(axis=-1)
    assert non_white.mean() > 0.02  # tables and plots cover a visible part of it
    colored = (np.abs(pixels[..., 0] - pixels[..., 2]) > 0.2)  # the plots' blue/orange bars, not grey text
    assert colored.sum() > 1000


def test_ci_installs_chromium_as_the_readme_says():
    root = Path(__file__).resolve().parents[2]
    ci = [line for line in (root / ".ci/run").read_text().splitlines() if "chromium" in line and "apt-get" in line]
    quick_start = (root / "README.md").read_text().split("## Quick start", 1)[1].split("## ", 1)[0]
    readme = [line for line in quick_start.splitlines() if "chromium" in line and "apt-get" in line]
    assert len(ci) == 1 and readme == ci
    assert ci[0].startswith("command -v chromium >/dev/null ||")  # installs only when missing
