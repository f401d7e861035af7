"""The one module that knows pytest-benchmark's internals; everything else uses its hooks or this module.

The hooks (``pytest_benchmark_update_json``, ``..._update_machine_info``, ``..._compare_machine_info``) give
the plugin everything but the saving itself. For one run at a time per storage, atomic files and incomplete
runs set apart (``attnbench.storage``), :func:`install_saving` replaces two methods of pytest-benchmark's
session object. How those look differs by release:

- 5.2: ``--benchmark-json`` is parsed by ``argparse.FileType("wb")``: parsing the command line truncates the
  file, so a usage error or a run killed before its end left an earlier run there at 0 bytes. This module is
  also a pytest plugin (the ``pytest11`` entry point, loaded before the command line is parsed) that swaps
  that type for :class:`DeferredJsonFile`, which opens nothing until it is written to. ``save_json`` writes
  into it. It reads ``node._nodeid``, which pytest 9.2 removed: it cannot run there.
- 5.3: ``--benchmark-json`` is a ``pathlib.Path``; ``save_json`` opens it when the run ends.

The adapter tells the two ``--benchmark-json`` forms apart by what it is handed. Both keep the storage as
``session.storage`` (a ``FileStorage`` with ``path``, ``default_machine_id`` and
``logger``) and call ``storage.save(output_json, name)``. For a release this module was not tested with it
says so once and leaves pytest-benchmark's own saving in place rather than guessing.
"""

from __future__ import annotations

import argparse
import weakref
from collections.abc import Callable, Iterator
from os import PathLike
from pathlib import Path

import pytest
import pytest_benchmark
from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info as generate_machine_info
from pytest_benchmark.session import PerformanceRegression
from pytest_benchmark.stats import Stats
from pytest_benchmark.storage.file import FileStorage
from pytest_benchmark.utils import get_commit_info, get_machine_id, get_tag

__all__ = ["TESTED_SERIES", "DeferredJsonFile", "PerformanceRegression", "Stats", "generate_machine_info",
           "get_commit_info", "get_machine_id", "get_tag", "install_saving", "pb_version", "series",
           "unsupported_reason"]

# major.minor releases of pytest-benchmark this adapter was tested with (tests/test_pb_compat.py runs each)
TESTED_SERIES = ("5.2", "5.3")
_FIRST_PYTEST_WITHOUT_NODEID = (9, 2)  # pytest-benchmark 5.2 reads Node._nodeid, gone from this pytest on


def pb_version() -> str:
    """This installation's pytest-benchmark version, as its runs record it."""
    return pytest_benchmark.__version__


def series(version: str | None = None) -> str:
    """``"5.3"`` for pytest-benchmark 5.3.1 (this installation's when ``version`` is None)."""
    parts = (version or pytest_benchmark.__version__).split(".")
    return ".".join(parts[:2])


def _pytest_version() -> tuple[int, int]:
    major, minor = pytest.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def unsupported_reason(pb_version: str | None = None, pytest_version: tuple[int, int] | None = None) -> str | None:
    """Why this pytest and pytest-benchmark cannot run benchmarks together at all, or None."""
    pb_series = series(pb_version)
    pytest_version = pytest_version or _pytest_version()
    if pb_series == "5.2" and pytest_version >= _FIRST_PYTEST_WITHOUT_NODEID:
        return (f"pytest-benchmark {pb_version or pytest_benchmark.__version__} cannot run benchmarks under pytest "
                f"{'.'.join(map(str, pytest_version))} (it reads a pytest attribute removed in 9.2): install "
                "pytest-benchmark>=5.3, or pytest<9.2")
    return None


def _session(config: pytest.Config):
    """pytest-benchmark's session object, or None when pytest-benchmark is not active (``-p no:benchmark``)."""
    return getattr(config, "_benchmarksession", None)


def benchmarks_disabled(config: pytest.Config) -> bool:
    """Whether pytest-benchmark is off in this run (not loaded, ``--benchmark-disable``, or under xdist)."""
    bs = _session(config)
    return bs is None or bool(bs.disabled)


def install_saving(config: pytest.Config, *, write_json: Callable[[Path, dict], None],
                   save_run: Callable[[Path, str, dict], Path] | None,
                   warn: Callable[[str], None]) -> bool:
    """Route pytest-benchmark's saving through ``write_json(path, output_json)`` (``--benchmark-json``) and
    ``save_run(directory, name, output_json) -> saved path or None`` (``--benchmark-save``/``--benchmark-autosave``
    into a file storage; None leaves those alone). Returns False, after one ``warn``, where this release is unknown and
    pytest-benchmark saves as it always does."""
    bs = _session(config)
    if bs is None or bs.disabled:
        return False
    pb_series = series()
    if pb_series not in TESTED_SERIES:
        warn(f"attnbench: pytest-benchmark {pytest_benchmark.__version__} is newer than the releases its saving was "
             f"tested with ({', '.join(TESTED_SERIES)}); runs are saved by pytest-benchmark itself, without "
             "attnbench's atomic writes, storage lock and incomplete-run naming")
        return False
    if bs.json:
        path = _json_target(bs.json)
        if path is None:
            warn(f"attnbench: pytest-benchmark {pytest_benchmark.__version__} holds --benchmark-json as "
                 f"{type(bs.json).__name__}, neither a file nor a path; it writes that file itself")
        else:
            bs.save_json = lambda output_json: write_json(path, output_json)
    if save_run is not None and (bs.save or bs.autosave) and isinstance(bs.storage, FileStorage):
        storage = bs.storage

        def save(output_json: dict, name: str) -> None:
            directory = storage.path / storage.default_machine_id if storage.default_machine_id else storage.path
            saved = save_run(directory, name, output_json)
            if saved is not None:  # None: it could not be written, and save_run said so
                storage.logger.info(f"Saved benchmark data in: {saved}")

        storage.save = save
    return True


def _json_target(value) -> Path | None:
    """Where ``--benchmark-json`` goes: 5.2 hands a :class:`DeferredJsonFile` (or, where this module's plugin
    was not loaded, an open file, closed here: the run is written in one step instead), 5.3 a path."""
    if isinstance(value, (str, PathLike)):
        return Path(value)
    if hasattr(value, "write") and isinstance(getattr(value, "name", None), str):
        value.close()
        return Path(value.name)
    return None


def file_storage_path(config: pytest.Config) -> Path | None:
    """The directory of the run's file storage when this run saves into one, else None."""
    bs = _session(config)
    if bs is None or bs.disabled or not (bs.save or bs.autosave) or not isinstance(bs.storage, FileStorage):
        return None
    return Path(bs.storage.path)


# -- --benchmark-json under 5.2: nothing is opened (and so truncated) while the command line is parsed

_JSON_OPTION = "--benchmark-json"
_parsers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # plugin manager -> its parser


class DeferredJsonFile:
    """A ``--benchmark-json`` path that pytest-benchmark 5.2 can hold where it expects an open file: the file is
    opened (and truncated) by the first write, so parsing, a usage error or a killed run leave it as it was."""

    mode = "wb"

    def __init__(self, name: str) -> None:
        self.name = name
        self._file = None

    def write(self, data: bytes) -> int:
        if self._file is None:
            self._file = open(self.name, self.mode)  # noqa: SIM115 (closed by close() or the with block)
        return self._file.write(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> DeferredJsonFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"DeferredJsonFile({self.name!r})"


def _json_actions(parser: pytest.Parser) -> Iterator[object]:
    """Every object through which ``parser`` converts ``--benchmark-json``: pytest's ``Argument`` (its stored
    attributes up to 8.x) and the argparse action (pytest 9 builds its argparse parser as options are added)."""
    for group in getattr(parser, "_groups", ()):
        for argument in getattr(group, "options", ()):
            if _JSON_OPTION in argument.names():
                yield argument
                if getattr(argument, "_action", None) is not None:
                    yield argument._action
    optparser = getattr(parser, "optparser", None)
    for action in getattr(optparser, "_actions", ()):
        if _JSON_OPTION in getattr(action, "option_strings", ()):
            yield action


def defer_json_open(parser: pytest.Parser) -> bool:
    """Make ``--benchmark-json`` parse to a :class:`DeferredJsonFile` where it parses to an open file (5.2).
    Returns whether anything was changed."""
    changed = False
    for holder in _json_actions(parser):
        attrs = getattr(holder, "_attrs", None)
        if isinstance(attrs, dict) and isinstance(attrs.get("type"), argparse.FileType):
            attrs["type"] = DeferredJsonFile
            changed = True
        if isinstance(getattr(holder, "type", None), argparse.FileType):
            try:
                holder.type = DeferredJsonFile
            except AttributeError:  # pytest 9.2's Argument.type is a read-only view of its action's
                continue
            changed = True
    return changed


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    _parsers[pluginmanager] = parser
    defer_json_open(parser)  # pytest-benchmark registered first


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    parser = _parsers.get(manager)
    if parser is not None and getattr(plugin, "__name__", "") == "pytest_benchmark.plugin":
        defer_json_open(parser)  # pytest-benchmark registered after this module: its options exist now
