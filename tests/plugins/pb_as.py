"""A pytest plugin for the adapter's tests (``-p pb_as``): makes the installed pytest-benchmark look like
another release, as ATTNBENCH_TEST_PB_AS says.

- ``file``: ``--benchmark-json`` handed to plugins as an open file, as pytest-benchmark 5.2 does;
- ``path``: handed as a ``pathlib.Path``, as 5.3 does;
- a version such as ``6.0.0``: ``pytest_benchmark.__version__`` reads that.
"""

import os
from pathlib import Path

import pytest
import pytest_benchmark


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark makes its session from the options
def pytest_configure(config):
    wanted = os.environ.get("ATTNBENCH_TEST_PB_AS", "")
    value = config.option.benchmark_json
    if wanted == "file" and value is not None and not hasattr(value, "write"):
        config.option.benchmark_json = open(value, "wb")  # noqa: SIM115 - the adapter closes it
    elif wanted == "path" and value is not None and hasattr(value, "write"):
        value.close()
        config.option.benchmark_json = Path(value.name)
    elif wanted[:1].isdigit():
        pytest_benchmark.__version__ = wanted
