"""Evaluation protocols as data: their names, their config hashes and the papers' own numbers.

An evaluation protocol is what a student trains on and how (label mode, generator sampling,
augmentation, training recipe), i.e. a set of evaluator params. Every result row names the one
it was measured under (docs/results.md#columns):

- `protocol`: `shared` (an evaluator entry's params as the suite writes them, the same for every
  method: by default the DC recipe with hard labels and fixed sampling) or `paper:<method>` (the
  entry's params with the method's `Method.paper_protocol` over them: DiM's fresh sampling,
  D2M's time-matched budget, D4M's teacher labels);
- `eval_config`: `eval_config(...)`, a short content hash of the evaluator, its version and its
  params, so two rows with the same hash were measured the same way.

`cross_arch`'s `protocol: shared | paper | both` chooses which ones a job is evaluated under
(`Evaluator.protocols`); a method whose paper protocol is the shared one is never evaluated twice.
`Published` holds a number a method's paper reports (`Method.published`), for the report's
"paper" column beside ddbench's own.

Extending: a method declares its paper protocol as `paper_protocol = {param: value}` (params of
`cross_arch`, the fields `PROTOCOL_PARAMS` lists first) and its paper's numbers as `published`;
an evaluator that can evaluate under several protocols overrides `Evaluator.protocols`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ddbench.schema import to_json
from ddbench.seeding import content_hash

SHARED = "shared"  # the protocol column of rows measured with an entry's params as written
PAPER_PREFIX = "paper:"  # + method name: the method's own paper protocol
# the eval params that make a protocol, shown beside every number (reports, leaderboard)
PROTOCOL_PARAMS = ("labels", "sampling", "augment", "epochs", "optimizer")
# the teacher of `labels: teacher` (D4M's soft labels), for cross_arch and Tune's selection alike:
TEACHER_ARCH = "convnet"  # D4M: ConvNet-W128 on CIFAR (ResNet-18 on ImageNet)
# how the teacher trains (`ddbench.teacher.teacher_recipe`): the shared DC recipe (SGD with
# momentum 0.9, step schedule, weight decay 5e-4) at a larger step on smaller batches, for few
# whole-split epochs. A confident teacher matters (soft labels near uniform teach little); chosen
# on digits val against the DC recipe's own lr 0.01 / batch 256 for 300 epochs, which is as good
# and 7x slower (benchmarks/soft_labels.py --teacher-*, figures in benchmarks/RESULTS.md).
# Larger datasets may want more epochs: `teacher_epochs` in a suite
TEACHER_EPOCHS = 40  # whole-split epochs (digits: 40 x 21 steps of 64 images)
TEACHER_LR = 0.05  # SGD learning rate (5x the DC recipe's: few epochs)
TEACHER_BATCH_SIZE = 64  # images per step (DC: 256; 4x the steps per epoch)
# the teacher settings, as the params of a teacher-label evaluation name them (`cross_arch`,
# Tune's selection); a Tune block names each `eval_<setting>` (`ddbench.spec.TuneSpec`). Equal
# settings (and student augmentation) mean one cached teacher (`ddbench.teacher.labels_for`)
TEACHER_SETTINGS = (
    "temperature",
    "teacher_arch",
    "teacher_epochs",
    "teacher_lr",
    "teacher_batch_size",
)
# KD temperature T: the val winner among 1, 2, 4 and 20 on digits (random real images, IPC 10;
# benchmarks/soft_labels.py, figures in benchmarks/RESULTS.md). D4M's scripts use 20, made for
# 1,000 ImageNet classes: a 10-class teacher's targets are near uniform at 20
TEACHER_TEMPERATURE = 1.0
# the student recipe of D4M's soft-label evaluation (from SRe2L's training scripts, which D4M's
# build on), `ddbench.fit.Recipe` fields over the shared DC recipe: AdamW at lr 1e-3 with
# decoupled weight decay 0.01 and a cosine schedule. Under the DC recipe (SGD, lr 0.01) teacher
# labels trail hard labels on digits at every T; under this one they beat them (RESULTS.md)
SOFT_LABEL_RECIPE = {"optimizer": "adamw", "schedule": "cosine", "lr": 1e-3, "weight_decay": 0.01}
# below this `teacher_certainty` (0 = uniform targets, 1 = one-hot; `teacher_certainty`) a
# cell warns and the report flags the teacher's targets as near uniform: at 0.1 a 10-class
# teacher's largest probability averages under 0.19
NEAR_UNIFORM_CERTAINTY = 0.1


def teacher_certainty(confidence: float, num_classes: int) -> float:
    """How far a teacher's mean largest probability `confidence` is from uniform targets
    (1 / K) towards one-hot ones (1): 0 = uniform, 1 = one-hot, whatever K is."""
    chance = 1.0 / num_classes
    return (confidence - chance) / (1.0 - chance)


EVAL_CONFIG_HEX = 8  # hex digits of `eval_config`: 4 billion configs, short in MLflow names


def paper_name(method: str) -> str:
    """The protocol name of `method`'s paper protocol (`paper:dim`)."""
    return PAPER_PREFIX + method


def eval_config(evaluator: str, version: int, eval_params: dict[str, Any] | str) -> str:
    """Short content hash of what an evaluator measured with: name, version and params (a dict
    or its canonical JSON, the `eval_params` column)."""
    params = eval_params if isinstance(eval_params, str) else to_json(eval_params)
    return content_hash(f"{evaluator}\x1f{version}\x1f{params}", EVAL_CONFIG_HEX)


@dataclass(frozen=True)
class Published:
    """A test top-1 a paper reports for a method (ConvNet, the paper's own evaluation protocol,
    i.e. the method's `paper_protocol`), in percent as printed, with the table it comes from."""

    dataset: str  # ddbench's dataset name (`cifar10`, `mnist`, ...)
    ipc: int  # images per class (0: the whole train split)
    top1: float  # percent, as the table prints it
    std: float | None  # percent; None where the table gives none
    source: str  # paper and table, e.g. "DataDAM (ICCV 2023), Table 1"


def published_table(
    source: str,
    dataset: str,
    values: dict[int, tuple[float, float | None]],  # ipc -> (top1 %, std %)
) -> tuple[Published, ...]:
    """The `Published` entries of one row of a paper's table (one dataset, several IPCs)."""
    return tuple(
        Published(dataset, ipc, top1, std, source) for ipc, (top1, std) in sorted(values.items())
    )


DATADAM_TABLE_1 = "DataDAM (ICCV 2023), Table 1"  # ConvNet, DC recipe; baselines as it quotes them
DIM_TABLE_2 = "DiM (arXiv 2303.04707), Table 2"  # ConvNet, images generated per epoch (INPC)


# a run's record of its methods' paper protocols and published numbers (`MethodFacts`), written
# by the driver beside `results/`, so a report needs neither the method plugins nor torch
METHOD_FACTS_FILE = "methods.json"


@dataclass
class MethodFacts:
    """What the report knows of each method besides its rows: `Method.paper_protocol` and
    `Method.published`, and the defaults of `cross_arch`'s protocol params (what a paper
    protocol changes). Built from the registries by `ddbench.plan.method_facts`."""

    paper_protocol: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> params
    published: dict[str, tuple[Published, ...]] = field(default_factory=dict)  # method -> numbers
    shared_defaults: dict[str, Any] = field(default_factory=dict)  # PROTOCOL_PARAMS -> default

    def merged(self, other: MethodFacts) -> MethodFacts:
        """These facts with `other`'s added (`other` wins for a method both know)."""
        return MethodFacts(
            {**self.paper_protocol, **other.paper_protocol},
            {**self.published, **other.published},
            {**self.shared_defaults, **other.shared_defaults},
        )

    def to_json(self) -> str:
        published = {m: [asdict(p) for p in ps] for m, ps in self.published.items()}
        return to_json(
            {
                "paper_protocol": self.paper_protocol,
                "published": published,
                "shared_defaults": self.shared_defaults,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> MethodFacts:
        raw = json.loads(text)
        published = {m: tuple(Published(**p) for p in ps) for m, ps in raw["published"].items()}
        return cls(raw["paper_protocol"], published, raw["shared_defaults"])
