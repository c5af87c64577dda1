"""Executes a plan: distill jobs and eval cells, in-process or on Ray.

The package is cut along its Ray seam; only the modules marked (Ray) import ray, so the CLI,
`ddbench.tracking` and `--local` never load it (a test checks this):

- `work`: the work units themselves (`distill_job`, `run_cell`, rows, what is done);
- `local`: `run_local`, the plan in-process without Ray;
- `resources`: bundles, worker slots and unplaceable requests, as plain data;
- `schedule`: the scheduling policy (which unit starts next, on which node), as plain Python;
- `cluster` (Ray): start or join Ray, the cluster's nodes, the eval cell as a Ray task;
- `train` (Ray): a distill job as a Ray Train run (`RayContext`, the worker loop);
- `tune` (Ray): a tuned job as a Ray Tune experiment whose trials are Train drivers;
- `scheduler` (Ray): `run_ray`, every unit side by side on the cluster.

A rerun skips every job whose artifact exists and every cell whose file holds `ok` rows; failed
cells are retried. `force=True` recomputes everything.
"""
