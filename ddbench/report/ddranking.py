"""DD-Ranking scores (Li et al., 2025; docs/protocols.md#dd-ranking-scores) from `cross_arch`
rows, for the report.

The scores, on accuracies in [0, 1] (pure functions, no data):

- `hlr(real_hard, syn_hard)` = real − synthetic under hard labels (hard-label recovery, lower is
  better);
- `ior(syn_own, random_own)` = synthetic − random subset in the method's own setting
  (improvement over random);
- `lrs(hlr, ior)` = `normalise(w·IOR − (1−w)·HLR)`, w = 0.5 (label-robust score);
- `ars(syn_aug, random_aug, syn_plain, random_plain)` = `normalise(γ·(syn_aug − random_aug) +
  (1−γ)·(syn_plain − random_plain))`, γ = 0.5 (augmentation-robust score);
- `normalise(x)` = (e^x − e^−1) / (e − e^−1) maps [−1, 1] onto [0, 1]; a gap of 0 (a method no
  better than random_real, as good as the real data) scores 1 / (1 + e) ≈ 0.269.

Settings in ddbench terms. The `eval_params` of a `cross_arch` entry fix its *setting*, the pair
(`labels`, `augment`); a suite lists the evaluator once per setting (`suites/dd_ranking.yaml`):

- hard: `labels: hard`, `augment: true`, the DC protocol ddbench defaults to. HLR uses it (for
  the method and for `whole_dataset`, ipc 0), and it is ARS's "with augmentation".
- plain: `labels: hard`, `augment: false`: ARS's "without augmentation".
- own (IOR): DD-Ranking evaluates each method as its paper does, soft-label methods with their
  soft labels. In ddbench the label mode is an evaluator param, not a method's, so the own
  setting is run-wide: every non-hard label mode the run has with augmentation (`labels:
  teacher`, D4M's training-time matching, or `soft`: the artifact's own soft labels) gives each
  method one row; a run without one scores IOR in the hard setting. `random_real` is trained in
  the same setting.
- ARS is scored on hard labels, where DD-Ranking's code uses the method's label setting: hard
  labels keep the label effect out of the augmentation gap and follow the DC protocol.

Each setting keeps the eval params of its latest run (`ddbench.report.rows.latest_config` per
setting), so a run holding hard and teacher rows from two invocations
(`suites/acceptance/d4m_digits.yaml`) is scored from both. Scores are per (method, IPC, arch) for
every arch the rows have (the paper's surrogate is the `convnet` row), from the mean test top1 over
eval (and distill) seeds; the tables show each of those means with its std and n. HLR and IOR equal
the mean of per-seed differences; LRS and ARS are nonlinear, so they can differ slightly from
DD-Ranking's mean of per-round scores. A score whose inputs are missing is shown as "–" with a note
naming them; the section is left out when no score can be computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from ddbench.report.format import cell, markdown_table
from ddbench.report.rows import BASELINE, REFERENCE, latest_config, summarise

EVALUATOR = "cross_arch"
# w of LRS: IOR and HLR weigh the same (docs/protocols.md#dd-ranking-scores; DD-Ranking's default)
LRS_WEIGHT = 0.5
ARS_WEIGHT = 0.5  # γ of ARS: the gaps with and without augmentation weigh the same (ditto)
METHOD = "method"  # the role of the scored method's own rows (see `Input`)


def normalise(x: float) -> float:
    """(e^x − e^−1) / (e − e^−1): −1 → 0, 0 → 1 / (1 + e), 1 → 1."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def hlr(real_hard: float, syn_hard: float) -> float:
    """Hard-label recovery: how far hard-label training on the distillate is from the real data."""
    return real_hard - syn_hard


def ior(syn_own: float, random_own: float) -> float:
    """Improvement over random: the distillate against a random real subset, same setting."""
    return syn_own - random_own


def lrs(
    hlr_value: float,
    ior_value: float,
    w: float = LRS_WEIGHT,  # weight of IOR; HLR gets 1 − w
) -> float:
    """Label-robust score in [0, 1] for HLR and IOR in [−1, 1]."""
    return normalise(w * ior_value - (1 - w) * hlr_value)


def ars(
    syn_aug: float,
    random_aug: float,
    syn_plain: float,
    random_plain: float,
    gamma: float = ARS_WEIGHT,  # weight of the gap with augmentation; the gap without gets 1 − γ
) -> float:
    """Augmentation-robust score in [0, 1]: the gap over random with and without augmentation."""
    return normalise(gamma * (syn_aug - random_aug) + (1 - gamma) * (syn_plain - random_plain))


@dataclass(frozen=True)
class Setting:
    labels: str  # cross_arch `labels`: hard | soft | teacher
    augment: bool  # cross_arch `augment`: DSA at training time

    def describe(self) -> str:
        return f"{self.labels} labels, {'with' if self.augment else 'no'} augmentation"

    def short(self) -> str:
        return self.labels + ("" if self.augment else ", no aug")


HARD = Setting("hard", True)
PLAIN = Setting("hard", False)


@dataclass(frozen=True)
class Input:
    """One accuracy a score needs: the rows of `role` (the scored method, `REFERENCE` at ipc 0
    or `BASELINE` at the method's IPC) in `setting`, at the method's arch."""

    role: str
    setting: Setting

    def describe(self) -> str:
        role = "the method" if self.role == METHOD else self.role
        return f"{role} ({self.setting.describe()})"

    def title(self) -> str:
        return f"{self.role} ({self.setting.short()})"


@dataclass(frozen=True)
class Accuracy:
    mean: float
    std: float
    n: int


Key = tuple[str, int, str, Setting]  # (method label or role, ipc, arch, setting)


def accuracies(rows: pl.DataFrame) -> dict[Key, Accuracy]:
    """Test top1 of `cross_arch` per (method, ipc, arch, setting), each setting from its latest
    eval params; `whole_dataset` and `random_real` are keyed by their role, others by label."""
    rows = rows.filter(pl.col("evaluator") == EVALUATOR).with_columns(
        # absent keys take the cross_arch defaults (hard labels, augmentation on)
        pl.col("eval_params").str.json_path_match("$.labels").fill_null("hard").alias("labels"),
        (pl.col("eval_params").str.json_path_match("$.augment").fill_null("true") == "true").alias(
            "augment"
        ),
    )
    kept, _ = latest_config(rows, by=("labels", "augment"))
    found: dict[Key, Accuracy] = {}
    for (labels, augment), part in kept.group_by("labels", "augment"):
        setting = Setting(str(labels), bool(augment))
        for r in summarise(part).iter_rows(named=True):
            role = r["method"] if r["method"] in (REFERENCE, BASELINE) else r["method_label"]
            found[(role, r["ipc"], r["arch"], setting)] = Accuracy(r["mean"], r["std"], r["n"])
    return found


def own_settings(acc: dict[Key, Accuracy]) -> list[Setting]:
    """The settings IOR is scored in: each non-hard label mode with augmentation, else hard."""
    own = {key[3] for key in acc if key[3].labels != "hard" and key[3].augment}
    return sorted(own, key=lambda s: s.labels) or [HARD]


def _value(
    acc: dict[Key, Accuracy], inp: Input, label: str, ipc: int, arch: str
) -> Accuracy | None:
    if inp.role == METHOD:
        return acc.get((label, ipc, arch, inp.setting))
    return acc.get((inp.role, 0 if inp.role == REFERENCE else ipc, arch, inp.setting))


@dataclass
class Scored:
    """One row of a score table: a method at an IPC and arch, its inputs and scores."""

    label: str
    ipc: int
    arch: str
    inputs: list[Accuracy | None]  # in the order of the table's `Input`s
    scores: dict[str, float | None]  # score name -> value, None when an input is missing


def label_scores(acc: dict[Key, Accuracy], own: Setting) -> tuple[list[Input], list[Scored]]:
    """HLR, IOR and LRS of every scored method with IOR in setting `own`."""
    inputs = [Input(REFERENCE, HARD), Input(METHOD, HARD), Input(METHOD, own), Input(BASELINE, own)]
    rows = []
    for label, ipc, arch in _methods(acc):
        values = [_value(acc, inp, label, ipc, arch) for inp in inputs]
        real, syn_hard, syn_own, random_own = (v.mean if v else None for v in values)
        recovery = hlr(real, syn_hard) if real is not None and syn_hard is not None else None
        gain = ior(syn_own, random_own) if syn_own is not None and random_own is not None else None
        both = recovery is not None and gain is not None
        scores = {"HLR": recovery, "IOR": gain, "LRS": lrs(recovery, gain) if both else None}
        rows.append(Scored(label, ipc, arch, values, scores))
    return inputs, rows


def augmentation_scores(acc: dict[Key, Accuracy]) -> tuple[list[Input], list[Scored]]:
    """ARS of every scored method: hard labels with and without augmentation."""
    inputs = [
        Input(METHOD, HARD),
        Input(BASELINE, HARD),
        Input(METHOD, PLAIN),
        Input(BASELINE, PLAIN),
    ]
    rows = []
    for label, ipc, arch in _methods(acc):
        values = [_value(acc, inp, label, ipc, arch) for inp in inputs]
        means = [v.mean for v in values if v is not None]
        rows.append(
            Scored(label, ipc, arch, values, {"ARS": ars(*means) if len(means) == 4 else None})
        )
    return inputs, rows


def _methods(acc: dict[Key, Accuracy]) -> list[tuple[str, int, str]]:
    """(label, ipc, arch) of every scored method: all but the reference and the baseline."""
    return sorted(
        {(k[0], k[1], k[2]) for k in acc if k[0] not in (REFERENCE, BASELINE)},
        key=lambda k: (k[1], k[0], k[2]),
    )


def dd_ranking_section(rows: pl.DataFrame) -> list[str]:
    """The report's DD-Ranking section (module docstring) from all rows of a run, every eval
    config included; empty when no score can be computed."""
    acc = accuracies(rows)
    tables = [
        (f"Label robustness: HLR, IOR with {own.describe()}, LRS", *label_scores(acc, own))
        for own in own_settings(acc)
    ]
    tables.append(("Augmentation robustness: ARS", *augmentation_scores(acc)))
    if all(v is None for _, _, scored in tables for s in scored for v in s.scores.values()):
        return []
    lines = [
        "## DD-Ranking scores",
        "",
        "DD-Ranking's scores (docs/protocols.md#dd-ranking-scores, "
        "`ddbench/report/ddranking.py`) from `cross_arch` test top-1 "
        f"per setting (labels, augmentation): HLR = {REFERENCE} − method, both hard labels with "
        f"augmentation (lower is better); IOR = method − {BASELINE} in the method's own setting "
        "(the run's non-hard labels, else hard); "
        f"LRS = norm({LRS_WEIGHT:g}·IOR − {1 - LRS_WEIGHT:g}·HLR); "
        f"ARS = norm({ARS_WEIGHT:g}·gap over {BASELINE} with augmentation + "
        f"{1 - ARS_WEIGHT:g}·gap without), hard labels; norm(x) = (e^x − e^−1) / (e − e^−1), "
        "so LRS and ARS lie in [0, 1] and a method no better than "
        f"{BASELINE} scores {normalise(0.0):.3f} in ARS. Scores are fractions, computed from the "
        "mean accuracies shown, in %, as mean ± std (n models); – marks a score whose inputs are "
        "missing.",
        "",
    ]
    for title, inputs, scored in tables:
        lines += [f"### {title}", ""]
        if any(v is not None for s in scored for v in s.scores.values()):
            names = list(scored[0].scores)
            body = [
                [s.label, str(s.ipc), s.arch]
                + [cell(a.mean, a.std, a.n) if a else "–" for a in s.inputs]
                + [_score(name, s.scores[name]) for name in names]
                for s in scored
            ]
            header = ["method", "ipc", "arch"] + [i.title() for i in inputs] + names
            lines += markdown_table(header, body) + [""]
        else:
            lines += ["Not computed.", ""]
        notes = _missing(inputs, scored)
        lines += notes + ([""] if notes else [])
    return lines


def _score(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if name in ("HLR", "IOR") else f"{value:.3f}"


def _missing(
    inputs: list[Input],
    scored: list[Scored],
    shown: int = 3,  # rows named per note: keeps a note to a line or two
) -> list[str]:
    """A note per input some rows lack, naming up to `shown` of those rows."""
    notes = []
    for j, inp in enumerate(inputs):
        where = [f"{s.label} ipc {s.ipc} {s.arch}" for s in scored if s.inputs[j] is None]
        if where:
            more = f" and {len(where) - shown} more" if len(where) > shown else ""
            notes.append(
                f"- No rows of {inp.describe()} for {', '.join(where[:shown])}{more}: "
                "the scores that need them are left out."
            )
    return notes
