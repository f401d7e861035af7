"""The ``--attn-*`` options: one table of name, parser, metavar and help; each has an ini twin ``attn_NAME``.

Round counts and time budgets are pytest-benchmark's own options (``--benchmark-max-time``,
``--benchmark-min-rounds``); this project's defaults for them live in ``pyproject.toml``'s ``addopts``.
"""

from __future__ import annotations

import argparse

import pytest

from .grid import (
    DEFAULT_CPU_PRESET,
    DEFAULT_CUDA_PRESET,
    DTYPES,
    PRESETS,
    parse_causal,
    parse_device,
    parse_dtypes,
    parse_factor,
    parse_masks,
    parse_percent,
    parse_positive_int,
    parse_positive_ints,
    parse_preset,
    parse_variants,
)
from .shard import parse_shard, parse_shard_unit
from .timing import TIMING_MODES

DEFAULT_TIMING = "device"
DEFAULT_ACCURACY = "on"
DEFAULT_ACCURACY_COMPARE_FACTOR = 4.0


def parse_timing(text: str) -> str:
    """A timing mode: device, wall or cudagraph."""
    if text not in TIMING_MODES:
        raise argparse.ArgumentTypeError(f"unknown timing mode {text!r}; allowed: {', '.join(TIMING_MODES)}")
    return text


L2_MODES = ("flush", "warm")


def parse_l2(text: str) -> str:
    """What the GPU's L2 cache holds when a timed round starts: flush or warm."""
    if text not in L2_MODES:
        raise argparse.ArgumentTypeError(f"unknown L2 mode {text!r}; allowed: {', '.join(L2_MODES)}")
    return text


def parse_on_off(text: str) -> str:
    """'on' or 'off'."""
    if str(text).lower() not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{text!r} is neither on nor off; allowed: on, off")
    return str(text).lower()


# (name, parser, metavar, help). Each is a CLI option --attn-NAME and an ini key attn_NAME.
VALUE_OPTIONS = [
    ("preset", parse_preset, "NAME",
     f"named grid: {', '.join(PRESETS)} (default: {DEFAULT_CUDA_PRESET} on CUDA, {DEFAULT_CPU_PRESET} on CPU)"),
    ("device", parse_device, "DEVICE", "where to run: auto, cuda or cpu (default: auto = cuda when available)"),
    ("variants", parse_variants, "NAMES",
     "comma-separated variants, or all (default: every variant available on the device and dtype)"),
    ("seq-lens", parse_positive_ints, "N,N", "sequence lengths (default: the preset's)"),
    ("head-dims", parse_positive_ints, "D,D", "head dimensions (default: the preset's)"),
    ("batch", parse_positive_int, "B", "batch size (default: the preset's)"),
    ("heads", parse_positive_int, "H", "number of (query) heads (default: the preset's)"),
    ("heads-kv", parse_positive_ints, "N,N",
     "numbers of k/v heads, each dividing heads: below heads is grouped-query attention, 1 multi-query "
     "(default: the preset's, else heads)"),
    ("dtypes", parse_dtypes, "DT,DT", f"dtypes among {', '.join(DTYPES)} (default: the preset's)"),
    ("causal", parse_causal, "BOOL,BOOL", "false, true or false,true (default: the preset's)"),
    ("masks", parse_masks, "LABEL,LABEL",
     "mask labels, e.g. none,causal,causal sliding_window:1024,causal document:8,prefix_lm:0.25 (document "
     "lengths drawn from a fixed seed; prefix_lm takes a fraction of seq_len or a prefix length); each label "
     "sets the cell's causal flag too, so it replaces --attn-causal (default: the preset's)"),
    ("timing", parse_timing, "MODE",
     f"{', '.join(TIMING_MODES)}: the GPU's execution (host launches hidden), host wall clock with a "
     f"synchronize (launches included), or CUDA-graph replay (default: {DEFAULT_TIMING})"),
    ("l2", parse_l2, "flush|warm",
     "CUDA: flush the GPU's L2 cache before every timed call (a buffer twice its size written between the "
     "round's untimed setup and the call, as triton.testing.do_bench does), or leave it warm from the round "
     "before (default: flush on CUDA; CPU has nothing to flush)"),
    ("accuracy", parse_on_off, "on|off",
     "measure every cell's output and gradient errors against a float64 reference (outside the timed region); "
     f"a cell past its bound is wrong and fails the run (default: {DEFAULT_ACCURACY})"),
    ("accuracy-compare-fail", parse_factor, "FACTOR",
     "with --benchmark-compare: fail when a cell's max error grew by more than FACTOR against that run "
     f"(default: {DEFAULT_ACCURACY_COMPARE_FACTOR:g})"),
    ("shard", parse_shard, "I/N",
     "measure only shard I of N of the grid (I from 1 to N): every cell lands in exactly one shard, shards "
     "balanced by predicted cost; `attnbench merge` joins the N runs into one (default: the whole grid)"),
    ("shard-by", parse_shard_unit, "cell|shape",
     "what --attn-shard splits: single cells (the best balance), or shapes, every variant of one shape in one "
     "shard, so that each comparison between variants is measured in one process on one device (default: cell)"),
    ("memory-compare-fail", parse_percent, "PCT",
     "fail when a cell's saved bytes, memory before backward or peak grows by more than PCT%% against "
     "--benchmark-compare's run, or a cell measured there is not measured now (default: off)"),
]
# (name, help): flags, off by default.
FLAG_OPTIONS = [
    ("flush-l2", "the same as --attn-l2 flush, the default on CUDA (kept for older command lines)"),
    ("timing-check", "also time every CUDA benchmark with plain CUDA events and save it as "
                     "extra_info.event_median_s (default: off)"),
]


#: what a flag's ini twin may say (pytest's own spellings of a boolean)
INI_BOOLEANS = {"": False, "false": False, "0": False, "no": False, "off": False, "n": False, "f": False,
                "true": True, "1": True, "yes": True, "on": True, "y": True, "t": True}


def dest(name: str) -> str:
    return "attn_" + name.replace("-", "_")


def add_options(parser: pytest.Parser) -> None:
    """Register the ``--attn-*`` options and their ini twins."""
    group = parser.getgroup("attnbench", "attnbench: attention benchmark grid")
    for name, parse, metavar, help_text in VALUE_OPTIONS:
        group.addoption(f"--attn-{name}", dest=dest(name), type=parse, metavar=metavar, default=None, help=help_text)
        parser.addini(dest(name), help=help_text.replace("%%", "%"), type="string", default="")
    for name, help_text in FLAG_OPTIONS:
        group.addoption(f"--attn-{name}", dest=dest(name), action="store_true", default=None, help=help_text)
        parser.addini(dest(name), help=help_text, type="string", default="")  # parsed by resolve(), naming the key


def resolve(config: pytest.Config) -> dict:
    """Every option's value: the command line, else its ini twin, else None (flags: False)."""
    values = {}
    for name, parse, _, _ in VALUE_OPTIONS:
        value = config.getoption(dest(name))
        if value is None:
            raw = config.getini(dest(name))
            if raw:
                try:
                    value = parse(raw)
                except argparse.ArgumentTypeError as exc:
                    raise pytest.UsageError(f"ini option {dest(name)} = {raw!r}: {exc}") from None
        values[name] = value
    for name, _ in FLAG_OPTIONS:
        value = config.getoption(dest(name))
        if value is None:
            raw = config.getini(dest(name)).strip().lower()
            if raw not in INI_BOOLEANS:
                raise pytest.UsageError(f"ini option {dest(name)} = {raw!r} is not a boolean; allowed: "
                                        f"{', '.join(k for k in INI_BOOLEANS if k)} (empty: false)")
            value = INI_BOOLEANS[raw]
        values[name] = value
    return values
