"""Ray Tune's selection rule as plain data, without torch: the evaluator name of selection rows
and the choice among a tuned job's trials.

`SELECTION` is the `evaluator` column of the rows that score trials (`results/tune/<trial job
id>/`, split `val`); `choose` picks the trial whose distillate the tuned job publishes. The
runner applies the rule (`ddbench.runner.tune`), the report shows it (`ddbench.report.tune`) and
MLflow finds the selection files by the name (`ddbench.tracking`); the evaluator itself, which
trains students, is `ddbench.tuning.TuneSelection`. Another rule (a min-over-seeds score, a
tie-break) changes `choose` here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

SELECTION = "tune"  # the `evaluator` column of selection rows; results/tune/<trial job id>/


@dataclasses.dataclass(frozen=True)
class TrialScore:
    """What a trial reported: its job id, config, mean val top1 and how many models scored."""

    trial_job_id: str
    config: dict[str, Any]
    val_top1: float
    models: int


def choose(trials: list[TrialScore], models: int, mode: str) -> TrialScore | None:
    """The best trial with all `models` scored (mean val top1; `mode` max or min; ties: the
    smaller trial job id), or None when no trial finished."""
    complete = [t for t in trials if t.models >= models and not math.isnan(t.val_top1)]
    if not complete:
        return None
    sign = -1.0 if mode == "max" else 1.0
    return min(complete, key=lambda t: (sign * t.val_top1, t.trial_job_id))
