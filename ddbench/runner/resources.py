"""What a suite's `resources` ask of a cluster, as plain data (no Ray).

A *bundle* is what one process holds while it runs: `{"CPU": 1.0, "GPU": 0.25}`. A distill job's
Train run holds `workers` bundles of `resources.distill` (one per rank; a rank sits on one node,
the ranks of a run may spread over nodes); an eval cell holds one bundle of `resources.eval`.
A *node* is the total resources of one machine, as `ray.nodes()` reports them.

- `distill_bundles` / `eval_bundle`: the bundles of a suite's units (the scheduler's currency);
- `worker_slots`: how many distill workers the nodes hold at once;
- `unplaceable`: the requests no node could ever hold, with the suite field to blame (checked
  before any work by `ddbench.runner.cluster.check_resources`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ddbench.spec import DistillResources, EvalResources, Resources

Bundle = dict[str, float]

# suite field of each resource a distill worker / an eval cell asks Ray for
RESOURCE_FIELDS = {
    "distill": {"CPU": "cpus_per_worker", "GPU": "gpus_per_worker"},
    "eval": {"CPU": "cpus", "GPU": "gpus"},
}


def _bundle(amounts: dict[str, float]) -> Bundle:
    return {key: float(amount) for key, amount in amounts.items() if amount > 0}


def distill_bundles(distill: DistillResources) -> list[Bundle]:
    """One bundle per Train worker of a distill run."""
    worker = _bundle({"CPU": distill.cpus_per_worker, "GPU": distill.gpus_per_worker})
    return [dict(worker) for _ in range(distill.workers)]


def eval_bundle(evaluation: EvalResources) -> Bundle:
    """The bundle of one eval cell."""
    return _bundle({"CPU": evaluation.cpus, "GPU": evaluation.gpus})


def worker_slots(distill: DistillResources, nodes: list[dict[str, float]]) -> int:
    """How many distill workers of `distill` the `nodes` hold at once (a worker sits on one
    node: each node's CPUs and, for GPU workers, GPUs are divided separately)."""
    (worker, *_) = distill_bundles(distill.model_copy(update={"workers": 1}))
    return sum(min(int(node.get(k, 0.0) // v) for k, v in worker.items()) for node in nodes)


def unplaceable(
    resources: Resources, nodes: list[dict[str, float]]
) -> list[tuple[tuple[str, ...], str]]:
    """(suite location, message) of each request of a suite's `resources` that no
    node of `nodes` (each node's total resources, as `ray.nodes()` reports) can ever hold: one
    distill worker, the distill run's `workers` together, one eval cell."""
    problems: list[tuple[tuple[str, ...], str]] = []
    for part, fields in RESOURCE_FIELDS.items():
        spec = getattr(resources, part)
        want = _bundle({key: getattr(spec, name) for key, name in fields.items()})
        if any(all(node.get(k, 0.0) >= v for k, v in want.items()) for node in nodes):
            continue
        # the request no node meets on its own (else the first: they only fail together)
        short = [k for k in want if not any(node.get(k, 0.0) >= want[k] for node in nodes)]
        key = (short or list(want))[0]
        largest = max((node.get(key, 0.0) for node in nodes), default=0.0)
        problems.append(
            (
                ("resources", part, fields[key]),
                f"{want[key]:g} {key} per {'distill worker' if part == 'distill' else 'eval cell'}"
                f", but no node has that many (the largest has {largest:g})",
            )
        )
    distill = resources.distill
    fit = worker_slots(distill, nodes)
    if not problems and fit < distill.workers:
        problems.append(
            (
                ("resources", "distill", "workers"),
                f"{distill.workers} workers, but the cluster holds {fit} of "
                f"{distill.cpus_per_worker:g} CPU / {distill.gpus_per_worker:g} GPU",
            )
        )
    return problems
