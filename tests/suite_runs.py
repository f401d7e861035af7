"""One run of the benchmark suite on a tiny CPU grid, shared by the suite and report tests.

``tiny_suite_run`` runs ``pytest benchmarks`` in a subprocess (a few seconds on 2 cores) the first time it is
asked in a test session and hands back the same run afterwards, so test_suite_run.py and test_report.py
share one run without a fixture in conftest.py.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_VARIANTS = ("naive", "weights_only", "tiled")
TINY_SEQ_LENS = (32, 64)
TINY_HEAD_DIMS = (16,)
PASSES = ("forward", "backward")
TINY_GRID = ["--attn-seq-lens", ",".join(map(str, TINY_SEQ_LENS)),
             "--attn-head-dims", ",".join(map(str, TINY_HEAD_DIMS)),
             "--attn-variants", ",".join(TINY_VARIANTS), "--benchmark-max-time", "0.02",
             "--attn-device", "cpu"]  # the CPU grid also on a machine with a GPU
# One thread per run: torch's thread pool fighting other processes for 2 cores stalls microsecond kernels.
SUITE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class SuiteRun:
    json_path: Path
    returncode: int
    output: str

    def data(self) -> dict:
        """A fresh copy of the saved JSON (tests may edit it)."""
        return json.loads(self.json_path.read_text())


def run_suite(json_path: Path, *options: str, cwd: Path = REPO_ROOT, env: dict | None = None,
              expect_json: bool = True, max_file_bytes: int | None = None) -> SuiteRun:
    """``python -m pytest benchmarks`` on the tiny grid, saving pytest-benchmark's JSON at ``json_path``.

    ``env`` adds variables (e.g. ATTNBENCH_PLANT) to a copy of this process's environment without one;
    ``max_file_bytes`` limits the size of any file the run writes (as a full disk would, with EFBIG).
    """
    env_overrides = env
    env = {key: value for key, value in os.environ.items() if key != "ATTNBENCH_PLANT"}
    env.update(SUITE_ENV, **(env_overrides or {}))
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "-q",
           f"--benchmark-json={json_path}", *TINY_GRID, *options]
    limit = None if max_file_bytes is None else functools.partial(
        resource.setrlimit, resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)
    output = proc.stdout + proc.stderr
    assert json_path.exists() or not expect_json, (
        f"{' '.join(cmd)} wrote no JSON (exit {proc.returncode}):\n{output[-3000:]}")
    return SuiteRun(json_path, proc.returncode, output)


_tiny_run: SuiteRun | None = None


def tiny_suite_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    """The tiny grid, run once per test session; fails the caller when the run itself failed."""
    global _tiny_run
    if _tiny_run is None or not _tiny_run.json_path.exists():
        _tiny_run = run_suite(tmp_path_factory.mktemp("tiny_suite") / "run.json")
    assert _tiny_run.returncode == 0, f"the tiny suite run failed:\n{_tiny_run.output[-3000:]}"
    return _tiny_run
