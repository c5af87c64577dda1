"""`ddbench report --format html`: the markdown-subset converter, and a whole report of a small
hand-made run (cross-arch rows, NAS rows, image grids, a failed cell) written as one
self-contained report.html, rendered in headless Chromium and checked on the screenshot."""

from __future__ import annotations

import base64
import io
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from ddbench.cli import main
from ddbench.report.accuracy import cross_arch_section
from ddbench.report.html import HTML_FILE, markdown_to_html
from ddbench.report.rows import summarise
from ddbench.schema import write_rows
from ddbench.storage import Store
from tests.test_storage import row  # a valid result row, any column overridden

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WINDOW = (1200, 6500)  # width, height of the screenshot; the whole test report fits in it
ARCHS = ("convnet", "lenet", "mlp")
TOP1 = {  # method -> ipc -> top1 on each of ARCHS; 40 % is the lowest cell, 95 % the highest
    "dc": {1: (0.80, 0.60, 0.75), 10: (0.90, 0.70, 0.85)},
    "dm": {1: (0.70, 0.40, 0.65), 10: (0.85, 0.55, 0.80)},
    "random_real": {1: (0.60, 0.50, 0.55), 10: (0.80, 0.60, 0.75)},
    "whole_dataset": {0: (0.93, 0.82, 0.95)},
}
GRID_COLOUR = (255, 0, 255)  # the test's distilled-image grids: magenta, in no plot or CSS
LINE_COLOUR = (31, 119, 180)  # matplotlib's first line colour (tab:blue): dc's accuracy line
TOLERANCE = 12  # a pixel matches a colour when every channel is within this


def job(method: str, ipc: int) -> dict[str, object]:
    """The columns of the rows of `method`'s distillate at `ipc`."""
    return dict(
        suite="htmlsuite", job_id=f"{method}{ipc}", method=method, method_label=method, ipc=ipc
    )


def small_run(root: Path) -> Store:
    """A run as `ddbench run` leaves it: cross_arch cells (2 eval seeds, ±1 point around TOP1),
    a failed cell whose error holds markup, nas720 cells and reduce rows for dc at IPC 1, and
    grid.png artifacts for dc and dm at IPC 1."""
    store = Store(root)
    for method, by_ipc in TOP1.items():
        for ipc, values in by_ipc.items():
            rows = [
                row(**job(method, ipc), arch=arch, eval_seed=seed, value=value)
                for arch, mean in zip(ARCHS, values, strict=True)
                for seed, value in ((0, mean - 0.01), (1, mean + 0.01))
            ]
            write_rows(store, f"results/cross_arch/{method}{ipc}/cells.parquet", rows)
    error = "Traceback\nValueError: <b>x</b> & y"
    failed = row(
        **job("dm", 10), arch="mlp", eval_seed=2, status="failed", value=math.nan, error=error
    )
    write_rows(store, "results/cross_arch/dm10/failed.parquet", [failed])
    nas = {**job("dc", 1), "evaluator": "nas720", "eval_params": '{"subset":4}', "split": "val"}
    cells = [
        row(**nas, arch=f"cand{i}", metric=metric, value=value)
        for i in range(4)
        for metric, value in (("proxy_top1", 0.3 + 0.1 * i), ("whole_top1", 0.5 + 0.08 * i))
    ]
    reduced = [
        row(**nas, arch=None, metric=metric, value=value)
        for metric, value in (("num_candidates", 4.0), ("spearman_rho", 1.0))
    ]
    write_rows(store, "results/nas720/dc1/cells.parquet", cells + reduced)
    for job_id in ("dc1", "dm1"):
        grid = io.BytesIO()
        Image.new("RGB", (240, 96), GRID_COLOUR).save(grid, format="PNG")
        store.write_bytes(f"artifacts/{job_id}/grid.png", grid.getvalue())
    return store


def test_markdown_subset_to_html(tmp_path) -> None:
    Image.new("RGB", (4, 4), GRID_COLOUR).save(tmp_path / "dot.png")
    markdown = "\n".join(
        [
            "# Report <1>",
            "",
            "Some *italic* and **bold** text with `code` & <script>alert(1)</script>",
            "on two lines.",
            "",
            "### IPC 1",
            "",
            "| method | a<b |",
            "|---|---|",
            "| *whole_dataset* (reference) | 9.0 ± 0.1 (2) |",
            "",
            "**dc** (job j1)\n\n![dot](dot.png)\n",
            "- dm ipc=1 mlp: ValueError: 3 * 4 < 5",
            "- dm ipc=2 mlp: boom",
        ]
    )
    html = markdown_to_html(markdown, tmp_path)
    dot = base64.b64encode((tmp_path / "dot.png").read_bytes()).decode()
    for part in (
        "<title>Report &lt;1&gt;</title>",
        "<h1>Report &lt;1&gt;</h1>",
        "<p>Some <em>italic</em> and <strong>bold</strong> text with <code>code</code> &amp; "
        "&lt;script&gt;alert(1)&lt;/script&gt;\non two lines.</p>",
        "<h3>IPC 1</h3>",
        "<thead>\n<tr>\n<th>method</th>\n<th>a&lt;b</th>\n</tr>\n</thead>",
        "<tr>\n<td><em>whole_dataset</em> (reference)</td>\n<td>9.0 ± 0.1 (2)</td>\n</tr>",
        "<p><strong>dc</strong> (job j1)</p>",
        f'<figure><img alt="dot" src="data:image/png;base64,{dot}"></figure>',
        "<ul>\n<li>dm ipc=1 mlp: ValueError: 3 * 4 &lt; 5</li>\n<li>dm ipc=2 mlp: boom</li>\n</ul>",
    ):
        assert part in html
    assert "<script" not in html and "|" not in html.split("<body>")[1]


def test_heatmap_needs_two_architectures(tmp_path) -> None:
    summary = summarise(pl.DataFrame([row(arch=arch) for arch in ARCHS]))
    assert cross_arch_section(summary.filter(pl.col("arch") == "mlp"), tmp_path) == []
    lines = cross_arch_section(summary, tmp_path)
    assert "![cross-architecture heatmap](cross_arch_heatmap.png)" in lines
    assert Image.open(tmp_path / "cross_arch_heatmap.png").size[0] > 300


@pytest.fixture(scope="session")
def browser() -> str:
    found = next(filter(None, map(shutil.which, BROWSERS)), None)
    if found is None:
        pytest.fail(
            f"no headless browser on PATH (looked for {', '.join(BROWSERS)}): run `make test`, "
            "which installs Chromium (apt-get install chromium)"
        )
    return found


def screenshot(browser: str, page: Path, png: Path) -> np.ndarray:
    """`page` rendered by headless Chromium at WINDOW, as an RGB array (height, width, 3)."""
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={png.parent / 'chromium-profile'}",  # never another run's profile
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot={png}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-3000:]
    return np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)


def count(pixels: np.ndarray, colour: tuple[int, int, int]) -> int:
    """How many pixels are within TOLERANCE of `colour` on every channel."""
    return int((np.abs(pixels - np.array(colour)).max(axis=2) <= TOLERANCE).sum())


@pytest.mark.browser
def test_html_report_is_self_contained_and_renders(tmp_path, browser, capsys) -> None:
    from matplotlib import colormaps

    run = small_run(tmp_path / "runs" / "htmlsuite")
    assert main(["report", run.uri, "--out", str(tmp_path / "reports"), "--format", "html"]) == 0
    out = tmp_path / "reports" / "htmlsuite"
    assert f"HTML report written to {out / HTML_FILE}" in capsys.readouterr().out
    markdown, html = (out / "README.md").read_text(), (out / HTML_FILE).read_text()

    # the markdown has every section, the HTML the same headings, tables and images
    assert "![cross-architecture heatmap](cross_arch_heatmap.png)" in markdown
    assert "![proxy vs whole-set accuracy](nas_nas720.png)" in markdown
    headings = re.findall(r"^(#+) (.*)$", markdown, flags=re.M)
    assert re.findall(r"<h(\d)>(.*?)</h\d>", html) == [
        (str(len(marks)), text) for marks, text in headings
    ]
    tables = len(re.findall(r"^\|---", markdown, flags=re.M))
    assert html.count("<table>") == tables == 6  # IPC 1, IPC 10, gain, cost, NAS, DD-Ranking
    assert "ValueError: &lt;b&gt;x&lt;/b&gt; &amp; y" in html  # the failed cell, escaped

    # self-contained: no link, script or remote URL; every PNG of the report embedded once
    assert not re.search(r"<link|<script|src=\"(?!data:)|https?://", html)
    sources = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)">', html)
    assert len(sources) == html.count("<img") == len(re.findall(r"^!\[", markdown, flags=re.M))
    pngs = sorted(out.rglob("*.png"))
    assert {p.name for p in pngs} >= {"accuracy_vs_ipc.png", "cross_arch_heatmap.png"}
    assert sorted(base64.b64decode(s) for s in sources) == sorted(p.read_bytes() for p in pngs)

    # rendered: text on a white page, and colours only the embedded images can draw
    shot = screenshot(browser, out / HTML_FILE, tmp_path / "report.png")
    control_page = tmp_path / "control.html"  # the same page, images removed
    control_page.write_text(re.sub(r"<img [^>]*>", "", html))
    control = screenshot(browser, control_page, tmp_path / "control.png")
    pages = {"report": shot, "control": control}
    viridis = colormaps["viridis"]
    colours = {
        "heatmap low (40 %)": tuple(round(255 * c) for c in viridis(0.0)[:3]),
        "heatmap high (95 %)": tuple(round(255 * c) for c in viridis(1.0)[:3]),
        "accuracy line": LINE_COLOUR,
        "image grid": GRID_COLOUR,
    }
    found = {name: count(shot, c) for name, c in colours.items()}
    missing = {name: count(control, c) for name, c in colours.items()}
    dark = {name: int((pixels.max(axis=2) < 100).sum()) for name, pixels in pages.items()}
    print(f"pixels: {found}; without images: {missing}; dark: {dark}")
    assert shot.shape == (WINDOW[1], WINDOW[0], 3)
    assert dark["control"] > 5000 and dark["report"] > dark["control"]  # text, then plots too
    assert found["heatmap low (40 %)"] > 1000 and found["heatmap high (95 %)"] > 1000
    assert found["accuracy line"] > 200
    assert found["image grid"] >= 2 * 200 * 80  # both 240 x 96 grids, nearly whole
    assert set(missing.values()) == {0}
    assert (shot[-40:] == 255).all()  # a white bottom margin: the page ended inside WINDOW
