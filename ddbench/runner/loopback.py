"""A Ray cluster of several nodes on this one machine, all on 127.0.0.1: `ray start --head` and
`ray start --address` as separate processes, stopped by what they were started with.

For trying the cluster path without a cluster (`ddbench run --address`), and for the tests and
benchmarks that need real nodes (`tests/test_e2e.py`, `benchmarks/cluster_scaling.py`). Runs the
`ray` command line in subprocesses: this module does not import ray.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(marker: str) -> list:
    """Processes whose command line or RAY_TMPDIR names `marker` (e.g. a Ray temp dir), and
    their descendants: Ray's agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`) retitle
    themselves, which overwrites both, and are known only as the raylet's children."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            text = " ".join(proc.info["cmdline"] or [])
            if marker in text or (proc.info["environ"] or {}).get("RAY_TMPDIR") == marker:
                found[proc.pid] = proc
                found.update({child.pid: child for child in proc.children(recursive=True)})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def stop_processes_mentioning(marker: str, grace_s: float = 15.0) -> None:
    """SIGTERM what we started (found by marker, with descendants), SIGKILL what is left after
    `grace_s`, then whatever started meanwhile."""
    procs = processes_mentioning(marker)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive + processes_mentioning(marker):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    time.sleep(0.5)


class LoopbackCluster:
    """Ray nodes started with `ray start` on 127.0.0.1 under one temp dir (`name` + this
    process id), stopped by that marker. `multi_node` must be set before a second node joins
    (see `start`). Drivers join with `address` and the environment `env` (token auth)."""

    def __init__(self, name: str, multi_node: bool = False) -> None:
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
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed: {proc.stdout}{proc.stderr}")

    def stop(self) -> None:
        """Stop every process of the cluster (the nodes and their workers) and remove its files."""
        stop_processes_mentioning(self.temp_dir)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        left = processes_mentioning(self.temp_dir)
        if left:
            raise RuntimeError(f"processes of {self.temp_dir} survived: {left}")
