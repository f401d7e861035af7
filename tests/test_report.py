"""``attnbench report`` on a run the suite itself saved (the tiny CPU grid of tests/suite_runs.py).

Edge cases (OOM cells, a second head_dim, several stored runs) are copies of that run, edited.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from suite_runs import REPO_ROOT, TINY_SEQ_LENS, TINY_VARIANTS, tiny_suite_run

from attention_impls import VARIANTS
from attnbench import cli
from attnbench.grid import cell_key
from attnbench.render import ms as _fmt_ms
from attnbench.render import tflops as _fmt_tflops
from attnbench.report import SEED_CLAIMED_NXN, fit_exponent

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEED_TABLES = ("Forward (ms)", "Backward (ms)", "Saved for backward, census (MiB)")


@pytest.fixture(scope="session")
def run_json(tmp_path_factory) -> Path:
    return tiny_suite_run(tmp_path_factory).json_path


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def report(capsys, *args: str) -> str:
    """``attnbench report ARGS``' markdown; fails unless it exits 0 with nothing on stderr."""
    code = cli.main(["report", *map(str, args)])
    out, err = capsys.readouterr()
    assert code == 0, f"attnbench report {' '.join(map(str, args))} exited {code}:\n{err}"
    assert err == "", f"unexpected stderr: {err}"
    return out


def report_fails(capsys, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``attnbench report ARGS`` that is expected to fail, without a traceback."""
    code = cli.main(["report", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return code, out, err


def section(markdown: str, heading: str) -> str:
    """From ``heading`` to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = markdown.index(heading + "\n") if heading + "\n" in markdown else markdown.index(heading)
    rest = markdown[start + len(heading):]
    stop = re.search(rf"^#{{1,{len(level)}}} ", rest, flags=re.M)
    return rest[: stop.start()] if stop else rest


def table_after(text: str, title: str) -> list[list[str]]:
    """The cells of the first markdown table after ``title`` (header row first, separator dropped)."""
    lines = text[text.index(title):].splitlines()[1:]
    rows = []
    for line in lines:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return [rows[0]] + rows[2:]


def benchmark_medians(data: dict) -> dict[tuple, float]:
    """(variant, pass, seq_len, head_dim) -> median seconds."""
    return {(b["params"]["variant"], b["extra_info"]["pass"], b["params"]["seq_len"],
             b["params"]["head_dim"]): b["stats"]["median"] for b in data["benchmarks"]}


def with_second_head_dim(data: dict, head_dim: int, time_factor: float) -> dict:
    """A copy of the run where every cell also exists at ``head_dim``, ``time_factor`` times as slow."""
    data = copy.deepcopy(data)
    for b in list(data["benchmarks"]):
        twin = copy.deepcopy(b)
        twin["params"]["head_dim"] = head_dim
        for name in ("min", "max", "mean", "median", "q1", "q3", "iqr", "stddev"):  # every round that much slower
            twin["stats"][name] *= time_factor
        if twin["stats"].get("data"):
            twin["stats"]["data"] = [t * time_factor for t in twin["stats"]["data"]]
        twin["name"] = twin["name"].replace("-d16-", f"-d{head_dim}-")
        data["benchmarks"].append(twin)
    for c in list(data["attnbench"]["cells"]):
        twin = copy.deepcopy(c)
        twin["head_dim"] = head_dim
        data["attnbench"]["cells"].append(twin)
    return data


def with_oom(data: dict, key: str, status: str, message: str) -> dict:
    """A copy of the run where cell ``key`` ran out of memory: no benchmarks, its record says so."""
    data = copy.deepcopy(data)
    data["benchmarks"] = [b for b in data["benchmarks"] if cell_key(b["params"]) != key]
    records = [c for c in data["attnbench"]["cells"] if cell_key(c) == key]
    assert records, f"no cell {key} in the run"
    records[0].update(status=status, message=message)
    return data


# -- the seed's tables


def test_three_seed_tables_per_variant(run_json, capsys):
    markdown = report(capsys, run_json)
    data = json.loads(run_json.read_text())
    medians = benchmark_medians(data)
    tables = section(markdown, "## Tables (the seed's layout)")
    for variant in TINY_VARIANTS:
        heading = f"### {variant} · fp32 · non-causal (batch 2 × heads 2)"
        assert heading in tables, f"no seed tables for {variant}:\n{tables[:2000]}"
        block = section(tables, heading)
        for title in SEED_TABLES:
            assert f"**{title}**" in block, f"{variant}: missing table {title!r}"
        for title, pass_name in (("Forward (ms)", "forward"), ("Backward (ms)", "backward")):
            rows = table_after(block, f"**{title}**")
            assert rows[0] == ["seq_len \\ head_dim", "16"], f"{variant} {title}: columns should be head_dims"
            assert [r[0] for r in rows[1:]] == [str(s) for s in TINY_SEQ_LENS], f"{variant}: rows should be seq_lens"
            for row in rows[1:]:
                want = _fmt_ms(medians[(variant, pass_name, int(row[0]), 16)])
                assert row[1] == want, f"{variant} {title} at seq_len {row[0]}: expected {want} ms, got {row[1]}"


def test_rows_are_seq_lens_and_columns_head_dims(run_json, tmp_path, capsys):
    # a second head_dim whose times are 1000x: a transposed or shuffled table cannot match
    data = with_second_head_dim(json.loads(run_json.read_text()), head_dim=32, time_factor=1000.0)
    markdown = report(capsys, write_json(tmp_path / "two_dims.json", data))
    medians = benchmark_medians(data)
    block = section(markdown, "### naive · fp32 · non-causal (batch 2 × heads 2)")
    rows = table_after(block, "**Forward (ms)**")
    assert rows[0] == ["seq_len \\ head_dim", "16", "32"], rows[0]
    for row in rows[1:]:
        seq_len = int(row[0])
        want = [_fmt_ms(medians[("naive", "forward", seq_len, d)]) for d in (16, 32)]
        assert row[1:] == want, f"naive forward at seq_len {seq_len}: expected {want} for head_dims 16, 32"


def test_comparison_lists_every_variant_with_its_measured_nxn_count(run_json, capsys):
    markdown = report(capsys, run_json)
    comparison = section(markdown, "## Comparison")
    largest = max(TINY_SEQ_LENS)
    assert f"### Variants at seq_len {largest}, head_dim 16" in comparison, comparison[:1000]
    rows = table_after(comparison, "### Variants at")
    header, body = rows[0], {r[0]: r for r in rows[1:]}
    assert set(body) == set(TINY_VARIANTS), f"expected a row per variant, got {sorted(body)}"
    measured, claimed = header.index("n×n saved (measured)"), header.index("seed claims")
    for variant, row in body.items():
        assert row[measured] == str(VARIANTS[variant].saved_nxn), f"{variant}: measured n×n count"
        assert row[claimed] == str(SEED_CLAIMED_NXN.get(variant, "–")), f"{variant}: the seed's claim"


def test_scaling_section_has_exponents(run_json, capsys):
    markdown = report(capsys, run_json)
    data = json.loads(run_json.read_text())
    saved = {(c["variant"], c["seq_len"]): c["saved_bytes"] for c in data["attnbench"]["cells"]}
    rows = table_after(markdown, "### Scaling exponents")
    header, body = rows[0], {r[0]: r for r in rows[1:]}
    assert set(body) == set(TINY_VARIANTS)
    for variant, row in body.items():
        for column in ("fwd time ∝ n^", "bwd time ∝ n^"):
            assert re.fullmatch(r"-?\d+\.\d\d", row[header.index(column)]), f"{variant} {column}: {row}"
        want = fit_exponent(list(TINY_SEQ_LENS), [saved[(variant, s)] for s in TINY_SEQ_LENS])
        assert row[header.index("memory ∝ n^")] == f"{want:.2f}", f"{variant}: memory exponent of the census bytes"
    # the census of tiled is linear in seq_len (no n×n tensor); naive keeps n×n ones
    assert body["tiled"][header.index("memory ∝ n^")] == "1.00"
    assert float(body["naive"][header.index("memory ∝ n^")]) > 1.3


@pytest.mark.parametrize(("status", "text"), [("oom-measured", "OOM"), ("oom-predicted", "OOM (pred.)")])
def test_oom_cells_render_as_oom(run_json, tmp_path, capsys, status, text):
    key = "naive-s64-d16-b2-h2-fp32-full"
    message = "CUDA out of memory. Tried to allocate 8.00 GiB"
    path = write_json(tmp_path / "oom.json", with_oom(json.loads(run_json.read_text()), key, status, message))
    markdown = report(capsys, path)
    block = section(markdown, "### naive · fp32 · non-causal (batch 2 × heads 2)")
    for title in SEED_TABLES:
        rows = {r[0]: r[1:] for r in table_after(block, f"**{title}**")[1:]}
        assert rows["64"] == [text], f"{title}: the OOM cell should read {text!r}, got {rows['64']}"
        assert rows["32"] != [text], f"{title}: only seq_len 64 ran out of memory"
    assert f"- `{key}`: {status} ({message})" in section(markdown, "## Not measured"), markdown
    # naive lacks seq_len 64 now, so the like-for-like comparison falls back to 32
    assert "### Variants at seq_len 32," in markdown


def test_plots_are_png_files(run_json, tmp_path, capsys):
    plots = tmp_path / "plots"
    markdown = report(capsys, run_json, "--plots", plots)
    written = sorted(plots.glob("*.png"))
    assert [p.name for p in written] == ["fp32-full-d16.png"], f"one figure per dtype/mask/head_dim: {written}"
    for p in written:
        assert p.read_bytes()[:8] == PNG_SIGNATURE, f"{p.name} is not a PNG"
        assert f"]({p})" in markdown, f"the report should link {p}"


def test_output_file(run_json, tmp_path, capsys):
    out = tmp_path / "docs" / "results.md"
    assert report(capsys, run_json, "-o", out) == ""
    assert out.read_text().startswith("# attnbench results: CPU"), out.read_text()[:200]


@pytest.mark.parametrize(("ran_on", "title"), [("cpu", "# attnbench results: CPU"),
                                               ("cuda", "# attnbench results: NVIDIA H200")])
def test_title_names_the_device_the_run_used(run_json, tmp_path, capsys, ran_on, title):
    """A CPU run on a machine that has a GPU is a CPU run: the GPU's name is in its environment all the same."""
    data = json.loads(run_json.read_text())
    data["machine_info"]["attnbench"]["env"]["gpu_name"] = "NVIDIA H200"
    data["machine_info"]["attnbench"]["env"]["device"] = ran_on
    for c in data["attnbench"]["cells"]:  # a CUDA cell carries the allocator's figures too
        c.update(mem_before_backward_bytes=c["saved_bytes"], peak_bytes=2 * c["saved_bytes"])
    markdown = report(capsys, write_json(tmp_path / "run.json", data))
    assert markdown.splitlines()[0].startswith(title), markdown[:200]


@pytest.mark.parametrize("dirty", [False, True])
def test_header_names_the_commit_and_whether_it_had_changes(run_json, tmp_path, capsys, dirty):
    data = json.loads(run_json.read_text())
    data["commit_info"] = {"id": "0123456789abcdef0123", "dirty": dirty}
    header = report(capsys, write_json(tmp_path / "run.json", data)).split("## Comparison")[0]
    assert "commit 0123456789ab" in header, header
    assert ("(uncommitted changes)" in header) == dirty, header


def test_without_argument_the_newest_stored_run_is_reported(run_json, tmp_path, capsys):
    data = json.loads(run_json.read_text())
    storage = tmp_path / "storage"
    machine = storage / "Linux-CPython-3.11-64bit"
    machine.mkdir(parents=True)
    oom_run = write_json(machine / "0001_oom.json",
                         with_oom(data, "tiled-s32-d16-b2-h2-fp32-full", "oom-measured", "out of memory"))
    plain_run = write_json(machine / "0002_plain.json", data)
    partial = copy.deepcopy(data)
    partial["attnbench"].update(complete=False, stop_reason="interrupted (Ctrl-C)")
    write_json(machine / "incomplete_later.json", partial)  # never the newest run
    os.utime(oom_run, (3_000_000, 3_000_000))  # modified last, but pytest-benchmark orders runs by number
    os.utime(plain_run, (2_000_000, 2_000_000))
    markdown = report(capsys, "--storage", storage)
    assert "Run: `0002_plain.json`" in markdown and "## Not measured" not in markdown, markdown[:600]


# -- files that are not runs: exit 2, a message, no traceback


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    ("{not json", "not readable as JSON"),
    ('{"hello": 1}', "not a pytest-benchmark run"),
    ('{"benchmarks": [], "machine_info": {}}', "no 'attnbench' section"),
    ('{"benchmarks": [], "machine_info": {}, "attnbench": null}', "no 'attnbench' section"),
])
def test_unusable_file_exits_2_with_a_message(tmp_path, capsys, content, message):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    code = cli.main(["report", str(path)])
    out, err = capsys.readouterr()
    assert code == 2, f"expected exit 2, got {code}"
    assert err.startswith("attnbench report: ") and message in err, f"stderr should say {message!r}: {err}"
    assert out == "" and "Traceback" not in err


def test_incomplete_run_is_reported_with_a_warning(run_json, tmp_path, capsys):
    data = json.loads(run_json.read_text())
    key = "naive-s64-d16-b2-h2-fp32-full"
    data["benchmarks"] = [b for b in data["benchmarks"] if cell_key(b["params"]) != key]
    next(c for c in data["attnbench"]["cells"] if cell_key(c) == key).update(
        status="pending", saved_nxn=None, saved_bytes=None)
    data["attnbench"].update(complete=False, stop_reason="interrupted (Ctrl-C)")
    code, out, err = report_fails(capsys, write_json(tmp_path / "partial.json", data))
    assert code == 0 and "WARNING" in err and "incomplete run (interrupted (Ctrl-C))" in err, err
    assert "**Incomplete run:** interrupted (Ctrl-C)" in out, out[:800]
    rows = {r[0]: r[1:] for r in table_after(section(out, "### naive · fp32"), "**Forward (ms)**")[1:]}
    assert rows["64"] == ["not run"], rows


def test_a_run_without_cells_exits_2(run_json, tmp_path, capsys):
    data = json.loads(run_json.read_text())
    data["benchmarks"], data["attnbench"]["cells"] = [], []
    code, _, err = report_fails(capsys, write_json(tmp_path / "empty.json", data))
    assert code == 2 and "holds no cells" in err, err


@pytest.mark.parametrize("where", ["output-is-a-directory", "output-under-a-file", "plots-under-a-file",
                                   "plots-is-a-file"])
def test_output_that_cannot_be_written_is_exit_3_and_nothing_half_written(run_json, tmp_path, capsys, where):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    args = {"output-is-a-directory": ["-o", tmp_path],
            "output-under-a-file": ["-o", a_file / "report.md"],
            "plots-under-a-file": ["--plots", a_file / "plots", "-o", tmp_path / "report.md"],
            "plots-is-a-file": ["--plots", a_file, "-o", tmp_path / "report.md"]}[where]
    code, _, err = report_fails(capsys, run_json, *args)
    assert code == 3 and err.startswith("attnbench report: "), f"expected exit 3, got {code}: {err}"
    assert not (tmp_path / "report.md").exists(), "no markdown is written when the plots cannot be"


def test_output_into_a_missing_directory_creates_it(run_json, tmp_path, capsys):
    out = tmp_path / "new" / "dir" / "report.md"
    assert report(capsys, run_json, "-o", out, "--plots", tmp_path / "new" / "plots") == ""
    assert out.read_text().startswith("# attnbench results"), "the report should be written"


def test_empty_storage_exits_2_with_advice(tmp_path, capsys):
    assert cli.main(["report", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no saved runs under" in err and "--benchmark-autosave" in err, err


def test_missing_file_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "attnbench", "report", str(tmp_path / "missing.json")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, f"expected exit 2, got {proc.returncode}:\n{proc.stderr}"
    assert "no such file" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# -- fit_exponent


@pytest.mark.parametrize(("xs", "ys", "expected"), [
    ([256, 1024, 4096], [3 * x**2 for x in (256, 1024, 4096)], 2.0),
    ([1, 2, 3, 10], [1, 2, 3, 10], 1.0),
    ([32, 64], [5.0, 5.0], 0.0),
    ([7, 97, 1025], [0.5 * x**1.5 for x in (7, 97, 1025)], 1.5),
])
def test_fit_exponent_of_exact_power_laws(xs, ys, expected):
    assert fit_exponent(xs, ys) == pytest.approx(expected, abs=1e-12), f"y ∝ x^{expected}"


@pytest.mark.parametrize(("xs", "ys"), [
    ([], []),
    ([1024], [3.0]),
    ([1024, 1024], [1.0, 4.0]),  # no spread in x
    ([256, 1024], [None, 2.0]),  # a missing measurement leaves one point
    ([256, 1024], [0.0, 2.0]),
])
def test_fit_exponent_of_degenerate_input_is_none(xs, ys):
    assert fit_exponent(xs, ys) is None


def test_fit_exponent_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        fit_exponent([1, 2, 3], [1, 2])


def test_masks_and_gqa_get_tables_and_plots_of_their_own(tmp_path, capsys):
    """Cells that differ only in mask or k/v heads are different work: the report never mixes them."""
    from suite_runs import run_suite

    run = run_suite(tmp_path / "masked.json", "--attn-variants", "naive,tiled", "--attn-heads", "2",
                    "--attn-heads-kv", "1,2", "--attn-masks", "none,causal sliding_window:8")
    assert run.returncode == 0, run.output[-3000:]
    text = report(capsys, str(run.json_path), "--plots", str(tmp_path / "plots"))
    for heading in ("### tiled · fp32 · non-causal (", "### tiled · fp32 · non-causal, GQA 2:1 (",
                    "### tiled · fp32 · causal sliding_window:8 (",
                    "### tiled · fp32 · causal sliding_window:8, GQA 2:1 ("):
        assert heading in text, f"no table {heading!r} in:\n{text[:3000]}"
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert plots == ["fp32-causal-sliding_window8-d16.png", "fp32-causal-sliding_window8-gqa2-d16.png",
                     "fp32-full-d16.png", "fp32-full-gqa2-d16.png"], plots


def test_a_grid_at_fixed_tokens_and_width_is_headed_by_them(capsys):
    """The fa2-paper grid (batch × seq_len = 16384, heads × head_dim = 2048, an H200 run kept in docs/results):
    ten (batch, heads) pairs per table, headed by the two products instead of the list."""
    run = REPO_ROOT / "docs" / "results" / "NVIDIA-H200" / "2026-11-29-fa2-paper-accuracy.json.gz"
    tables = section(report(capsys, run), "## Tables (the seed's layout)")
    headings = [line for line in tables.splitlines() if line.startswith("### ")]
    assert len(headings) == 18 and all(
        h.endswith("(batch × seq_len = 16384 tokens, heads × head_dim = 2048)") for h in headings), headings[:3]
    assert "### triton_flash · bf16 · causal (batch × seq_len" in tables


def test_side_by_side_tables_each_mode_with_a_column_per_variant(capsys):
    """Every (dtype, mode, head_dim) that several variants ran gets TFLOP/s and memory with a column per variant;
    a value is the cell's FLOPs over its median (the fa2-paper H200 run kept in docs/results)."""
    path = REPO_ROOT / "docs" / "results" / "NVIDIA-H200" / "2026-11-29-fa2-paper-accuracy.json.gz"
    from attnbench import record

    run = record.load(path)
    block = section(report(capsys, path), "## Side by side")
    headings = [line for line in block.splitlines() if line.startswith("### ")]
    assert headings == [f"### bf16 · {mode} · head_dim {d} (batch × seq_len = 16384 tokens, heads × head_dim = 2048)"
                        for mode in ("non-causal", "causal") for d in (64, 128)], headings
    table = section(block, "### bf16 · causal · head_dim 128")
    rows = table_after(table, "**TFLOP/s, forward / backward**")
    variants = rows[0][1:]
    assert variants[-1] == "triton_flash" and "sdpa_cudnn" in variants
    row = next(r for r in rows[1:] if r[0] == "16384")
    cell = run.cells["triton_flash-s16384-d128-b1-h16-bf16-causal"]
    want = " / ".join(_fmt_tflops(cell.passes[p].flops / cell.passes[p].median_s) for p in ("forward", "backward"))
    assert row[-1] == want, f"triton_flash at 16384: {row[-1]!r}, expected {want!r}"
    memory = table_after(table, "**Memory before backward (MiB)**")
    assert [r[0] for r in memory[1:]] == ["1024", "2048", "4096", "8192", "16384"]


def test_the_memory_model_check_predicts_each_cell_with_its_own_heads_kv_and_mask():
    """The report's model check predicts a GQA or masked cell as that cell (k/v with heads_kv heads, the mask's
    saved tensors), not as the plain cell of its shape: on the H200's flex-preset run every figure is then within
    5% of the model (predicted as plain cells, GQA cells looked 60% off)."""
    from attnbench.record import load
    from attnbench.report import memory_model_check

    run = load(REPO_ROOT / "docs" / "results" / "NVIDIA-H200" / "2026-11-29-flex-seq8192-16384.json.gz")
    lines = "\n".join(memory_model_check(run)).splitlines()
    rows = [line for line in lines if re.match(r"\| (sdpa|flex|triton)", line)]
    errors = {tuple(cell.strip() for cell in line.split("|")[1:3]): float(line.split("|")[3].strip().rstrip("%"))
              for line in rows}
    assert len(errors) == 12, rows
    assert max(errors.values()) <= 5.0, errors


TARGETS_RUN = REPO_ROOT / "docs" / "results" / "NVIDIA-H200" / "2026-11-29-flex-targets.json.gz"


def test_a_ratio_is_the_second_variants_median_time_over_the_firsts():
    from attnbench.record import load
    from attnbench.report import ratio_section

    run = load(TARGETS_RUN)
    cells = {(r.cell.variant, r.cell.causal, r.cell.mask, r.cell.heads_kv, r.cell.seq_len): r for r in run.cells.values()}
    mine, theirs = (cells[(v, True, "sliding_window:1024", 16, 8192)] for v in ("triton_flash", "flex"))
    expected = (f"{theirs.median_s('forward') / mine.median_s('forward'):.2f} / "
                f"{theirs.median_s('backward') / mine.median_s('backward'):.2f}")
    text = "\n".join(ratio_section(run, "triton_flash", "flex"))
    table = text.split("**bf16 · causal sliding_window:1024**", 1)[1].split("**", 1)[0]
    row = next(line for line in table.splitlines() if line.startswith("| 128"))
    assert [c.strip() for c in row.split("|")[1:-1]][2] == expected, (row, expected)  # columns 4096, 8192, 16384
    # sdpa_flash has no window mask: the pair exists only where both ran
    flex_fa2 = "\n".join(ratio_section(run, "flex", "sdpa_flash"))
    assert "sliding_window" not in flex_fa2 and "**bf16 · causal**" in flex_fa2
    assert "No cell was timed for both" in "\n".join(ratio_section(run, "flex", "naive"))


@pytest.mark.parametrize(("args", "message"), [
    (["--ratio", "triton_flash/cudnn"], "--ratio names cudnn, not in"),
    (["--ratio", "triton_flash"], "is not A/B"),
    (["--ratio", "a/b/c"], "is not A/B"),
])
def test_a_bad_ratio_is_exit_2_naming_what_is_expected(capsys, args, message):
    from attnbench import cli

    try:
        code = cli.main(["report", str(TARGETS_RUN), *args])
    except SystemExit as exc:  # argparse's own usage error
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_report_onto_its_own_run_is_refused_and_the_run_kept(run_json, tmp_path, capsys):
    run = tmp_path / "run.json"
    run.write_bytes(run_json.read_bytes())
    code, _, err = report_fails(capsys, run, "-o", run)
    assert code == 2 and "is the run being reported" in err, err
    assert run.read_bytes() == run_json.read_bytes(), "the run was overwritten"
