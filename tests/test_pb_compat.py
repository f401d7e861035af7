"""The one adapter to pytest-benchmark's internals (attnbench.pb_compat): both forms of --benchmark-json, the
storage's saving, and a release it does not know, end to end and on its own."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from suite_runs import run_suite

from attnbench import pb_compat
from attnbench.record import parse

PLUGINS = Path(__file__).parent / "plugins"
SMALL = ["--attn-variants", "naive", "--attn-seq-lens", "32"]


def shimmed(pb_as: str) -> dict:
    return {"ATTNBENCH_TEST_PB_AS": pb_as, "PYTHONPATH": os.pathsep.join(
        [str(PLUGINS), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_the_installed_release_is_one_the_adapter_was_tested_with():
    assert pb_compat.series() in pb_compat.TESTED_SERIES, (
        f"pytest-benchmark {pb_compat.pb_version()} is not among the releases attnbench.pb_compat was tested with "
        f"{pb_compat.TESTED_SERIES}: test its saving with this release and add it")


@pytest.mark.parametrize("pb_as", ["file", "path"], ids=["json-as-open-file-5.2", "json-as-path-5.3"])
def test_json_and_autosave_are_saved_atomically_under_each_form(tmp_path, pb_as):
    storage = tmp_path / "storage"
    run = run_suite(tmp_path / "run.json", *SMALL, "-p", "pb_as", "--benchmark-autosave",
                    f"--benchmark-storage={storage}", env=shimmed(pb_as))
    assert run.returncode == 0, run.output[-3000:]
    assert "tested with" not in run.output, f"a known form must not fall back:\n{run.output[-2000:]}"
    saved = list(storage.glob("*/0001_*.json"))
    assert len(saved) == 1, f"expected one numbered autosave under {storage}, got {list(storage.rglob('*'))}"
    for path in (run.json_path, saved[0]):
        parsed = parse(json.loads(path.read_text()), role=str(path))
        assert parsed.complete and parsed.cells, f"{path} should hold a complete run"
    assert (storage / ".attnbench.lock").exists(), "the autosave should take the storage's lock"
    left = [p.name for p in tmp_path.rglob("*.tmp")]
    assert not left, f"the atomic writes left temporary files behind: {left}"


def test_an_unknown_release_says_so_and_pytest_benchmark_saves_the_run(tmp_path):
    storage = tmp_path / "storage"
    run = run_suite(tmp_path / "run.json", *SMALL, "-p", "pb_as", "--benchmark-autosave",
                    f"--benchmark-storage={storage}", env=shimmed("6.0.0"))
    assert run.returncode == 0, run.output[-3000:]
    assert "pytest-benchmark 6.0.0 is newer than the releases its saving was tested with" in run.output, \
        run.output[-2000:]
    assert "Traceback" not in run.output and "INTERNALERROR" not in run.output, run.output[-3000:]
    assert json.loads(run.json_path.read_text())["attnbench"]["complete"] is True
    assert len(list(storage.glob("*/0001_*.json"))) == 1, "pytest-benchmark's own autosave should have saved"


class _FakeSession:
    """The attributes of pytest-benchmark's session that the adapter reads."""

    def __init__(self, json_value):
        self.disabled, self.json, self.save, self.autosave, self.storage = False, json_value, None, False, None
        self.save_json = None


class _FakeConfig:
    def __init__(self, bs):
        self._benchmarksession = bs


@pytest.mark.parametrize("form", ["file", "path"])
def test_the_json_target_is_taken_from_either_form(tmp_path, form):
    target = tmp_path / "out.json"
    value = open(target, "wb") if form == "file" else target  # noqa: SIM115 - the adapter closes it
    bs = _FakeSession(value)
    written = []
    assert pb_compat.install_saving(_FakeConfig(bs), write_json=lambda p, d: written.append((p, d)),
                                    save_run=None, warn=pytest.fail)
    bs.save_json({"x": 1})
    assert written == [(target, {"x": 1})]
    if form == "file":
        assert value.closed, "the file the option parser opened should be closed"


def test_a_json_value_of_another_kind_is_left_to_pytest_benchmark():
    bs = _FakeSession(io.BytesIO())
    warnings = []
    pb_compat.install_saving(_FakeConfig(bs), write_json=pytest.fail, save_run=None, warn=warnings.append)
    assert bs.save_json is None and warnings and "neither a file nor a path" in warnings[0]


@pytest.mark.parametrize(("pb", "pytest_version", "refused"), [
    ("5.2.3", (9, 1), False), ("5.2.3", (9, 2), True), ("5.3.1", (9, 2), False), ("5.3.1", (8, 3), False)])
def test_pytest_benchmark_5_2_is_refused_plainly_under_pytest_9_2(pb, pytest_version, refused):
    reason = pb_compat.unsupported_reason(pb, pytest_version)
    assert (reason is not None) == refused, reason
    if refused:
        assert "pytest-benchmark>=5.3" in reason


# -- --benchmark-json onto an earlier run: nothing is truncated before the run writes its own

EARLIER_RUN = '{"an earlier run": "kept"}\n'
KILLED_MID_RUN = """\
import os, signal


def test_killed(benchmark):
    benchmark(sum, [1, 2])
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _pytest_in(directory: Path, *args: str) -> subprocess.CompletedProcess:
    """A pytest of its own in ``directory`` (no conftest of this project, so only the entry points load)."""
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(directory),
                           *args], cwd=directory, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["usage-error", "killed-mid-run"])
def test_benchmark_json_onto_an_earlier_run_keeps_it_until_the_run_writes(tmp_path, case):
    """pytest-benchmark 5.2 opened the file for writing while parsing options: a usage error or a SIGKILL left
    the earlier run at 0 bytes (5.3 takes a path; the test holds for both)."""
    target = tmp_path / "run.json"
    target.write_text(EARLIER_RUN)
    (tmp_path / "test_killed.py").write_text(KILLED_MID_RUN)
    if case == "usage-error":
        proc = _pytest_in(tmp_path, f"--benchmark-json={target}", "--no-such-option")
        assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    else:
        proc = _pytest_in(tmp_path, f"--benchmark-json={target}", "test_killed.py")
        assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert target.read_text() == EARLIER_RUN, f"{case} changed the earlier run: {target.read_bytes()[:80]!r}"


def test_a_deferred_json_file_opens_on_its_first_write(tmp_path):
    target = tmp_path / "run.json"
    target.write_text(EARLIER_RUN)
    deferred = pb_compat.DeferredJsonFile(str(target))
    deferred.close()
    assert target.read_text() == EARLIER_RUN and str(deferred) == str(target)
    with deferred as fh:
        fh.write(b'{"new": 1}')
    assert target.read_text() == '{"new": 1}'


def test_benchmark_json_still_writes_the_run(tmp_path):
    (tmp_path / "test_b.py").write_text("def test_b(benchmark):\n    benchmark(sum, [1, 2])\n")
    target = tmp_path / "run.json"
    target.write_text(EARLIER_RUN)
    proc = _pytest_in(tmp_path, f"--benchmark-json={target}", "test_b.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [b["name"] for b in json.loads(target.read_text())["benchmarks"]] == ["test_b"]
