"""Reading a saved run: pytest-benchmark's JSON plus attnbench's cell records, as one table of cells."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .grid import cell_key

DEFAULT_STORAGE = ".benchmarks"


class RunError(Exception):
    """A run file that cannot be used; the message says what to do."""


@dataclass
class CellResult:
    """Everything a run knows about one cell: the record, and each pass's benchmark entry."""

    key: str
    info: dict
    status: str
    message: str = ""
    passes: dict[str, dict] = field(default_factory=dict)  # pass -> pytest-benchmark entry

    def median_s(self, pass_name: str) -> float | None:
        entry = self.passes.get(pass_name)
        return entry["stats"]["median"] if entry else None

    def extra(self, key: str):
        for entry in self.passes.values():
            if key in entry.get("extra_info", {}):
                return entry["extra_info"][key]
        return self.info.get(key)


@dataclass
class Run:
    path: Path
    data: dict
    cells: dict[str, CellResult]

    @property
    def env(self) -> dict:
        return self.data.get("machine_info", {}).get("attnbench", {}).get("env", {})

    @property
    def machine(self) -> dict:
        return self.data.get("machine_info", {}).get("attnbench", {})

    @property
    def device_label(self) -> str:
        """The GPU's name for a run on CUDA; "CPU (brand)" for a run on the CPU, also on a machine with a GPU."""
        ran_on = (self.data.get("attnbench") or {}).get("device")
        if ran_on != "cpu" and self.env.get("gpu_name"):
            return self.env["gpu_name"]
        return f"CPU ({self.data.get('machine_info', {}).get('cpu', {}).get('brand_raw', 'unknown')})"


def newest_run(storage: str | Path = DEFAULT_STORAGE) -> Path:
    """The most recently saved run under ``storage`` (pytest-benchmark's --benchmark-autosave layout)."""
    runs = sorted(Path(storage).glob("*/*.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise RunError(
            f"no saved runs under {storage}/; run `pytest benchmarks --benchmark-autosave` first, or pass RUN.json"
        )
    return runs[-1]


RUN_HINT = "pass the JSON written by `pytest benchmarks --benchmark-autosave` (under .benchmarks/) or --benchmark-json"


def read_run_json(path: str | Path, role: str = "run") -> dict:
    """A saved pytest-benchmark run as a dict; RunError naming the ``role`` and what to do otherwise."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RunError(f"{role} file {path} does not exist (no such file); {RUN_HINT}") from None
    except OSError as exc:
        raise RunError(f"cannot read {role} file {path}: {exc.strerror}; {RUN_HINT}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{role} file {path} is not JSON, not readable as JSON ({exc}); {RUN_HINT}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list) or "machine_info" not in data:
        raise RunError(f"{role} file {path} is not a pytest-benchmark run (no 'benchmarks' or 'machine_info'); "
                       f"{RUN_HINT}")
    return data


def load_run(path: str | Path) -> Run:
    """Load a saved run with its cells; RunError (with advice) when the file is missing, unreadable or not a run."""
    path = Path(path)
    data = read_run_json(path)
    cells: dict[str, CellResult] = {}
    for record in data.get("attnbench", {}).get("cells", []):
        cells[record["key"]] = CellResult(record["key"], record, record["status"], record.get("message", ""))
    for entry in data["benchmarks"]:
        info = entry.get("extra_info", {})
        if "variant" not in info or "pass" not in info:
            continue  # not an attnbench benchmark
        key = cell_key(info)
        cell = cells.setdefault(key, CellResult(key, info, "ok"))
        cell.passes[info["pass"]] = entry
    return Run(path, data, cells)
