"""Reading a saved run: pytest-benchmark's JSON plus attnbench's cell records, as one table of cells."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

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
        return self.env.get("gpu_name") or f"CPU ({self.data.get('machine_info', {}).get('cpu', {}).get('brand_raw', 'unknown')})"


def newest_run(storage: str | Path = DEFAULT_STORAGE) -> Path:
    """The most recently saved run under ``storage`` (pytest-benchmark's --benchmark-autosave layout)."""
    runs = sorted(Path(storage).glob("*/*.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise RunError(
            f"no saved runs under {storage}/; run `pytest benchmarks --benchmark-autosave` first, or pass RUN.json"
        )
    return runs[-1]


def cell_key(info: dict) -> str:
    mask = "causal" if info["causal"] else "full"
    return f"{info['variant']}-s{info['seq_len']}-d{info['head_dim']}-b{info['batch']}-h{info['heads']}-{info['dtype']}-{mask}"


def load_run(path: str | Path) -> Run:
    """Load a saved run; RunError (with advice) when the file is missing, unreadable or not a run."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(data, dict) or "benchmarks" not in data or "machine_info" not in data:
        raise RunError(f"{path}: not a pytest-benchmark run (no 'benchmarks'/'machine_info'); "
                       "save one with `pytest benchmarks --benchmark-autosave` or --benchmark-json=FILE")
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
