"""README.md stays true: its variant table is what `attnbench variants` prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from attnbench.variants import render

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the README's table is generated on a machine without a GPU")
def test_readme_variant_table_is_generated():
    text = README.read_text()
    match = re.search(r"<!-- variants:begin -->\n(.*)<!-- variants:end -->", text, flags=re.S)
    assert match, "README.md lost its <!-- variants:begin/end --> markers"
    assert match.group(1) == render(), (
        "README.md's variant table is stale: regenerate it with `TRITON_INTERPRET=1 attnbench variants`"
    )


def test_readme_states_the_commands_ci_and_users_run():
    text = README.read_text()
    for command in ("pip install torch==2.13.0", "pytest benchmarks --benchmark-autosave", "\npytest\n"):
        assert command in text, f"README.md must show {command.strip()!r}"
    ci = (README.parent / ".ci" / "run").read_text()
    assert '"$venv/bin/pytest")' in ci, ".ci/run's newest lane must run the README's test command, `pytest`"
    assert '"$PYTHON" -m venv' in ci, ".ci/run must make a new virtual environment for each lane"


def test_gpu_bench_workflow_keeps_main_runs_and_keeps_the_token_out_of_git_config():
    """One concurrency group for every run let a queued PR run cancel a pending main baseline; a token in a
    remote URL lands in the runner's .git/config."""
    text = (README.parent / ".github" / "workflows" / "gpu-bench.yml").read_text()
    group = next(line for line in text.splitlines() if line.strip().startswith("group:"))
    assert "pull_request.number" in group and "'main'" in group, group
    assert "cancel-in-progress: ${{ github.event_name == 'pull_request' }}" in text
    assert "@github.com" not in text and "http.extraheader" in text
