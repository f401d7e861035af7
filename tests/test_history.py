"""``attnbench history``: runs across commits pooled per environment, steps found where they begin and nowhere
else, untrusted runs listed, and a page that draws in a real browser.

The runs are synthetic (tests/history_runs.py, written through attnbench.record's writer), except one test that
copies the tiny CPU suite run to several commits.
"""

from __future__ import annotations

import copy
import json
import math
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from history_runs import ENV, cell_record, commit, grid, make_run, save
from hypothesis import given, settings
from hypothesis import strategies as st
from suite_runs import tiny_suite_run

from attnbench import cli, history, history_page
from attnbench.history import CommitPoint, EnvironmentHistory, Series
from attnbench.record import commit_info, run_data

COMMITS = 14
STEP_AT = 8
SCREENSHOT_ENV = "ATTNBENCH_HISTORY_SCREENSHOT"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["history", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return code, out, err


def found(h: history.History) -> set[tuple[str, str, int]]:
    return {(s.cell, s.metric, s.commit_index) for s in h.steps}


@pytest.fixture(scope="module")
def cells():
    return grid()


@pytest.fixture(scope="module")
def stepped_storage(tmp_path_factory, cells):
    """14 commits; from commit STEP_AT the forward and backward times of three cells are 25% slower, one cell's
    memory grows by half from commit 5, and one cell spikes 2× at commit 4 only."""
    slow = {cells[0].key, cells[9].key, cells[17].key}
    spike, bigger = cells[3].key, cells[7].key
    store = tmp_path_factory.mktemp("history") / ".benchmarks" / "Linux-CPython-3.11-64bit"
    rng = np.random.default_rng(13)

    def time_factor(key, index):
        return 1.25 if key in slow and index >= STEP_AT else 2.0 if key == spike and index == 4 else 1.0

    for index in range(COMMITS):
        data = make_run(index, cells, rng, time_factor=time_factor,
                        memory_factor=lambda key, i: 1.5 if key == bigger and i >= 5 else 1.0)
        save(data, store / f"{index + 1:04d}_run.json", compress=index % 2 == 0)
    expected = {(key, metric, STEP_AT) for key in slow for metric in ("forward_time", "backward_time")}
    expected |= {(bigger, metric, 5) for metric in ("mem_before_backward_bytes", "peak_bytes", "saved_bytes")}
    return store.parent, expected


# -- steps


def test_planted_steps_are_found_at_their_commit_in_exactly_those_cells(stepped_storage):
    storage, expected = stepped_storage
    h = history.build_history([storage])
    assert h.runs_read == COMMITS and not h.skipped, h.skipped
    assert found(h) == expected, (f"missing {sorted(expected - found(h))}, unexpected {sorted(found(h) - expected)}"
                                  " (the spike at commit 4 must not be a step)")
    for step in h.steps:
        assert step.regression and step.noise_multiple >= history.STEP_NOISE_MULTIPLE
        want = 1.25 if step.metric.endswith("time") else 1.5
        assert step.ratio == pytest.approx(want, rel=0.05), f"{step.cell} {step.metric}: ×{step.ratio:.3f}"
        assert step.commit.id == commit(step.commit_index).id


def test_an_improvement_is_a_step_too(tmp_path, cells):
    rng = np.random.default_rng(3)
    for index in range(10):
        save(make_run(index, cells[:4], rng, time_factor=lambda key, i: 0.5 if key == cells[1].key and i >= 6 else 1),
             tmp_path / f"{index}.json")
    h = history.build_history([tmp_path])
    assert found(h) == {(cells[1].key, m, 6) for m in ("forward_time", "backward_time")}
    assert all(s.verdict == "improvement" and s.ratio == pytest.approx(0.5, rel=0.05) for s in h.steps)


def _noise_history(rng: np.random.Generator, series_count: int, commits: int, sigma: float) -> EnvironmentHistory:
    """An environment whose every series is lognormal noise around 1 ms, nothing else."""
    points = [CommitPoint(commit(i), [f"run{i}"], []) for i in range(commits)]
    series = {}
    for k in range(series_count):
        values = list(1e-3 * np.exp(rng.normal(0, sigma, commits)))
        nothing = [None] * commits
        series[f"cell{k}"] = {"forward_time": Series(values, nothing, nothing, values, values, nothing)}
    return EnvironmentHistory((("device", "test"),), points, {k: {} for k in series},
                              {k: ["ok"] * commits for k in series}, series, {})


@pytest.mark.parametrize("commits", [8, 30, 200])
def test_noise_alone_makes_almost_no_steps(commits):
    rng = np.random.default_rng(commits)
    steps = history.find_steps(_noise_history(rng, 1000, commits, sigma=0.02))
    assert len(steps) <= 3, f"{len(steps)} steps found in 1000 series of pure noise over {commits} commits: {steps[:5]}"


def test_a_step_stands_out_of_noise_of_any_size():
    """The same step in noisier series: found while it is several σ, not found once it drowns."""
    rng = np.random.default_rng(5)
    for sigma, step, expected in ((0.005, 1.05, True), (0.02, 1.3, True), (0.1, 1.1, False)):
        env = _noise_history(rng, 1, 20, sigma)
        s = env.series["cell0"]["forward_time"]
        s.values[12:] = [v * step for v in s.values[12:]]
        steps = history.find_steps(env)
        assert bool(steps) == expected and all(x.commit_index == 12 for x in steps), (sigma, step, steps)


def test_a_spike_that_comes_back_is_not_a_step_but_one_that_stays_is():
    """One commit off is a spike; two commits off is a change and its undoing; from a commit on is one step."""
    rng = np.random.default_rng(9)
    for start, end, expected in ((6, 7, []), (19, 20, []), (6, 8, [6, 8]), (6, 20, [6]), (18, 20, [18])):
        env = _noise_history(rng, 1, 20, 0.01)
        s = env.series["cell0"]["forward_time"]
        s.values[start:end] = [v * 3 for v in s.values[start:end]]
        assert [x.commit_index for x in history.find_steps(env)] == expected, (start, end)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-50, 50, allow_nan=False), min_size=4, max_size=40),
       penalty=st.floats(0.5, 30))
def test_change_points_are_the_minimum_ruptures_pelt_finds(values, penalty):
    rpt = pytest.importorskip("ruptures", reason="ruptures (the reference PELT) is in the test extra")
    signal = np.array(values)
    ours = history.optimal_partitions(signal[None, :], penalty)[0]
    reference = rpt.Pelt(model="l2", min_size=history.MIN_SEGMENT, jump=1).fit(signal).predict(pen=penalty)[:-1]

    def objective(cuts):
        bounds = [0, *cuts, len(signal)]
        return sum(float(((signal[a:b] - signal[a:b].mean()) ** 2).sum()) for a, b in zip(bounds, bounds[1:])) \
            + penalty * (len(cuts) + 1)

    # never worse than ruptures' PELT (whose pruning with min_size > 1 can miss the minimum; ties may break
    # differently), and no change point closer than MIN_SEGMENT to another or to an end
    assert objective(ours) <= objective(reference) + 1e-6, (ours, reference)
    bounds = [0, *ours, len(signal)]
    assert all(b - a >= history.MIN_SEGMENT for a, b in zip(bounds, bounds[1:])), ours


def test_rank_test_of_saved_rounds_is_reported(tmp_path, cells):
    rng = np.random.default_rng(21)
    for index in range(10):
        save(make_run(index, cells[:2], rng, rounds=30,
                      time_factor=lambda key, i: 1.2 if key == cells[0].key and i >= 5 else 1.0),
             tmp_path / f"{index}.json")
    h = history.build_history([tmp_path])
    assert found(h) == {(cells[0].key, m, 5) for m in ("forward_time", "backward_time")}
    assert all(s.p_value is not None and s.p_value < 1e-6 for s in h.steps), h.steps


# -- pooling, environments, skipped runs


def test_runs_of_one_commit_are_pooled(tmp_path, cells):
    rng = np.random.default_rng(1)
    medians = {}
    for index in range(6):
        for repeat in range(3):
            data = make_run(index, cells[:2], rng)
            medians.setdefault(index, []).append(data["benchmarks"][0]["stats"]["median"])
            save(data, tmp_path / f"{index}-{repeat}.json")
    h = history.build_history([tmp_path])
    [env] = h.environments
    assert [len(c.runs) for c in env.commits] == [3] * 6
    key = data["benchmarks"][0]["params"]
    s = env.series[cells[0].key]["forward_time"]
    assert key["variant"] == cells[0].variant
    for index, values in medians.items():
        assert s.values[index] == pytest.approx(float(np.median(values)))
        assert (s.low[index], s.high[index]) == (min(values), max(values))
    page = history_page.page_data(h)
    assert page["environments"][0]["commits"][0]["runs"] == 3
    assert "lo" in page["environments"][0]["cells"][0]["series"]["forward_time"]


def test_environments_never_share_a_line(tmp_path, cells):
    """Runs with another torch, interleaved by commit and twice as slow, make a second line and no step."""
    rng = np.random.default_rng(2)
    for index in range(12):
        save(make_run(index, cells[:3], rng), tmp_path / f"a{index}.json")
        if index % 2:
            save(make_run(index, cells[:3], rng, env={"torch": "2.14.0"}, time_factor=lambda k, i: 2.0),
                 tmp_path / f"b{index}.json")
    save(make_run(3, cells[:3], rng, env={"driver": "560.1"}), tmp_path / "driver.json")  # another major driver
    h = history.build_history([tmp_path])
    labels = [env.label for env in h.environments]
    assert len(labels) == 3 and len(set(labels)) == 3, labels
    counts = sorted(len(env.commits) for env in h.environments)
    assert counts == [1, 6, 12], counts
    assert not h.steps, [(s.environment, s.cell, s.metric) for s in h.steps]


def test_untrusted_runs_are_skipped_and_listed(tmp_path, cells, capsys):
    rng = np.random.default_rng(4)
    for index in range(6):
        save(make_run(index, cells[:2], rng), tmp_path / f"{index}.json")
    save(make_run(6, cells[:2], rng, complete=False, stop_reason="interrupted (Ctrl-C)"), tmp_path / "partial.json")
    save(make_run(7, cells[:2], rng, commit=None), tmp_path / "no-commit.json")
    dirty = make_run(8, cells[:2], rng)
    dirty["commit_info"] = commit_info(commit(8, dirty=True))
    save(dirty, tmp_path / "dirty.json")
    broken = make_run(9, cells[:2], rng)
    broken["benchmarks"][0]["stats"]["median"] = "fast"
    save(broken, tmp_path / "broken.json")
    (tmp_path / "not-json.json").write_text("{")
    code, out, err = run_cli(capsys, tmp_path)
    assert code == 0, err
    reasons = {"partial.json": "incomplete run (interrupted (Ctrl-C))", "no-commit.json": "no commit with its time",
               "dirty.json": "uncommitted changes", "broken.json": "stats.median is 'fast'",
               "not-json.json": "not JSON"}
    for name, reason in reasons.items():
        row = next((line for line in out.splitlines() if name in line), None)
        assert row is not None and reason in row, f"{name} should be listed as skipped with {reason!r}:\n{out}"
    assert "6 run(s) read at 6 commit(s)" in out and "5 run(s) skipped" in out


def test_a_real_cpu_run_copied_to_several_commits(tmp_path_factory, tmp_path):
    """The suite's own saved run, as if measured at 6 commits: a cell made 3× slower from commit 3 is a step."""
    tiny = tiny_suite_run(tmp_path_factory)
    base = tiny.data()
    slow_key = base["attnbench"]["cells"][0]
    slow_name = next(b["fullname"] for b in base["benchmarks"] if b["extra_info"]["pass"] == "forward"
                     and all(b["params"][a] == slow_key[a] for a in b["params"]))
    rng = np.random.default_rng(0)
    for index in range(6):
        data = copy.deepcopy(base)
        data["commit_info"] = commit_info(commit(index))
        for b in data["benchmarks"]:
            factor = float(np.exp(rng.normal(0, 0.01))) * (3.0 if b["fullname"] == slow_name and index >= 3 else 1.0)
            for stat in ("min", "max", "mean", "median", "q1", "q3", "iqr", "stddev"):
                if stat in b["stats"]:
                    b["stats"][stat] *= factor
            b["stats"].pop("data", None)
        (tmp_path / f"{index:04d}_cpu.json").write_text(json.dumps(data))
    h = history.build_history([tmp_path])
    [env] = h.environments
    assert env.label.startswith("CPU (") and env.label.endswith("timing device")
    assert {(s.metric, s.commit_index) for s in h.steps} == {("forward_time", 3)}, h.steps
    assert "mem_before_backward_bytes" not in next(iter(env.series.values())), "a CPU run has no allocator figures"


# -- the command


def test_cli_writes_page_and_markdown(stepped_storage, tmp_path, capsys):
    storage, expected = stepped_storage
    summary = tmp_path / "summary.md"
    summary.write_text("earlier\n")
    code, out, err = run_cli(capsys, storage, "--html", tmp_path / "site", "--markdown", summary, "--workers", "1")
    assert code == 0, err
    assert summary.read_text() == "earlier\n" + out + "\n", "the summary is appended, as GITHUB_STEP_SUMMARY wants"
    assert f"{len(expected)} step(s) ({len(expected)} regression(s)" in out
    for key, metric, index in expected:
        assert any(f"`{key}`" in line and history.METRICS[metric].label in line and commit(index).short_id in line
                   for line in out.splitlines()), f"{key} {metric} missing from the summary"
    page = (tmp_path / "site" / "index.html").read_text()
    assert "<script src" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page, "the page must not load anything from the network"
    data = json.loads(page.split('id="history-data">', 1)[1].split("</script>", 1)[0])
    assert {(s["cell"], s["metric"], s["at"]) for s in data["steps"]} == expected
    assert len(data["environments"][0]["cells"]) == 24


def test_default_source_is_the_benchmarks_folder(stepped_storage, capsys, monkeypatch):
    storage, _ = stepped_storage
    monkeypatch.chdir(storage.parent)
    code, out, _ = run_cli(capsys)
    assert code == 0 and f"{COMMITS} run(s) read" in out


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/nothing-here"], "no such file or folder"),
    (["{tmp}/empty"], "no run files"),
    (["{tmp}/bad.json"], "not JSON"),
    (["{tmp}/empty", "--screenshot", "{tmp}/x.png"], "--screenshot needs --html"),
])
def test_nothing_readable_is_exit_2_with_the_reason(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("[")
    code, out, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and message in err and out == "", err


def test_bad_arguments_are_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["history", "--workers", "0"])
    assert exc.value.code == 2 and "not positive" in capsys.readouterr().err


def test_unwritable_outputs_are_exit_3(stepped_storage, tmp_path, capsys):
    storage, _ = stepped_storage
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, storage, "--html", blocker / "site")
    assert code == 3 and "cannot write" in err
    code, _, err = run_cli(capsys, storage, "--markdown", tmp_path / "no" / "such" / "summary.md")
    assert code == 3 and "cannot write --markdown" in err


# -- the page in a real browser


@pytest.fixture(scope="module")
def browser():
    try:
        driver = history_page.chromium_driver()
    except history_page.BrowserUnavailable as exc:
        pytest.skip(f"no headless browser: {exc}")
    yield driver
    driver.quit()


def test_page_draws_filters_and_lists_the_step_in_chromium(stepped_storage, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    storage, expected = stepped_storage
    page = history_page.write(history.build_history([storage]), tmp_path / "site")
    browser.get(page.as_uri())
    WebDriverWait(browser, 20).until(
        lambda d: d.execute_script("return window.historyPage && window.historyPage.ready"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] if hasattr(browser, "get_log") else []
    assert not errors, errors

    rows = browser.find_elements(By.CSS_SELECTOR, "#steps tbody tr")
    listed = {(r.get_attribute("data-cell"), r.get_attribute("data-metric")) for r in rows}
    assert listed == {(key, metric) for key, metric, _ in expected}, listed
    assert all(commit(STEP_AT).short_id in r.text or commit(5).short_id in r.text for r in rows)

    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert len(cards) == 24
    for card in cards:  # every card draws its plots when scrolled to
        browser.execute_script("arguments[0].scrollIntoView()", card)
        WebDriverWait(browser, 10).until(lambda d: len(card.find_elements(By.CSS_SELECTOR, "svg.plot")) == 3)
        assert card.find_elements(By.CSS_SELECTOR, "svg.plot path.series"), f"{card.get_attribute('id')}: no lines"
    stepped_card = browser.find_element(By.ID, f"cell-0-{next(iter(expected))[0]}")
    assert stepped_card.find_elements(By.CSS_SELECTOR, "line.step-regression"), "the step is marked on its plot"

    def shown() -> int:
        return sum(c.is_displayed() for c in cards)

    browser.execute_script("window.scrollTo(0, 0)")
    box = browser.find_element(By.CSS_SELECTOR, "fieldset[data-axis=variant] input[value=naive]")
    box.click()
    naive = sum("naive-" in c.get_attribute("id") for c in cards)
    assert shown() == 24 - naive, "unticking a variant hides its cells"
    assert all(c.get_attribute("id").split("-", 2)[2].split("-")[0] != "naive" for c in cards if c.is_displayed())
    box.click()
    assert shown() == 24, "ticking it again shows them"
    browser.find_element(By.ID, "only-steps").click()
    assert shown() == len({key for key, _, _ in expected}), "only the cells with a step"
    browser.find_element(By.ID, "only-steps").click()

    # hover shows the commit and its numbers
    from selenium.webdriver.common.action_chains import ActionChains

    plot = stepped_card.find_element(By.CSS_SELECTOR, "svg.plot rect")
    browser.execute_script("arguments[0].scrollIntoView()", stepped_card)
    ActionChains(browser).move_to_element(plot).perform()
    tooltip = browser.find_element(By.ID, "tooltip")
    assert tooltip.is_displayed() and "commit " in tooltip.text and "2026-01-05" in tooltip.text, tooltip.text

    browser.execute_script("window.scrollTo(0, 0)")
    shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "history.png")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_cli_screenshot(stepped_storage, tmp_path, capsys, browser):
    storage, _ = stepped_storage
    code, _, err = run_cli(capsys, storage, "--html", tmp_path / "site", "--screenshot", tmp_path / "page.png")
    assert code == 0, err
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _NeverReadyDriver:
    """A browser whose page never says it has drawn (a hung page, a slow machine), or whose driver fails."""

    def __init__(self, fail=None):
        self.fail, self.quit_called = fail, False

    def get(self, url):
        if self.fail:
            raise self.fail

    def execute_script(self, script):
        return False

    def quit(self):
        self.quit_called = True


@pytest.mark.parametrize("case", ["never-ready", "driver-fails"])
def test_cli_screenshot_timeout_or_browser_failure_is_exit_3_naming_it(stepped_storage, tmp_path, capsys,
                                                                        monkeypatch, case):
    pytest.importorskip("selenium")
    from selenium.common.exceptions import WebDriverException

    from attnbench import history_page

    driver = _NeverReadyDriver(WebDriverException("chrome not reachable") if case == "driver-fails" else None)
    monkeypatch.setattr(history_page, "chromium_driver", lambda: driver)
    monkeypatch.setattr(history_page, "SCREENSHOT_WAIT_S", 0.2)
    storage, _ = stepped_storage
    code, _, err = run_cli(capsys, storage, "--html", tmp_path / "site", "--screenshot", tmp_path / "page.png")
    assert code == 3 and "Traceback" not in err, err
    said = ("the page had not drawn its plots after 0.2 s" if case == "never-ready"
            else "Chromium failed: chrome not reachable")
    assert f"cannot take the screenshot: {said}" in err and driver.quit_called, err
    assert not (tmp_path / "page.png").exists()


# -- a large history: measured, not judged by time


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ATTNBENCH_SLOW"), reason="opt-in: ATTNBENCH_SLOW=1 writes 1000 runs of "
                                                                 "300 cells (about 0.5 GB) and times the history")
def test_history_of_1000_runs_of_300_cells(tmp_path, benchmark):
    cells = grid(variants=("naive", "torch_softmax", "weights_only", "tiled", "sdpa_flash"),
                 seq_lens=(256, 512, 1024, 2048, 4096, 8192), head_dims=(16, 32, 64, 128, 256), dtypes=("fp32", "bf16"))
    assert len(cells) == 300
    rng = np.random.default_rng(0)
    template = run_data([cell_record(c, rng) for c in cells], env=ENV, commit=commit(0))
    data = copy.deepcopy(template)
    for index in range(1000):  # a template scaled per run keeps writing 1000 runs to seconds
        data["commit_info"] = commit_info(commit(index))
        data["datetime"] = (commit(index).time + timedelta(minutes=30)).isoformat()
        for b, original in zip(data["benchmarks"], template["benchmarks"]):
            factor = math.exp(rng.normal(0, 0.01)) * (1.1 if index >= 600 and b["params"]["variant"] == "tiled" else 1)
            for stat in ("min", "max", "mean", "median", "q1", "q3", "iqr"):
                b["stats"][stat] = original["stats"][stat] * factor
        save(data, tmp_path / "runs" / f"{index:04d}_run.json")

    def build():
        h = history.build_history([tmp_path / "runs"], workers=min(os.cpu_count() or 1, 8))
        history_page.write(h, tmp_path / "site")
        return h

    h = benchmark.pedantic(build, rounds=1, iterations=1)
    assert h.runs_read == 1000 and len(h.environments[0].series) == 300
    tiled = {s.cell for s in h.steps if s.metric == "forward_time" and s.commit_index == 600}
    assert tiled == {c.key for c in cells if c.variant == "tiled"}, f"{len(tiled)} tiled cells' step found at 600"
    print(f"\n1000 runs × 300 cells: read, steps found and page written in {benchmark.stats['median']:.1f} s; "
          f"page {(tmp_path / 'site' / 'index.html').stat().st_size / 2**20:.1f} MiB; {len(h.steps)} steps")



HOSTILE = "feature/<!--<script>"


def test_a_page_with_markup_in_its_data_still_runs_and_shows_it_as_text(cells, tmp_path, browser):
    """A valid git branch name such as feature/<!--<script> (here in an environment label) put the HTML
    tokenizer in a state where the data's script element never ended: a blank page. Every "<" inside the
    script element is escaped now."""
    store = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    rng = np.random.default_rng(3)
    for index in range(3):
        save(make_run(index, cells, rng, env={"gpu_name": HOSTILE}), store / f"{index + 1:04d}_run.json")
    page = history_page.write(history.build_history([store.parent]), tmp_path / "site")
    text = page.read_text()
    data_script = text.split('id="history-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data_script, "no raw '<' inside the data's script element"
    browser.get(page.as_uri())
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 20).until(
        lambda d: d.execute_script("return window.historyPage && window.historyPage.ready"))
    assert HOSTILE in browser.execute_script("return document.body.innerText"), "the label shows as text"


def test_the_markdown_summary_shows_labels_and_reasons_as_text(cells, tmp_path):
    store = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    rng = np.random.default_rng(5)
    for index in range(2):
        save(make_run(index, cells, rng, env={"gpu_name": "<img src=x onerror=alert(1)>"}),
             store / f"{index + 1:04d}_run.json")
    (store / "0003_[link](https:__example.com).json").write_text("{")  # skipped, its name and reason listed
    summary = history.markdown(history.build_history([store.parent]))
    assert "<img" not in summary and "&lt;img src=x onerror=alert(1)&gt;" in summary, summary
    assert "0003_[link](https:__example.com).json`" in summary, "a skipped run's path shows in a code span"
