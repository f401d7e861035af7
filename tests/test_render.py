"""``attnbench.render``: markdown tables that never break, and units written the same way everywhere."""

from __future__ import annotations

import math

import pytest

from attnbench import render
from attnbench.render import MISSING, duration, gb, gib, mib, ms, percent, size, table, tflops

NOT_FINITE = [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")]


def cells(markdown: str) -> list[list[str]]:
    """A GitHub table read back the way GitHub splits it: on unescaped pipes, cells stripped, separator dropped."""
    lines = markdown.split("\n")
    assert set(lines[1]) <= set("|-:"), f"second line must be the header separator, got {lines[1]!r}"
    rows = []
    for line in [lines[0], *lines[2:]]:
        assert line.startswith("| ") and line.endswith(" |"), f"a row is framed by pipes, got {line!r}"
        parts, cell, escaped = [], "", False
        for char in line[1:-1]:
            if char == "|" and not escaped:
                parts.append(cell.strip())
                cell = ""
            else:
                cell += char
            escaped = char == "\\" and not escaped
        rows.append([*parts, cell.strip()])
    return rows


def test_table_is_a_github_table_of_the_cells_given():
    text = table(["variant", "fwd ms", "n×n"], [["naive", "8224.0", 2], ["tiled", "1e3", None]])
    lines = text.split("\n")
    assert len(lines) == 4 and not text.endswith("\n"), f"header, separator, two rows, no trailing newline:\n{text!r}"
    assert len({len(line) for line in lines}) == 1, f"columns are padded to one width:\n{text}"
    assert cells(text) == [["variant", "fwd ms", "n×n"], ["naive", "8224.0", "2"], ["tiled", "1e3", "None"]], (
        "every cell is str(cell) exactly: numeric-looking strings are not reformatted"
    )


def test_a_pipe_or_newline_in_a_cell_does_not_break_the_table():
    text = table(["cell", "note"], [["a|b", "first line\nsecond line"], ["`x | y`", "ok"]])
    assert len(text.split("\n")) == 4, f"a newline in a cell must not start a new row:\n{text}"
    assert cells(text) == [["cell", "note"], ["a\\|b", "first line<br>second line"], ["`x \\| y`", "ok"]], text


def test_a_table_without_rows_still_has_its_header():
    assert cells(table(["a", "b"], [])) == [["a", "b"]]


def test_a_row_with_the_wrong_number_of_cells_is_refused():
    with pytest.raises(ValueError, match=r"row 2 has 1 cells, expected 2"):
        table(["a", "b"], [["1", "2"], ["3"]])


@pytest.mark.parametrize(("seconds", "text"), [
    (None, MISSING), (0.0123456, "12.3"), (4.56e-5, "0.0456"), (0.0999, "99.9"), (0.1234, "123"),
    (12.3456, "12346"), (0.0, "0"), *NOT_FINITE,
])
def test_ms_has_three_significant_figures_below_100_and_whole_numbers_above(seconds, text):
    assert ms(seconds) == text, f"ms({seconds!r}) should be {text!r}, got {ms(seconds)!r}"


@pytest.mark.parametrize(("formatter", "nbytes", "text"), [
    (mib, 8224 * 2**20, "8224.0"), (mib, 1.5 * 2**20, "1.5"), (mib, 0, "0.0"), (mib, None, MISSING),
    (gib, 80 * 10**9, "74.5"), (gib, 2**30, "1.0"), (gib, None, MISSING),
    (gb, 68_753_883_136, "68.8"), (gb, 80 * 2**30, "85.9"), (gb, None, MISSING),
    *[(f, value, t) for f in (mib, gib, gb) for value, t in NOT_FINITE],
])
def test_fixed_unit_sizes_have_one_decimal(formatter, nbytes, text):
    assert formatter(nbytes) == text, f"{formatter.__name__}({nbytes!r}) should be {text!r}"


@pytest.mark.parametrize(("seconds", "text"), [
    (2.5, "2.5 s"), (1.0, "1 s"), (0.00123456, "1.235 ms"), (1e-3, "1 ms"), (0.000999, "999 µs"),
    (4.2e-5, "42 µs"), (7.5e-8, "75 ns"), (0, "0 ns"), (-0.002, "-2 ms"), (None, MISSING), *NOT_FINITE,
])
def test_duration_picks_the_unit_and_keeps_four_significant_figures(seconds, text):
    assert duration(seconds) == text, f"duration({seconds!r}) should be {text!r}, got {duration(seconds)!r}"


@pytest.mark.parametrize(("nbytes", "text"), [
    (3 * 2**30, "3 GiB"), (2**40, "1024 GiB"), (2**30 - 1, "1024 MiB"), (1234567, "1.177 MiB"),
    (1536, "1.5 KiB"), (1024, "1 KiB"), (1023, "1023 B"), (512, "512 B"), (0, "0 B"), (None, MISSING), *NOT_FINITE,
])
def test_size_picks_the_binary_unit_and_keeps_four_significant_figures(nbytes, text):
    assert size(nbytes) == text, f"size({nbytes!r}) should be {text!r}, got {size(nbytes)!r}"


@pytest.mark.parametrize(("fraction", "signed", "text"), [
    (0.123, False, "12.3%"), (0.0004, False, "0.0%"), (1.5, False, "150.0%"), (0.123, True, "+12.3%"),
    (-0.05, True, "-5.0%"), (0.0, True, "+0.0%"), (None, False, MISSING), (math.nan, True, "nan"),
    (math.inf, False, "inf"),
])
def test_percent_writes_a_fraction_with_one_decimal(fraction, signed, text):
    assert percent(fraction, signed=signed) == text, f"percent({fraction!r}, signed={signed}) should be {text!r}"


@pytest.mark.parametrize(("flop_per_s", "text"), [
    (312.456e12, "312.46"), (6e9, "0.01"), (None, MISSING), *NOT_FINITE,
])
def test_tflops_has_two_decimals(flop_per_s, text):
    assert tflops(flop_per_s) == text, f"tflops({flop_per_s!r}) should be {text!r}"


def test_every_formatter_takes_none_and_non_finite_values():
    formatters = [ms, mib, gib, gb, duration, size, percent, tflops]
    assert {name for name in render.__all__ if callable(getattr(render, name))
            and name not in ("table", "text", "code")} == {
        f.__name__ for f in formatters
    }, "a new formatter must be added to this test"
    for formatter in formatters:
        assert formatter(None) == MISSING, f"{formatter.__name__}(None) should be {MISSING!r}"
        for value, text in NOT_FINITE:
            assert formatter(value) == text, f"{formatter.__name__}({value}) should show {text!r}"


@pytest.mark.parametrize(("raw", "absent"), [
    ("<img src=x onerror=alert(1)>", "<img"),
    ("[click](https://example.com)", "[click]("),
    ("see https://example.com/x", "https://"),
    ("www.example.com", "www.example"),
    ("**bold** _it_ `code` ~~gone~~", "**"),
    ("feature/<!--<script>", "<!--"),
])
def test_text_from_a_run_never_renders_as_markup(raw, absent):
    shown = render.text(raw)
    assert absent not in shown, shown
    assert "\n" not in render.text("two\nlines")


def test_code_spans_hold_any_backticks():
    assert render.code("plain") == "`plain`"
    assert render.code("a``b") == "```a``b```"
    assert render.code("`x") == "`` `x ``"
