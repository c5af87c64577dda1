"""One new file per plugin: an architecture, a dataset and an evaluator with its own report
section, each written as one file of a plugin folder (`--include`), are listed by `ddbench ls`,
run in a suite on the local runner and shown in the report, with no edit to ddbench."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

ARCH = '''"""`tiny_linear`: one linear layer on the flattened image (a test plugin)."""

from torch import nn

from ddbench.archs import ARCHS, Arch, FeatureModel


class TinyLinearNet(FeatureModel):
    def __init__(self, channels, num_classes, image_size):
        super().__init__()
        self.feature_dim = channels * image_size * image_size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _trunk(self, x, collect):
        return [], x.flatten(1)


@ARCHS.register
class TinyLinear(Arch):
    """One linear layer on the flattened image."""

    name = "tiny_linear"

    def build(self, channels, num_classes, image_size, **overrides):
        return TinyLinearNet(channels, num_classes, image_size)
'''

DATASET = '''"""`blobs`: three classes of 8x8 single-channel images, each a noisy constant level."""

import torch

from ddbench.data import DATASETS, Dataset, DatasetParams, RawSplits


class BlobsParams(DatasetParams):
    per_class: int = 30  # train images per class: enough for a val split and IPC 2


@DATASETS.register
class Blobs(Dataset):
    """Three classes of 8x8 images at brightness 0.2, 0.5 and 0.8 plus noise (made here)."""

    name = "blobs"
    Params = BlobsParams

    def load(self, params):
        gen = torch.Generator().manual_seed(7)

        def split(n):
            y = torch.arange(3).repeat_interleave(n)
            x = 0.2 + 0.3 * y.view(-1, 1, 1, 1) + 0.05 * torch.randn(len(y), 1, 8, 8, generator=gen)
            return x.clamp(0, 1), y

        train_x, train_y = split(params.per_class)
        test_x, test_y = split(10)
        return RawSplits(train_x, train_y, test_x, test_y, ["dark", "mid", "light"])
'''

EVALUATOR = '''"""`class_means`: nearest-class-mean accuracy, and its own report section."""

import torch

from ddbench.evals import EvalParams, Evaluator, register_eval
from ddbench.report.sections import SECTIONS, ReportSection


class ClassMeansParams(EvalParams):
    split: str = "test"  # the split scored: the protocol's held-out one


@register_eval
class ClassMeans(Evaluator):
    """Classify each image of a split by the nearest class mean of the distillate."""

    name = "class_means"
    Params = ClassMeansParams

    def cells(self, device, params):
        return [{"eval_seed": 0}]

    def run(self, cell, job, params, ctx):
        images, labels = job.artifact.materialise(job.ipc, job.real, ctx.rng("class_means"))
        means = torch.stack([images[labels == c].mean(0).flatten() for c in job.real.classes])
        x = getattr(job.real, f"{params.split}_x").flatten(1)
        y = getattr(job.real, f"{params.split}_y")
        top1 = (torch.cdist(x, means).argmin(1) == y).float().mean().item() * 100
        return [{"eval_seed": 0, "split": params.split, "metric": "ncm_top1", "value": top1,
                 "higher_is_better": True}]


@SECTIONS.register
class ClassMeansSection(ReportSection):
    """The nearest-class-mean table."""

    name = "class_means"

    def render(self, rows, out_dir):
        lines = ["## Nearest class mean", ""]
        for r in rows.sort("method_label").iter_rows(named=True):
            lines.append(f"- {r['method_label']} ipc {r['ipc']}: {r['value']:.1f} %")
        return lines + [""]
'''

SUITE = """name: one_file_each
dataset: {name: blobs}
ipc: [2]
methods: [{name: random_real}]
evals:
  - {name: cross_arch, params: {archs: [tiny_linear], seeds: 1, epochs: 3}}
  - {name: class_means}
"""


@pytest.mark.slow
def test_an_arch_a_dataset_and_an_evaluator_with_a_section_are_one_file_each(tmp_path: Path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name, source in (("tiny_arch", ARCH), ("blobs", DATASET), ("class_means", EVALUATOR)):
        (folder / f"{name}.py").write_text(source)
    include = ("--include", str(folder))
    for kind, name in (("archs", "tiny_linear"), ("datasets", "blobs"), ("evals", "class_means")):
        listed = run_cli("ls", kind, "-v", *include)
        assert listed.returncode == 0, listed.stderr[-2000:]
        assert f"\n{name}" in "\n" + listed.stdout

    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "runs"
    ran = run_cli("run", str(suite), "--local", "--out", str(out), *include)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]

    reports = tmp_path / "reports"
    reported = run_cli("report", str(out / "one_file_each"), "--out", str(reports), *include)
    assert reported.returncode == 0, reported.stderr[-2000:]
    text = (reports / "one_file_each" / "README.md").read_text()
    assert "tiny_linear" in text  # the architecture's column of the cross_arch tables
    section = text.split("## Nearest class mean\n")[1]
    assert "- random_real ipc 2: " in section  # the evaluator's own section, its rows
    assert "Dataset: blobs." in text
