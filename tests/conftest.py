"""Shared fixtures: the real digits data (loaded once), quiet Ray / MLflow settings, torch
threads under pytest-xdist, CLI runner, a tiny untrained generator artifact, `from_files` inputs
written from real images, an evaluator whose cells fail on purpose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ddbench.runner.loopback import free_port

if TYPE_CHECKING:
    from ddbench.artifact import GeneratorSet
    from ddbench.data import RealData

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Under pytest-xdist every worker process would give torch every core: 2 workers x 2 OpenMP
# threads on 2 cores spin against each other (the D4M contract test took 113 s instead of 17 s).
# Each worker gets its share, set before torch is imported; the `--local` CLI runs the tests
# start inherit it (OMP_NUM_THREADS is torch's default thread count).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _workers))


TINY_GENERATOR = {"noise_dim": 8, "width": 8}  # generator params that run in milliseconds


def tiny_generator_set(real: RealData, seed: int = 0) -> GeneratorSet:
    """An untrained `TINY_GENERATOR` GeneratorSet for `real`'s shapes, initialised from `seed`."""
    import torch

    from ddbench.artifact import GeneratorSet
    from ddbench.generators import build_generator, generator_config

    config = generator_config(
        real.channels,
        real.image_size,
        real.num_classes,
        mean=real.mean,
        std=real.std,
        **TINY_GENERATOR,
    )
    torch.manual_seed(seed)
    net = build_generator(config)
    return GeneratorSet({k: v.clone() for k, v in net.state_dict().items()}, config)


def write_distillate(
    real: RealData,
    ipc: int,
    directory: Path,
    soft: bool = False,  # True: labels.pt holds [N, K] probabilities (0.7 on the class)
    lr: float | None = None,  # a learned lr written as lr.pt
) -> dict[str, str]:
    """`from_files` inputs made of real images: the first `ipc` train images of each class
    (normalised, as ddbench stores them) in `directory`; returns the from_files params."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    idx = torch.cat([real.class_indices(c)[:ipc] for c in real.classes])
    images, labels = real.train_x[idx].clone(), real.train_y[idx].clone()
    if soft:
        k = real.num_classes
        labels = torch.full((len(idx), k), 0.3 / (k - 1)).scatter_(1, labels[:, None], 0.7)
    torch.save(images, directory / "images.pt")
    torch.save(labels, directory / "labels.pt")
    params = {"images": str(directory / "images.pt"), "labels": str(directory / "labels.pt")}
    if lr is not None:
        torch.save(torch.tensor(lr), directory / "lr.pt")
        params["lr"] = str(directory / "lr.pt")
    return params


@pytest.fixture(scope="session")
def path_rows() -> set[str]:
    """The metrics a calibrated cell writes about its execution path: the training path's
    (`Choice.metrics` of a calibrated choice) and the test pass's batch."""
    from ddbench.fastpath import FP32_EAGER, Choice

    return {*Choice(FP32_EAGER, {FP32_EAGER.name: 1.0}).metrics, "test_batch"}


@pytest.fixture(scope="session")
def digits():
    from ddbench.data import load_dataset

    return load_dataset("digits")


@pytest.fixture
def failing_eval():
    """cross_arch whose cells with eval_seed 1 raise (a two-line message), registered only for
    the test that asks for it."""
    from ddbench.evals import EVALS
    from ddbench.evals.cross_arch import CrossArch

    class Failing(CrossArch):
        name = "failing_for_test"

        def run(self, cell, job, params, ctx):
            if cell["eval_seed"] == 1:
                raise RuntimeError("this cell fails on purpose\nsecond line not shown")
            return super().run(cell, job, params, ctx)

    EVALS.register(Failing)
    yield Failing.name
    EVALS._items.pop(Failing.name)


def run_cli(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 1200,  # s: a guard against a hang, far above any run here (CI is slower)
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run `ddbench ARGS` in a subprocess (a real process, as a user would)."""
    return subprocess.run(
        [sys.executable, "-m", "ddbench.cli", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a sqlite store under `root`, started as its own process
    group and stopped by its PID (the group: MLflow's web workers go with it)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> MlflowServer:
        import time
        import urllib.request

        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
            ],
            stdout=(self.root / "server.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.root / "server.log").read_text()[-2000:]
                raise RuntimeError(f"mlflow server exited: {log}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer on {self.uri} in {timeout_s} s")

    def stop(self) -> None:
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the group led by the server's PID
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
