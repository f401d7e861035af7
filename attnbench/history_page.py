"""The history as one static page: ``DIR/index.html``, self-contained (its data, script and styles inline).

The page opens from disk with no network: no CDN, no font, no external script. Its data is one JSON object in
``<script type="application/json" id="history-data">``::

    metrics       {name: {label, kind}}                   the figures followed (attnbench.history.METRICS)
    axes          [name, ...]                              the grid's axes, the filters
    environments  [{label, commits: [{id, time, branch, runs, planted}],
                    cells: [{key, params, status?, series: {metric: {v, q1?, q3?, lo?, hi?}}}]}]
    steps         [{env, cell, metric, commit, at, before, after, ratio, noise, p, verdict}]  newest first
    skipped       [{path, reason}]

Series are arrays over the environment's commits (null where the cell has no figure), values rounded to
SIGNIFICANT_DIGITS. The script (``history_page.js``) builds the filters and the steps table, and draws a cell's
plots (SVG) only when its card scrolls into view, so that a page of thousands of cells stays responsive.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path

from .grid import AXES
from .history import METRICS, History
from .record import write_atomically

PAGE_NAME = "index.html"
SIGNIFICANT_DIGITS = 4
#: the browser window a screenshot is taken in, in CSS pixels.
SCREENSHOT_SIZE = (1400, 1800)
#: seconds to wait for the page to draw its plots before a screenshot.
SCREENSHOT_WAIT_S = 20


class BrowserUnavailable(Exception):
    """No headless browser can be driven here; the message says what is missing."""


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _column(values: list) -> list:
    return [_round(v) for v in values]


def page_data(history: History) -> dict:
    """The JSON object the page embeds."""
    environments = []
    for env in history.environments:
        cells = []
        for key, metrics in env.series.items():
            series = {}
            for metric, s in metrics.items():
                entry = {"v": _column(s.values)}
                if any(q is not None for q in s.q1):
                    entry.update(q1=_column(s.q1), q3=_column(s.q3))
                if s.run_values is not None:
                    entry.update(lo=_column(s.low), hi=_column(s.high))
                series[metric] = entry
            cell = {"key": key, "params": env.params[key], "series": series}
            if any(status not in ("ok", None) for status in env.status[key]):
                cell["status"] = env.status[key]
            cells.append(cell)
        environments.append({
            "label": env.label,
            "commits": [{"id": c.commit.id, "time": c.commit.time.isoformat(), "branch": c.commit.branch,
                         "runs": len(c.runs), "planted": bool(c.plants)} for c in env.commits],
            "cells": cells,
        })
    labels = {env.label: i for i, env in enumerate(history.environments)}
    steps = [{"env": labels[s.environment], "cell": s.cell, "metric": s.metric, "commit": s.commit.id,
              "at": s.commit_index, "time": s.commit.time.isoformat(), "before": _round(s.before),
              "after": _round(s.after), "ratio": _round(s.ratio), "noise": _round(s.noise_multiple),
              "p": _round(s.p_value), "verdict": s.verdict} for s in history.steps]
    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": {name: {"label": m.label, "kind": m.kind} for name, m in METRICS.items()},
        "axes": list(AXES),
        "environments": environments,
        "steps": steps,
        "skipped": [{"path": s.path, "reason": s.reason} for s in history.skipped],
        "runs": history.runs_read,
    }


def _asset(name: str) -> str:
    return files("attnbench").joinpath(name).read_text()


def html(history: History) -> str:
    """The whole page."""
    # Every "<" escaped: "</script" would end the script element and "<!--" would put the tokenizer in a state
    # where the element never ends (a branch named feature/<!--<script> blanked the page); "\u003c" reads
    # back as the same string. "\u2028"/"\u2029" are escaped by json.dumps' ensure_ascii already.
    data = json.dumps(page_data(history), separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return (_asset("history_page.html")
            .replace("/*STYLE*/", _asset("history_page.css"))
            .replace("/*SCRIPT*/", _asset("history_page.js"))
            .replace("/*DATA*/", data))


def write(history: History, directory: Path) -> Path:
    """Write ``directory/index.html`` (in one step: a reader never sees half a page); returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PAGE_NAME
    write_atomically(path, html(history).encode())
    return path


# -- a real browser


def chromium_driver():
    """A headless Chromium driven by selenium; BrowserUnavailable naming what is missing otherwise."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
    except ImportError:
        raise BrowserUnavailable("selenium is not installed (pip install -e '.[test]')") from None
    import shutil

    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                  None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        raise BrowserUnavailable("no Chromium with chromedriver on PATH (Debian: apt-get install chromium "
                                 "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={SCREENSHOT_SIZE[0]},{SCREENSHOT_SIZE[1]}"):
        options.add_argument(flag)
    try:
        return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    except WebDriverException as exc:
        raise BrowserUnavailable(f"Chromium did not start: {exc.msg or exc}") from None


def screenshot(page: Path, png: Path) -> None:
    """Open ``page`` in headless Chromium, wait until it has drawn the plots in view, and save a PNG."""
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium_driver()
    try:
        driver.get(Path(page).resolve().as_uri())
        WebDriverWait(driver, SCREENSHOT_WAIT_S).until(
            lambda d: d.execute_script("return window.historyPage && window.historyPage.ready"))
        driver.execute_script("return window.historyPage.renderVisible()")
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(png)):
            raise BrowserUnavailable(f"Chromium could not write {png}")
    except TimeoutException:
        raise BrowserUnavailable(f"the page had not drawn its plots after {SCREENSHOT_WAIT_S} s in Chromium") from None
    except WebDriverException as exc:
        raise BrowserUnavailable(f"Chromium failed: {exc.msg or type(exc).__name__}") from None
    finally:
        driver.quit()
