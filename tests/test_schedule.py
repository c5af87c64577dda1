"""The scheduling policy (`ddbench.runner.schedule`), without Ray: packing onto nodes, priority,
prerequisites, failures that propagate, and the units a plan becomes."""

from __future__ import annotations

from ddbench.plan import make_plan
from ddbench.runner.schedule import Ledger, Scheduler, Unit, plan_units
from ddbench.spec import load_suite

CPU = {"CPU": 1.0}


def test_ledger_places_best_fit_and_refuses_whole_units():
    ledger = Ledger({"a": {"CPU": 4.0}, "b": {"CPU": 2.0}, "g": {"CPU": 8.0, "GPU": 2.0}})
    assert ledger.place([CPU]) == ["b"]  # the fullest node that fits; GPU nodes last
    assert ledger.place([{"CPU": 3.0}, {"CPU": 1.0}]) == ["a", "a"]
    assert ledger.place([{"GPU": 1.0, "CPU": 1.0}]) == ["g"]
    before = {node: dict(free) for node, free in ledger.free.items()}
    assert ledger.place([{"CPU": 7.0}, {"CPU": 7.0}]) is None  # one fits, both do not
    assert ledger.free == before  # a refused unit takes nothing
    ledger.release(["a", "a"], [{"CPU": 3.0}, {"CPU": 1.0}])
    assert ledger.free["a"]["CPU"] == 4.0


def test_ledger_follows_nodes_joining_and_leaving():
    ledger = Ledger({"a": {"CPU": 1.0}})
    assert ledger.place([CPU]) == ["a"]
    ledger.set_nodes({"a": {"CPU": 1.0}, "b": {"CPU": 1.0}})
    assert ledger.place([CPU]) == ["b"] and ledger.place([CPU]) is None
    ledger.set_nodes({"b": {"CPU": 1.0}})  # a left with what ran there
    ledger.release(["a"], [CPU])  # no error: its resources left with it
    assert ledger.capacity() == {"CPU": 1.0}


def unit(name: str, needs=(), publishes=(), priority=(0,), bundles=None) -> Unit:
    return Unit(
        "distill", bundles or [dict(CPU)], frozenset(needs), tuple(publishes), priority, name
    )


def test_priority_prerequisites_and_backfill():
    cgan = unit("cgan", publishes=["cgan"], priority=(0, -5))
    d2m = unit("d2m", needs=["cgan"], publishes=["d2m"], priority=(0, -1))
    wide = unit("wide", publishes=["wide"], priority=(0, -3), bundles=[dict(CPU), dict(CPU)])
    cell = Unit("cell", [dict(CPU)], frozenset({"cgan"}), (), (1, 0), "cell")
    sched = Scheduler({"n": {"CPU": 2.0}}, [d2m, cell, wide, cgan])
    assert [u.payload for u in sched.start()] == ["cgan"]  # d2m waits; wide does not fit now
    assert sched.start() == []
    assert sched.finish(cgan, ["cgan"]) == []
    # both cgan dependants are ready; `wide` (priority -3) goes first and takes both CPUs
    assert [u.payload for u in sched.start()] == ["wide"]
    sched.finish(wide, ["wide"])
    assert [u.payload for u in sched.start()] == ["d2m", "cell"]
    sched.finish(d2m, ["d2m"])
    sched.finish(cell)
    assert sched.done and sched.published == {"cgan", "wide", "d2m"}


def test_a_failed_prerequisite_fails_its_dependants_transitively():
    cgan = unit("cgan", publishes=["cgan"])
    d2m = unit("d2m", needs=["cgan"], publishes=["d2m"])
    d2m_cell = Unit("cell", [dict(CPU)], frozenset({"d2m"}), (), (1, 0), "d2m cell")
    other = unit("dm", publishes=["dm"])
    sched = Scheduler({"n": {"CPU": 1.0}}, [cgan, d2m, d2m_cell, other])
    (first,) = sched.start()
    assert first is cgan
    lost = sched.finish(cgan, [], {"cgan": "boom"})
    assert [(u.payload, "boom" in cause) for u, cause in lost] == [
        ("d2m", True),
        ("d2m cell", True),
    ]
    assert sched.failed.keys() == {"cgan", "d2m"}
    (nxt,) = sched.start()
    assert nxt is other
    # a run that ends without publishing or failing its job fails it all the same
    assert sched.finish(other, []) == [] and "dm" in sched.failed
    assert sched.done


def test_plan_units_order_gatekeepers_first():
    loaded = load_suite("suites/quickstart.yaml")
    plan = make_plan(loaded)
    units = plan_units(plan, plan.jobs, plan.cells, loaded.suite.resources, {})
    runs = [u for u in units if u.kind == "distill"]
    assert sorted(u.payload.job_id for u in runs) == sorted(j.job_id for j in plan.jobs)
    cells = [u for u in units if u.kind == "cell"]
    assert len(cells) == len(plan.cells)
    assert max(u.priority for u in runs) < min(u.priority for u in cells)
    by_method = {u.payload.method: u for u in runs}
    # cgan gates d2m (and d2m's cells), so it starts before dim, which gates only its cells
    assert by_method["cgan"].priority < by_method["dim"].priority
    assert by_method["d2m"].needs == {by_method["cgan"].publishes[0]}
    assert by_method["d4m"].needs == {by_method["latent_diffusion"].publishes[0]}


def test_a_finished_runner_goes_on_with_the_next_job_of_its_shape():
    cgan = unit("cgan", publishes=["cgan"], priority=(0, -3))
    dm = unit("dm", publishes=["dm"], priority=(0, -2))
    d2m = unit("d2m", needs=["cgan"], publishes=["d2m"], priority=(0, -1))
    cell = Unit("cell", [dict(CPU)], frozenset({"dm"}), (), (1, 0), "dm cell")
    sched = Scheduler({"a": {"CPU": 1.0}, "b": {"CPU": 1.0}}, [cgan, dm, d2m, cell])
    assert [u.payload for u in sched.start()] == ["cgan", "dm"]  # both runners busy
    lost, nxt = sched.handoff(dm, ["dm"])
    assert lost == [] and nxt is None  # no distill job ready: the runner stops, the cell runs
    assert [u.payload for u in sched.start()] == ["dm cell"]
    lost, nxt = sched.handoff(cgan, ["cgan"])
    assert nxt is d2m and d2m.placement == cgan.placement  # the same processes go on
    assert sched.start() == []  # the cell and d2m hold both nodes
