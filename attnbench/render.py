"""The one place tables and numbers are turned into text: every command's markdown goes through here.

Tables are GitHub markdown, written by tabulate::

    table(headers, rows) -> str   one markdown table, no trailing newline; every cell is str(cell),
                                  with "|" escaped and newlines made <br>, so a cell never breaks the table

Numbers carry their unit in the formatter's name; each takes the raw SI quantity (seconds, bytes, a
fraction, FLOP/s), returns :data:`MISSING` for ``None`` and ``"nan"``/``"inf"``/``"-inf"`` for values
that are not finite (a broken measurement shows up, it neither crashes nor hides)::

    ms(seconds)          "12.3", "0.0456", "1234": milliseconds, 3 significant figures below 100, whole above
    mib(nbytes)          "8224.0": MiB, one decimal
    gib(nbytes)          "80.0": GiB, one decimal
    gb(nbytes)           "68.7": decimal gigabytes (10⁹ bytes), one decimal
    duration(seconds)    "1.234 ms": scaled to s, ms, µs or ns, 4 significant figures, with the unit
    size(nbytes)         "1.5 GiB": scaled to GiB, MiB, KiB or B, 4 significant figures, with the unit
    percent(fraction)    "12.3%" (signed=True: "+12.3%"): a fraction as a percentage, one decimal
    tflops(flop_per_s)   "312.45": TFLOP/s, two decimals

Text from a run (labels, reasons, paths: anything a user or a run file chose) goes through ``text`` or
``code`` before it meets markdown, so that it shows as written and never renders as markup::

    text(value)          emphasis, code and link punctuation backslash-escaped, <, > and & as entities
    code(value)          a code span that holds any backticks in ``value``

The bare formatters (``ms``, ``mib``, ``gib``, ``gb``, ``tflops``) leave the unit to the column header
("fwd ms", "peak MiB"); ``duration`` and ``size`` pick the unit and write it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from tabulate import tabulate

__all__ = ["MISSING", "code", "duration", "gb", "gib", "mib", "ms", "percent", "size", "table", "text", "tflops"]

#: what a cell shows when there is no value.
MISSING = "–"

MIB = 2**20
GIB = 2**30
GB = 10**9

_DURATION_UNITS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))
_SIZE_UNITS = (("GiB", GIB), ("MiB", MIB), ("KiB", 2**10), ("B", 1))


def table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A GitHub markdown table of ``rows`` under ``headers``; ValueError when a row's length differs."""
    headers = [_cell(h) for h in headers]
    body = []
    for number, row in enumerate(rows, start=1):
        row = [_cell(c) for c in row]
        if len(row) != len(headers):
            raise ValueError(f"row {number} has {len(row)} cells, expected {len(headers)} (one per header): {row}")
        body.append(row)
    # disable_numparse: a cell is printed as given ("8224.0" stays "8224.0", "1e3" stays "1e3")
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


#: what starts emphasis, code, links or strike-through mid-line ("|" is left to table(), which escapes it; "#",
#: "-" and the like only act at a line's start, where this text never stands)
_MARKDOWN_PUNCTUATION = "\\`*_[]~"
_ESCAPES = {c: "\\" + c for c in _MARKDOWN_PUNCTUATION} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def text(value) -> str:
    """``str(value)`` as literal markdown text: no link, image, HTML or emphasis it holds takes effect."""
    escaped = "".join(_ESCAPES.get(c, c) for c in str(value).replace("\r\n", " ").replace("\n", " "))
    # GitHub turns bare URLs into links: an entity in the scheme's colon, or in "www.", keeps them text
    return escaped.replace("://", "&#58;//").replace("www.", "www&#46;")


def code(value) -> str:
    """``str(value)`` as a markdown code span, fenced by more backticks than it holds in a row."""
    value = str(value).replace("\r\n", " ").replace("\n", " ")
    run, longest = 0, 0
    for c in value:
        run = run + 1 if c == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\r\n", "<br>").replace("\n", "<br>")


def _not_finite(value: float) -> str | None:
    """The visible text for nan/±inf, None for a finite number."""
    return None if math.isfinite(value) else str(float(value))


def ms(seconds: float | None) -> str:
    """Milliseconds without the unit: 3 significant figures below 100 ms, a whole number above."""
    if seconds is None:
        return MISSING
    millis = seconds * 1e3
    if (text := _not_finite(millis)) is not None:
        return text
    return f"{millis:.3g}" if millis < 100 else f"{millis:.0f}"


def mib(nbytes: float | None) -> str:
    """Mebibytes (2²⁰ bytes) without the unit, one decimal."""
    return _fixed(nbytes, MIB, 1)


def gib(nbytes: float | None) -> str:
    """Gibibytes (2³⁰ bytes) without the unit, one decimal."""
    return _fixed(nbytes, GIB, 1)


def gb(nbytes: float | None) -> str:
    """Decimal gigabytes (10⁹ bytes, as cards are sold) without the unit, one decimal."""
    return _fixed(nbytes, GB, 1)


def tflops(flop_per_s: float | None) -> str:
    """TFLOP/s (10¹² floating-point operations per second) without the unit, two decimals."""
    return _fixed(flop_per_s, 1e12, 2)


def _fixed(value: float | None, scale: float, decimals: int) -> str:
    if value is None:
        return MISSING
    scaled = value / scale
    if (text := _not_finite(scaled)) is not None:
        return text
    return f"{scaled:.{decimals}f}"


def duration(seconds: float | None) -> str:
    """Seconds in the largest of s, ms, µs, ns that keeps the number at least 1; 4 significant figures."""
    return _scaled(seconds, _DURATION_UNITS)


def size(nbytes: float | None) -> str:
    """Bytes in the largest of GiB, MiB, KiB, B that keeps the number at least 1; 4 significant figures."""
    return _scaled(nbytes, _SIZE_UNITS)


def _scaled(value: float | None, units: tuple[tuple[str, float], ...]) -> str:
    if value is None:
        return MISSING
    if (text := _not_finite(value)) is not None:
        return text
    for unit, scale in units:
        if abs(value) >= scale:
            break
    else:  # below the smallest unit (including 0): written in the smallest
        unit, scale = units[-1]
    return f"{value / scale:.4g} {unit}"


def percent(fraction: float | None, *, signed: bool = False) -> str:
    """A fraction as a percentage with one decimal (0.123 -> "12.3%"); ``signed`` adds "+" to gains."""
    if fraction is None:
        return MISSING
    if (text := _not_finite(fraction * 100)) is not None:
        return text
    return f"{fraction:+.1%}" if signed else f"{fraction:.1%}"
