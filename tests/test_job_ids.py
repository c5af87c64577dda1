"""Job ids are pinned: an id names an artifact that reruns, other suites and other machines
reuse, so it may change only on purpose.

The pinned plan is a fixed suite written here (every registered method of the DESIGN list at
its default params on digits, plus a tuned entry), not a shipped suite whose budgets change.
When a change moves these ids it must be deliberate (a method's `version` bumped because its
results change, a new field in the job's identity), and the new values go here in the same
commit, whose message says why. History of deliberate moves:
- dc, dsa, dm, datadam, cgan, dim, d2m, latent_diffusion (and d4m through its latent_diffusion
  dependency): version 2, worker-count-invariant random streams;
- tuned jobs: `max_concurrent_trials` left the job id (it cannot change a fifo sweep's result);
- tuned jobs scored without teacher labels: the teacher's settings (`eval_temperature`, ...)
  left the job id, as they score nothing there (found when the default T moved from 20 to 1);
- every method with `checkpoint_every` (and dm / datadam's `channels_last`, new `compile`):
  execution-only params leave the job id (`MethodParams.execution_fields`);
- (earlier: `classes` enters a job's identity only when set, so jobs without a class subset
  kept their ids when continual learning's subset jobs arrived.)
"""

from __future__ import annotations

from ddbench.plan import make_plan
from ddbench.spec import load_suite

PINNED_SUITE = """\
name: pinned
seed: 0
dataset: {name: digits}
ipc: [1, 10]
methods:
  - {name: random_real}
  - {name: herding}
  - {name: kcenter}
  - {name: dc}
  - {name: dsa}
  - {name: dm}
  - {name: datadam}
  - {name: cgan}
  - {name: dim}
  - {name: d2m}
  - {name: d4m}
  - {name: whole_dataset}
  - name: dm
    label: dm_tuned
    tune: {space: {lr_img: {grid: [0.1, 1.0]}}, max_concurrent_trials: 1}
evals: [{name: cross_arch}]
"""

PINNED_IDS = {
    ("random_real", 1): "bb98bbc2eae1f593",
    ("random_real", 10): "16fbae66ac464e09",
    ("herding", 1): "4c71478dc43fb190",
    ("herding", 10): "76a3a9fe0d72c6cd",
    ("kcenter", 1): "bbc5dbc4591513ae",
    ("kcenter", 10): "78ea1d732aacafe7",
    ("dc", 1): "3192ade67f4125e6",
    ("dc", 10): "d2b24a889890d43f",
    ("dsa", 1): "e3360c059cf15fe2",
    ("dsa", 10): "f1ef7740da9f7e4a",
    ("dm", 1): "68cf41f859b4f44c",
    ("dm", 10): "dd3f47b33285cda5",
    ("datadam", 1): "8c86023575d44805",
    ("datadam", 10): "17cad1e30c80ed41",
    ("cgan", None): "70269acf41f0445f",
    ("dim", None): "e9d220b8c2f43a91",
    ("d2m", None): "2cf75fa59e5f77ed",
    ("latent_diffusion", None): "418de0c4f6f561b1",
    ("d4m", 1): "a516f888728a6811",
    ("d4m", 10): "1454e68ef550efb6",
    ("whole_dataset", None): "a3c2b19fe0354715",
    ("dm_tuned", 1): "e539fd3ebe2ec235",
    ("dm_tuned", 10): "83906821420140d3",
}


def plan_ids(tmp_path, overrides: list[str] | None = None) -> dict[tuple[str, int | None], str]:
    path = tmp_path / "pinned.yaml"
    path.write_text(PINNED_SUITE)
    plan = make_plan(load_suite(path, overrides or []))
    return {(job.label, job.ipc): job.job_id for job in plan.jobs}


def test_job_ids_are_pinned(tmp_path):
    assert plan_ids(tmp_path) == PINNED_IDS


def test_execution_knobs_do_not_move_ids(tmp_path):
    knobs = [
        "methods.dm.params.checkpoint_every=7",
        "methods.dm.params.compile=off",
        "methods.dm.params.channels_last=on",
        "methods.dm.params.forward_blocks=off",
        "methods.dm_tuned.tune.max_concurrent_trials=2",
        "methods.cgan.params.checkpoint_every=3",
    ]
    assert plan_ids(tmp_path, knobs) == plan_ids(tmp_path)
    moved = plan_ids(tmp_path, ["methods.dm.params.iterations=7"])
    assert moved[("dm", 1)] != plan_ids(tmp_path)[("dm", 1)]  # a real param does move it


def test_an_added_field_left_at_its_default_keeps_the_id(tmp_path):
    """datadam's `attention_tap` came after its ids were in use (`MethodParams.added_fields`):
    spelling out the default keeps the pinned id, another value moves it."""
    ids = plan_ids(tmp_path, ["methods.datadam.params.attention_tap=block"])
    assert ids == PINNED_IDS
    moved = plan_ids(tmp_path, ["methods.datadam.params.attention_tap=activation"])
    assert moved[("datadam", 1)] != PINNED_IDS[("datadam", 1)]
