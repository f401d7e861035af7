"""Accuracy in every cell: the measurement and its bound, the ``wrong`` status in a run, and the gate's rules.

Planted errors (``ATTNBENCH_PLANT=wrong:VARIANT:REL``) stand in for a fast but wrong kernel.
"""

from __future__ import annotations

import json

import pytest
import torch
from suite_runs import run_suite, tiny_suite_run

from attention_impls import VARIANTS
from attnbench import accuracy, cli, record
from attnbench.grid import cell_key

PLANTED = "tiled"


def qkv(batch=2, heads=2, seq_q=33, seq_k=33, head_dim=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, s, head_dim, generator=g, dtype=torch.float32).to(dtype)
               for s in (seq_q, seq_k, seq_k))
    grad_out = torch.randn(batch, heads, seq_q, head_dim, generator=g).to(dtype)
    return q, k, v, grad_out


def attention_of(name: str, causal: bool = False, rel_error: float = 0.0):
    fn = VARIANTS[name].fn
    return lambda q, k, v: fn(q, k, v, causal=causal) * (1 + rel_error)


@pytest.mark.parametrize("name", ["naive", "tiled", "weights_only", "sdpa_math"])
@pytest.mark.parametrize("causal", [False, True])
def test_right_variants_are_within_their_bound(name, causal):
    q, k, v, grad_out = qkv()
    acc = accuracy.measure(attention_of(name, causal), q, k, v, grad_out, causal=causal, plain_fits=True)
    assert acc.wrong == [], f"{name}: {acc.describe_wrong()}"
    assert acc.plain_fits and set(acc.tensors) == set(accuracy.TENSORS)
    for t in acc.tensors.values():
        assert 0 <= t.max_abs_error <= t.bound and t.plain_max_abs_error is not None and t.rel_rms_error < 1e-5


def test_each_tensor_records_its_reference_magnitude():
    """ref_max_abs lets a saved run be judged against another bound: the float64 reference's largest value."""
    from attention_impls.reference import reference

    q, k, v, grad_out = qkv()
    acc = accuracy.measure(attention_of("naive"), q, k, v, grad_out, causal=False, plain_fits=True)
    want = reference(q.double(), k.double(), v.double(), causal=False)[0].abs().max().item()
    assert acc.tensors["out"].ref_max_abs == pytest.approx(want, rel=1e-12)
    assert all(t.ref_max_abs > 0 for t in acc.tensors.values())


def test_a_planted_relative_error_is_wrong_in_every_tensor():
    q, k, v, grad_out = qkv()
    acc = accuracy.measure(attention_of("naive", rel_error=1e-3), q, k, v, grad_out, causal=False, plain_fits=True)
    assert acc.wrong == list(accuracy.TENSORS), acc.describe_wrong()
    assert "out: max error" in acc.describe_wrong() and "> bound" in acc.describe_wrong()
    assert all(acc.ratio_to_plain(name) > 100 for name in accuracy.TENSORS)


def test_a_result_with_nan_or_inf_is_wrong_and_counted():
    def broken(q, k, v):
        out = VARIANTS["naive"].fn(q, k, v)
        mask = torch.zeros_like(out)
        mask[0, 0, 0, :3] = float("nan")
        mask[0, 0, 1, :2] = float("inf")
        return out + mask

    acc = accuracy.measure(broken, *qkv(), causal=False, plain_fits=True)
    out = acc.tensors["out"]
    assert (out.nan_count, out.inf_count, out.max_abs_error) == (3, 2, None)
    assert "out" in acc.wrong and "3 NaN, 2 Inf" in acc.describe_wrong()


def test_an_exactly_zero_reference_does_not_fail_a_right_answer():
    """With one key, softmax is 1 whatever the scores: dq and dk are exactly zero in float64 (and in the
    plain computation), so only the floor separates a right answer's round-off from a failure."""
    q, k, v, grad_out = qkv(seq_q=7, seq_k=1)

    def off_by_round_off(q, k, v):  # a right answer that is not bit-exact: noise of a few ulps on q's path
        return VARIANTS["tiled"].fn(q * (1 + 4 * torch.finfo(q.dtype).eps), k, v)

    acc = accuracy.measure(off_by_round_off, q, k, v, grad_out, causal=False, plain_fits=True)
    for name in ("dq", "dk"):
        t = acc.tensors[name]
        assert t.plain_max_abs_error < 1e-6 * acc.floor, f"{name}: the plain computation is exact but for round-off"
        assert t.max_abs_error > 3 * t.plain_max_abs_error, f"{name}: without the floor this right answer would fail"
        assert t.bound == pytest.approx(acc.floor) and t.max_abs_error <= t.bound, f"{name}: {t}"
    assert acc.wrong == []


def test_without_the_plain_computation_the_bound_is_the_floor():
    q, k, v, grad_out = qkv()
    acc = accuracy.measure(attention_of("naive"), q, k, v, grad_out, causal=False, plain_fits=False)
    assert not acc.plain_fits and acc.wrong == []
    for t in acc.tensors.values():
        assert t.plain_max_abs_error is None and t.bound == acc.floor
    assert acc.ratio_to_plain("out") is None


def test_the_floor_scales_with_the_dtype_and_the_problem():
    q, k, v, grad_out = qkv()
    small = accuracy.measure(attention_of("naive"), q, k, v, grad_out, causal=False, plain_fits=True)
    big = accuracy.measure(attention_of("naive"), 8 * q, 8 * k, 8 * v, grad_out, causal=False, plain_fits=True)
    half = accuracy.measure(attention_of("naive"), *(t.to(torch.float64) for t in (q, k, v, grad_out)),
                            causal=False, plain_fits=True)
    eps = torch.finfo(torch.float32).eps
    assert big.floor >= accuracy.FLOOR_ULPS * eps * (8 * v).abs().max().item() and big.floor > 4 * small.floor, (
        "the floor follows the problem's magnitude")
    assert half.floor == pytest.approx(small.floor * torch.finfo(torch.float64).eps / torch.finfo(torch.float32).eps,
                                       rel=0.5)


HALF = [torch.bfloat16, torch.float16]


def half_cases():
    """Every variant that runs on CPU in half precision, on small shapes: plain, causal, GQA, a mask."""
    from attention_impls import masks

    shapes = [(64, 16, False, 2, None), (97, 64, True, 2, None), (128, 32, False, 1, None), (33, 8, False, 2, None),
              (128, 64, True, 2, masks.sliding_window(16))]
    for dtype in HALF:
        for name, variant in VARIANTS.items():
            if variant.unavailable_reason("cpu", dtype) or name in ("compiled", "flex"):
                continue  # compiled/flex: a graph per shape, checked in test_masks.py
            for seq, head_dim, causal, heads_kv, mask in shapes:
                if variant.support_reason(mask, heads=2, heads_kv=heads_kv) or variant.check_head_dim(head_dim):
                    continue
                dtype_name = str(dtype).removeprefix("torch.")
                yield pytest.param(name, dtype, seq, head_dim, causal, heads_kv, mask,
                                   id=f"{name}-{dtype_name}-s{seq}-d{head_dim}-{'causal' if causal else 'full'}"
                                      f"-kv{heads_kv}{'-' + type(mask).__name__ if mask else ''}")


@pytest.mark.parametrize(("name", "dtype", "seq", "head_dim", "causal", "heads_kv", "mask"), list(half_cases()))
def test_half_precision_bound_passes_right_variants_and_catches_a_3_percent_error(name, dtype, seq, head_dim, causal,
                                                                                   heads_kv, mask):
    """In fp16 and bf16 the floor follows each tensor's own magnitude: a right variant is within its bound, an
    output 3% off, all zeros or NaN is wrong (with the problem-scale floor alone, 30% off passed in bf16)."""
    from attention_impls.reference import plain_yardstick

    variant = VARIANTS[name]
    g = torch.Generator().manual_seed(seq + head_dim)
    q = torch.randn(1, 2, seq, head_dim, generator=g).to(dtype)
    k, v = (torch.randn(1, heads_kv, seq, head_dim, generator=g).to(dtype) for _ in range(2))
    grad_out = torch.randn(1, 2, seq, head_dim, generator=g).to(dtype)

    def measure(planted):
        def attention(q, k, v):
            return planted(variant.fn(q, k, v, causal=causal, mask=mask))

        return accuracy.measure(attention, q, k, v, grad_out, causal=causal, plain_fits=True,
                                yardstick=plain_yardstick(variant, causal, mask), mask=mask)

    right = measure(lambda out: out)
    assert right.wrong == [], f"{name}: {right.describe_wrong()}"
    for planted, what in ((lambda out: out * 1.03, "3% off"), (lambda out: out * 0, "zeros"),
                          (lambda out: out * float("nan"), "NaN")):
        acc = measure(planted)
        assert "out" in acc.wrong, f"{name} {what}: out passed ({acc.tensors['out']})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fp32_and_fp64_floors_are_those_of_the_problem_scale(dtype):
    """Where the problem-scale term is the larger (fp32, fp64), every tensor's floor is the one it always was:
    FLOOR_ULPS ulps of the problem's largest magnitude."""
    q, k, v, grad_out = qkv(dtype=dtype)
    acc = accuracy.measure(attention_of("naive"), q, k, v, grad_out, causal=False, plain_fits=True)
    scale = max(t.abs().max().item() for t in (q, k, v, grad_out))
    for name, t in acc.tensors.items():
        assert t.floor == acc.floor >= accuracy.FLOOR_ULPS * torch.finfo(dtype).eps * scale, name


def test_half_precision_floors_follow_each_tensor():
    q, k, v, grad_out = qkv(dtype=torch.bfloat16)
    acc = accuracy.measure(attention_of("naive"), q, k, v, grad_out, causal=False, plain_fits=True)
    eps = torch.finfo(torch.bfloat16).eps
    for name, t in acc.tensors.items():
        assert t.floor == pytest.approx(max(eps * t.ref_max_abs, accuracy.FLOOR_ULPS * 2**-23 * 4), rel=0.5), name
        assert t.floor < 0.02 * t.ref_max_abs, f"{name}: the floor alone would pass a 2% error"
    assert acc.floor == max(t.floor for t in acc.tensors.values())


def test_a_run_saved_before_per_tensor_floors_reads_with_the_cell_floor():
    t = accuracy.TensorError(1e-3, 1e-3, 1e-3, 5e-3, ref_max_abs=None, floor=None)
    acc = accuracy.Accuracy({name: t for name in accuracy.TENSORS}, True, 2e-3)
    assert acc.floor_of("out") == 2e-3


# -- through the suite


@pytest.fixture(scope="module")
def wrong_run(tmp_path_factory):
    return run_suite(tmp_path_factory.mktemp("wrong") / "wrong.json", env={"ATTNBENCH_PLANT": f"wrong:{PLANTED}:1e-3"})


def test_every_cell_records_its_accuracy(tmp_path_factory):
    run = record.load(tiny_suite_run(tmp_path_factory).json_path)
    for key, rec in run.cells.items():
        assert rec.status == "ok" and rec.accuracy is not None, f"{key}: {rec.status}, accuracy {rec.accuracy}"
        assert rec.accuracy.plain_fits and rec.accuracy.wrong == []
        assert rec.accuracy_s is not None and rec.accuracy_s > 0, f"{key}: the check's seconds are saved"
        assert all(t.ref_max_abs > 0 for t in rec.accuracy.tensors.values()), f"{key}: reference magnitudes saved"


def test_a_wrong_cell_fails_the_run_names_it_and_the_grid_goes_on(wrong_run):
    assert wrong_run.returncode == 1, f"wrong results must fail `pytest benchmarks`:\n{wrong_run.output[-3000:]}"
    run = record.load(wrong_run.json_path)
    wrong = {k for k, rec in run.cells.items() if rec.status == "wrong"}
    assert wrong == {k for k in run.cells if k.startswith(f"{PLANTED}-")}, f"exactly the planted cells: {wrong}"
    assert all(len(rec.passes) == 2 for rec in run.cells.values()), "wrong cells are still timed, the rest too"
    summary = wrong_run.output.split("= attnbench =")[-1]
    assert f"FAIL: {len(wrong)} cell(s) computed wrong results" in summary, summary
    for key in wrong:
        assert f"  {key}: wrong: out: max error" in summary, summary


def test_accuracy_off_records_nothing_and_does_not_fail(tmp_path):
    run = run_suite(tmp_path / "off.json", "--attn-accuracy", "off", env={"ATTNBENCH_PLANT": f"wrong:{PLANTED}:1e-3"})
    assert run.returncode == 0, run.output[-3000:]
    cells = run.data()["attnbench"]["cells"]
    assert all("accuracy" not in c and c["status"] == "ok" for c in cells)


def gate(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["gate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_gate_flags_exactly_the_wrong_cells_even_when_time_is_not_judged(tmp_path_factory, wrong_run, capsys):
    baseline = tiny_suite_run(tmp_path_factory).json_path
    code, out, err = gate(capsys, baseline, wrong_run.json_path, "--time", "median:100000")
    assert code == 1, f"a change that makes results wrong fails the gate:\n{out}{err}"
    flagged = {line.split("`")[1] for line in out.splitlines() if "**regression**" in line}
    assert flagged == {k for k in record.load(baseline).cells if k.startswith(f"{PLANTED}-")}, out
    metrics = {line.split("|")[2].strip() for line in out.splitlines() if "**regression**" in line}
    assert "status" in metrics and "out max error" in metrics, metrics


def _scaled_error(data: dict, key: str, tensor: str, factor: float) -> None:
    cell = next(c for c in data["attnbench"]["cells"] if cell_key(c) == key)
    cell["accuracy"]["tensors"][tensor]["max_abs_error"] = factor * max(
        cell["accuracy"]["tensors"][tensor]["max_abs_error"], cell["accuracy"]["floor"])


@pytest.mark.parametrize(("factor", "flagged"), [(3.0, False), (5.0, True)])
def test_the_gate_flags_an_error_that_grew_past_the_factor(tmp_path_factory, tmp_path, capsys, factor, flagged):
    baseline = tiny_suite_run(tmp_path_factory)
    data = baseline.data()
    key = "naive-s64-d16-b2-h2-fp32-full"
    _scaled_error(data, key, "dk", factor)
    current = tmp_path / "grown.json"
    current.write_text(json.dumps(data))
    code, out, _ = gate(capsys, baseline.json_path, current, "--time", "median:100000")
    assert (code == 1) == flagged, f"an error {factor}x larger, default factor 4:\n{out}"
    assert (f"| `{key}` | dk max error" in " ".join(out.split("  "))) == flagged or not flagged
    code, out, _ = gate(capsys, baseline.json_path, current, "--time", "median:100000", "--accuracy", "2")
    assert code == 1, f"--accuracy 2 flags a {factor}x growth:\n{out}"


@pytest.mark.parametrize("value", ["0.5", "nan", "inf", "x"])
def test_bad_accuracy_factor_is_a_usage_error(tmp_path_factory, capsys, value):
    path = tiny_suite_run(tmp_path_factory).json_path
    with pytest.raises(SystemExit) as exc:
        cli.main(["gate", str(path), str(path), "--accuracy", value])
    assert exc.value.code == 2 and "factor" in capsys.readouterr().err


def test_reader_refuses_a_wrong_cell_without_its_accuracy(tmp_path_factory, tmp_path, capsys):
    data = tiny_suite_run(tmp_path_factory).data()
    data["attnbench"]["cells"][0]["status"] = "wrong"
    del data["attnbench"]["cells"][0]["accuracy"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(record.RunError, match="status wrong but no accuracy record"):
        record.load(path)
