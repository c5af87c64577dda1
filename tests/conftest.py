"""Shared fixtures: the real digits data (loaded once), quiet Ray / MLflow settings, CLI runner,
a tiny untrained generator artifact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ddbench.artifact import GeneratorSet
    from ddbench.data import RealData

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


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


@pytest.fixture(scope="session")
def digits():
    from ddbench.data import load_dataset

    return load_dataset("digits")


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(marker: str) -> list:
    """Processes whose command line or RAY_TMPDIR names `marker` (e.g. a Ray temp dir)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            text = " ".join(proc.info["cmdline"] or [])
            if marker in text or (proc.info["environ"] or {}).get("RAY_TMPDIR") == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def stop_processes_mentioning(marker: str, grace_s: float = 15.0) -> None:
    """SIGTERM what we started (found by marker), then SIGKILL what is left after `grace_s`."""
    import time

    import psutil

    for proc in processes_mentioning(marker):
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    deadline = time.monotonic() + grace_s
    while processes_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    for proc in processes_mentioning(marker):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    time.sleep(0.5)


class RayNodes:
    """Ray nodes started with `ray start` on 127.0.0.1 under one temp dir; stopped by marker."""

    def __init__(self, name: str, multi_node: bool = False) -> None:
        import os

        self.multi_node = multi_node
        self.ray = str(Path(sys.executable).with_name("ray"))
        self.temp_dir = f"/tmp/{name}{os.getpid()}"  # short: Ray socket paths have a size limit
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Token authentication as a real cluster has it: a driver joining by address needs
        # RAY_AUTH_MODE=token and the token (~/.ray/auth_token, created here if missing).
        self.env = {
            **os.environ,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_TMPDIR": self.temp_dir,
        }
        subprocess.run(
            [self.ray, "get-auth-token", "--generate"],
            capture_output=True,
            timeout=60,
            env=self.env,
            check=True,
        )

    def start(
        self, head: bool, num_cpus: int, resources: str = "{}", env: dict[str, str] | None = None
    ) -> None:
        """Start a node; `env` adds variables its processes (raylet, workers) see."""
        common = [
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            f"--resources={resources}",
            "--disable-usage-stats",
        ]
        if head:
            args = [
                "--head",
                f"--port={self.port}",
                "--include-dashboard=false",
                f"--temp-dir={self.temp_dir}",
            ]
        else:
            args = [f"--address={self.address}"]
        proc = subprocess.run(
            [self.ray, "start", *args, *common],
            capture_output=True,
            text=True,
            timeout=120,
            # A one-node cluster runs in Ray's single-node mode (the variable at 0), the only mode
            # in which Ray 2.60 keeps --node-ip-address=127.0.0.1 instead of resolving it to the
            # machine's address. A second node must join in multi-node mode (1), which resolves
            # 127.0.0.1 to the machine's address on every node: a limit of Ray on one Linux
            # host (the traffic still never leaves this machine).
            env={
                **self.env,
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1" if self.multi_node else "0",
                **(env or {}),
            },
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def stop(self) -> None:
        import shutil

        stop_processes_mentioning(self.temp_dir)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        assert processes_mentioning(self.temp_dir) == []


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
