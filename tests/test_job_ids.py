"""Job ids are pinned: an id names an artifact that reruns, other suites and other machines
reuse, so it may change only on purpose.

When a change moves these ids, it must be deliberate (a method's `version` bumped because its
results change, a new field in the job's identity), and the new values go here in the same
commit, whose message says why. History of deliberate moves:
- dc, dsa, dm, datadam, cgan, dim, d2m, latent_diffusion (and d4m through its
  latent_diffusion dependency): version 2, worker-count-invariant random streams;
- tuned jobs: `max_concurrent_trials` left the job id (it cannot change a fifo sweep's result);
- (before: the smoke plan's ids were pinned when class-subset jobs arrived, so that jobs without
  a class subset keep their ids: `classes` enters the identity only when set.)
"""

from __future__ import annotations

from ddbench.plan import make_plan
from ddbench.spec import load_suite
from tests.conftest import REPO

QUICKSTART_IDS = {
    ("random_real", 1): "bb98bbc2eae1f593",
    ("random_real", 10): "16fbae66ac464e09",
    ("herding", 1): "7cb4c562f847a6ec",
    ("herding", 10): "f8c243ba4e37565d",
    ("kcenter", 1): "6401f0dcfda9338d",
    ("kcenter", 10): "b56fdd261467a4ee",
    ("dc", 1): "704b25c05c73eac8",
    ("dc", 10): "9ad63f650f7862e8",
    ("dsa", 1): "c9968cd93b14f1c3",
    ("dsa", 10): "a98b92b4386f84b0",
    ("dm", 1): "5d2bf767a16a3bfe",
    ("dm", 10): "e932ff495a7a2457",
    ("datadam", 1): "901267b55c12af90",
    ("datadam", 10): "3646a8b16dd28c1b",
    ("cgan", None): "d078754516b61f07",
    ("dim", None): "f3224c99a2034b1a",
    ("d2m", None): "80385663847a9be1",
    ("latent_diffusion", None): "11e5d1dd77a89071",
    ("d4m", 1): "61beba7b4c058062",
    ("d4m", 10): "b94f58bbc0478358",
    ("whole_dataset", None): "a3c2b19fe0354715",
}
# the smoke profile applies each plugin's smoke params: other ids for dim and d2m
SMOKE_IDS = {
    **{key: job_id for key, job_id in QUICKSTART_IDS.items() if key[1] in (1, None)},
    ("dim", None): "880f23dcc59e738e",
    ("d2m", None): "e32fba0424ed0f2e",
}
TUNED_IDS = {"d2m_task_balance": "52a9610600eb0a6f", "d2m_temperature": "1348828011ae045f"}


def test_quickstart_job_ids_are_pinned():
    plan = make_plan(load_suite(REPO / "suites" / "quickstart.yaml"))
    assert {(job.label, job.ipc): job.job_id for job in plan.jobs} == QUICKSTART_IDS


def test_smoke_job_ids_are_pinned():
    plan = make_plan(load_suite(REPO / "suites" / "quickstart.yaml", ["profile=smoke"]))
    assert {(job.label, job.ipc): job.job_id for job in plan.jobs} == SMOKE_IDS


def test_tuned_job_ids_are_pinned_and_ignore_concurrency():
    path = REPO / "suites" / "ablation_d2m.yaml"
    for overrides in ([], ["methods.d2m_task_balance.tune.max_concurrent_trials=3"]):
        plan = make_plan(load_suite(path, overrides))
        ids = {job.label: job.job_id for job in plan.jobs if job.tune}
        assert {label: ids[label] for label in TUNED_IDS} == TUNED_IDS
