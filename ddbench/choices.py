"""Where each value a suite sets was chosen: the `chosen_on` record of a run.

A method or eval entry of a suite may say, per param it sets, where that value was chosen
(`chosen_on: {param: where}`, checked by `ddbench.spec`):

- `val`: measured on the val split (the suite comment or docstring names the measurement);
- `paper`: the method's paper or its released code;
- `budget`: set to fit a run time (fewer iterations, epochs or networks, a smaller width, a
  larger lr that converges within fewer epochs), not chosen for accuracy.

The test split chooses nothing, so it is not a choice here. `ddbench run` writes every value the
suite's entries set, with its `chosen_on` (a param a Tune sweep varies: `val (Ray Tune)`; a value
a `--set` override wrote: `--set`; else `unrecorded`), to `CHOSEN_ON_FILE` in the run's
directory, and the report lists them (`ddbench.report.choices_section`). Adding a kind of
choice: one more value of `ChosenOn`, with its line above.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ddbench.spec import LoadedSuite

ChosenOn = Literal["val", "paper", "budget"]
CHOSEN_ON_FILE = "chosen_on.json"  # in the run's directory, beside the method facts
TUNED = "val (Ray Tune)"  # the chosen_on of a param a Tune sweep varies
OVERRIDDEN = "--set"  # the chosen_on of a value a --set override wrote
UNRECORDED = "unrecorded"  # a value whose entry does not say where it was chosen


def value_choices(loaded: LoadedSuite) -> list[dict[str, Any]]:
    """One record per value the suite's method and eval entries set (and per tuned param):
    section, entry (label or evaluator name), param, value (JSON text) and chosen_on."""
    out: list[dict[str, Any]] = []
    suite = loaded.suite
    entries = [("methods", i, m.key, m) for i, m in enumerate(suite.methods)]
    entries += [("evals", i, e.name, e) for i, e in enumerate(suite.evals)]
    for section, i, name, entry in entries:
        for param, value in entry.params.items():
            loc = (section, i, "params", param)
            if any(loc[:n] in loaded.set_locs for n in range(2, len(loc) + 1)):  # or its parent
                chosen = OVERRIDDEN
            else:
                chosen = entry.chosen_on.get(param, UNRECORDED)
            out.append(_record(section, name, param, json.dumps(value), chosen))
        tune = getattr(entry, "tune", None)
        for param, space in tune.space.items() if tune is not None else []:
            out.append(_record(section, name, param, json.dumps(space), TUNED))
    return out


def _record(section: str, entry: str, param: str, value: str, chosen_on: str) -> dict[str, Any]:
    return {
        "section": section,
        "entry": entry,
        "param": param,
        "value": value,
        "chosen_on": chosen_on,
    }
