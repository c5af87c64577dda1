"""Report sections as plugins: an evaluator without a section gets the generic table of its
reduce metrics, a plugin file passed with `ddbench report --include` registers its own, and
`ddbench report` imports no torch: the methods' paper data come from the run's record."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ddbench.methods import METHODS
from ddbench.plan import method_facts
from ddbench.protocols import METHOD_FACTS_FILE
from ddbench.report import write_report
from ddbench.report.sections import SECTIONS
from ddbench.schema import to_json, write_rows
from ddbench.storage import Store
from tests.conftest import REPO, run_cli
from tests.test_ddranking import result_rows
from tests.test_schema_plan import row

PARAMS = to_json({"rounds": 3})  # the made-up evaluator's eval params


def my_eval_rows() -> list[dict]:
    """Rows of an evaluator ddbench has no section for: a cell row and two distill seeds'
    reduce rows (no arch, no eval seed) of two metrics."""
    rows = [row(evaluator="my_eval", eval_params=PARAMS, metric="loss", value=9.0)]
    for seed, (score, seconds) in enumerate(((0.25, 10.0), (0.35, 30.0))):
        for metric, value in (("score", score), ("seconds", seconds)):
            rows.append(
                row(
                    evaluator="my_eval",
                    eval_params=PARAMS,
                    method="dm",
                    method_label="dm",
                    distill_seed=seed,
                    arch=None,
                    eval_seed=None,
                    metric=metric,
                    value=value,
                )
            )
    return rows


def write_run(root: Path) -> Path:
    """A run of `cross_arch` rows (DD-Ranking's fixture, ConvNet) and `my_eval` rows, with the
    record of its methods' paper data that the driver writes (`METHOD_FACTS_FILE`)."""
    run = root / "run"
    store = Store(run)
    cells = result_rows()
    write_rows(store, "results/cross_arch/rows.parquet", cells)
    write_rows(store, "results/my_eval/rows.parquet", my_eval_rows())
    facts = method_facts([r["method"] for r in cells if r["method"] in METHODS])
    store.write_text(METHOD_FACTS_FILE, facts.to_json())
    return run


def test_an_evaluator_without_a_section_gets_its_reduce_metrics_tabled(tmp_path):
    assert "my_eval" not in SECTIONS
    text = write_report(Store(write_run(tmp_path)), tmp_path / "report").read_text()
    section = text.split("## my_eval\n")[1].split("\n## ")[0]
    assert "| method | ipc | score (test) | seconds (test) |" in section
    assert "| dm | 1 | 0.3 ± 0.071 (2) | 20 ± 14 (2) |" in section  # over the two distill seeds
    assert "loss" not in section  # a cell row, not a reduce row
    assert "## DD-Ranking scores" in text and "| dm | 70.0 ± 2.8 (2) |" in text


def test_report_include_registers_a_section_and_imports_no_torch(tmp_path):
    run = write_run(tmp_path)
    plugin = tmp_path / "my_eval_section.py"
    plugin.write_text(
        "from ddbench.report.sections import SECTIONS, ReportSection\n\n\n"
        "@SECTIONS.register\n"
        "class MyEvalSection(ReportSection):\n"
        '    """My evaluator: its row count."""\n\n'
        '    name = "my_eval"\n\n'
        "    def render(self, rows, out_dir):\n"
        '        return ["## Mine", "", f"{rows.height} rows of my_eval", ""]\n'
    )
    out = tmp_path / "reports"
    proc = run_cli("report", str(run), "--out", str(out), "--include", str(plugin))
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "run" / "README.md").read_text()
    assert "## Mine\n\n5 rows of my_eval" in text and "## my_eval" not in text

    # the same report in a fresh process: no torch, the run's record holds the paper data
    code = (
        "import sys\n"
        "from ddbench.cli import main\n"
        f"code = main(['report', {str(run)!r}, '--out', {str(tmp_path / 'again')!r}])\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["0", "False"]
