"""The study report (tokencarbon.report, rule build_report) of the tiny CPU study, opened in a real
headless chromium (tests/browser.py): each chart draws one point per cell, the page asks for
nothing but itself, hovering a point names the cell with its flags and interval, the SLO slider
stars the least-carbon cell meeting it, and the headline table quotes the paper beside ours.

The report is the one `all` built in the shared tiny_run fixture (those tests are marked slow);
expected counts are worked out from the tiny study's config (.test/config-cpu/config.yaml), values
from its metrics table. The energy-budget slider is tested on a small study the test writes
itself (no Snakemake), its stars worked out by hand.
"""

from __future__ import annotations

import pandas as pd
import pytest

from browser import Browser, chromium
from tokencarbon.report import ReportInputs, write_report

slow = pytest.mark.slow

# .test/config-cpu: one platform (cpu), three models, static batch sizes 1 and 2, continuous
# max_num_seqs 2: three cells per model, nine in all, in two traces per model (static, continuous).
MODELS = ("tiny-gpt2", "tiny-llama", "tiny-llama-int8")
CELLS = {f"cpu/{m}/{c}" for m in MODELS for c in ("bs1", "bs2", "cb2")}
TRACES = {f"{m} on cpu, {mode}" for m in MODELS for mode in ("static", "continuous")}
CHARTS = (
    "chart-carbon-latency",
    "chart-energy-latency",
    "chart-energy-batch",
    "chart-throughput-latency",
)

# Per chart: each trace's name, meta and the SVG points the browser drew for it.
TRACE_POINTS = """(id => {
  const gd = document.getElementById(id);
  return gd._fullData.map(t => ({name: t.name, meta: t.meta,
    points: gd.querySelectorAll('.trace' + t.uid + ' path.point').length}));
})(%r)"""
# Every cell point of chart `id`: [trace name, index in the trace, page x, page y], scrolled into view.
ALL_POINTS = """(id => {
  const gd = document.getElementById(id);
  gd.scrollIntoView({block: 'center'});
  const out = [];
  gd._fullData.filter(t => t.meta === 'cells').forEach(t =>
    gd.querySelectorAll('.trace' + t.uid + ' path.point').forEach((p, i) => {
      const r = p.getBoundingClientRect();
      out.push([t.name, i, r.x + r.width / 2, r.y + r.height / 2]);
    }));
  return out;
})(%r)"""
HOVER_TEXT = "document.querySelector('#%s .hoverlayer').textContent"
RAIL = """(() => {
  const gd = document.getElementById('chart-carbon-latency');
  gd.scrollIntoView({block: 'center'});
  const r = gd.querySelector('.slider-rail-touch-rect').getBoundingClientRect();
  return [r.left, r.right, r.y + r.height / 2];
})()"""
STARS = """(() => {
  const gd = document.getElementById('chart-carbon-latency');
  return gd.data.find(t => t.meta === 'optimum').hovertext.map(h => h.split('</b>')[0].slice(3));
})()"""


@pytest.fixture(scope="module")
def report(tiny_run):
    return tiny_run / "results/report.html"


@pytest.fixture(scope="module")
def metrics(tiny_run) -> pd.DataFrame:
    return pd.read_parquet(tiny_run / "results/tables/metrics.parquet")


@pytest.fixture(scope="module")
def browser(report):
    page = Browser(chromium())
    try:
        page.open(report)
        page.wait_js("typeof Plotly !== 'undefined' && document.querySelectorAll('.main-svg').length")
        yield page
    finally:
        page.close()


def _row(metrics: pd.DataFrame, model: str, mode: str, n: int) -> pd.Series:
    rows = metrics[(metrics["model"] == model) & (metrics["mode"] == mode) & (metrics["batch_size"] == n)]
    assert len(rows) == 1, (model, mode, n)
    return rows.iloc[0]


@slow
@pytest.mark.parametrize("chart", CHARTS)
def test_each_chart_draws_one_point_per_cell(browser, chart):
    traces = browser.js(TRACE_POINTS % chart)
    cells = [t for t in traces if t["meta"] == "cells"]
    assert {t["name"] for t in cells} == TRACES
    assert sum(t["points"] for t in cells) == len(CELLS) == 9
    assert all(t["points"] == (2 if t["name"].endswith("static") else 1) for t in cells)


@slow
def test_the_page_requests_nothing_but_itself(browser, report):
    urls = browser.requested_urls()
    # the figures' data: URIs are loads too: the recorder saw the page's loads (chromium reports
    # no request for the file:// document itself)
    assert any(u.startswith("data:image/png") for u in urls)
    own = report.resolve().as_uri()
    elsewhere = [u[:120] for u in urls if u != own and not u.startswith("data:")]
    assert elsewhere == []
    html = report.read_text()
    assert "<script src" not in html and "<link" not in html


@slow
def test_hovering_a_point_names_the_cell_its_flags_and_interval(browser, metrics):
    # The point farthest from every other: two cells a few pixels apart (tiny-llama's and its int8
    # copy's batch 1 once measured 1.6 % apart in J/token) share the hover, the one drawn last
    # winning, whichever was pointed at.
    points = browser.js(ALL_POINTS % "chart-energy-batch")
    gap, (trace, i, x, y) = max(
        (min(((x - x2) ** 2 + (y - y2) ** 2) ** 0.5 for t2, i2, x2, y2 in points
             if (t2, i2) != (t, i)), (t, i, x, y))
        for t, i, x, y in points
    )  # fmt: skip
    assert gap > 20, f"no point stands 20 px clear of the others: {points}"
    model, mode = trace.split(" on ")[0], trace.rsplit(", ", 1)[1]
    cells = metrics[(metrics["model"] == model) & (metrics["mode"] == mode)]
    n = sorted(cells["batch_size"])[i]
    browser.mouse("mouseMoved", x, y)
    text = browser.wait_js(HOVER_TEXT % "chart-energy-batch")
    what = "static batch" if mode == "static" else "continuous batching"
    name = f"cpu/{model}/{'bs' if mode == 'static' else 'cb'}{n}"
    assert f"{name}{what}" in text, (name, text)  # the hover: the cell's name, then its mode
    row = _row(metrics, model, mode, n)
    flags = [f for f in row["qa_flags"].split(";") if f]
    assert flags and all(f in text for f in flags), (flags, text)
    # run.repeats: 3, so J/token has a bootstrap interval, shown to 3 significant digits
    assert f"[{row['j_per_token_ci_low']:.3g}, {row['j_per_token_ci_high']:.3g}]" in text


def _click(browser, x, y):
    browser.mouse("mouseMoved", x, y)
    browser.mouse("mousePressed", x, y)
    browser.mouse("mouseReleased", x, y)


@slow
def test_the_slo_slider_stars_the_least_carbon_cell_meeting_it(browser, metrics):
    left, right, y = browser.js(RAIL)
    _click(browser, right - 1, y)  # the loosest step: every cell's own latency is a step
    stars = browser.wait_js(f"({STARS}).length === 3 && {STARS}")
    least = metrics.loc[metrics.groupby("model")["g_per_token"].idxmin()]
    prefix = {"static": "bs", "continuous": "cb"}
    names = {f"cpu/{r.model}/{prefix[r.mode]}{r.batch_size}" for r in least.itertuples()}
    assert set(stars) == names
    _click(browser, left + 1, y)  # the tightest step: 1 ms/token (config) or the fastest cell
    tightest = min(0.001, metrics["e2e_s_per_token"].min())
    meeting = metrics[metrics["e2e_s_per_token"] <= tightest]
    expected = {f"cpu/{m}/" for m in meeting["model"].unique()}
    browser.wait_js(f"({STARS}).length === {len(expected)}")
    assert {s.rsplit("/", 1)[0] + "/" for s in browser.js(STARS)} == expected


@slow
def test_the_headline_table_sits_beside_the_papers(browser, metrics):
    rows = browser.js("Array.from(document.querySelectorAll('#headline-table tbody tr'))"
                      ".map(r => Array.from(r.cells).map(c => c.textContent))")  # fmt: skip
    assert [r[0] for r in rows] == list(MODELS)
    for r in rows:
        one, two = _row(metrics, r[0], "static", 1), _row(metrics, r[0], "static", 2)
        assert r[2] == "1 → 2"
        assert r[5].startswith(f"{one['g_per_token'] / two['g_per_token']:.1f}x")
        assert r[7].startswith(f"{two['s_per_token_user'] / one['s_per_token_user']:.2f}x")
        assert (r[6], r[8], r[10]) == ("~11x", "~2x", "~2 %")
    source = browser.js("document.getElementById('paper-source').textContent")
    assert "Lim, Pan and Zhou (2024)" in source
    assert "Characterizing the Carbon Impact of LLM Inference" in source


@slow
def test_figures_and_provenance(browser, tiny_run):
    pngs = sorted(p.stem for p in (tiny_run / "results/figures").glob("*.png"))
    shown = browser.js("Array.from(document.querySelectorAll('#figures ~ figure img'))"
                       ".filter(i => i.complete && i.naturalWidth > 0).map(i => i.alt)")  # fmt: skip
    assert sorted(shown) == pngs
    cells = pd.read_parquet(tiny_run / "results/tables/cells.parquet")
    rows = browser.js("Array.from(document.querySelectorAll('#cell-provenance tbody tr'))"
                      ".map(r => [r.cells[0].textContent, r.cells[2].textContent])")  # fmt: skip
    assert {name for name, _ in rows} == CELLS
    assert {commit for _, commit in rows} == set(cells["git_commit"])


# A small study written by hand: two models on one platform; (cell, J/token, E2E ms/token).
# m-b's bs2 and cb2 tie on latency, so the budget's rule picks the lower energy between them.
BUDGET_CELLS = [
    ("m-a", "static", 1, 2.0, 10.0), ("m-a", "static", 2, 1.2, 14.0),
    ("m-a", "static", 4, 0.8, 25.0), ("m-a", "continuous", 4, 0.9, 18.0),
    ("m-b", "static", 1, 3.0, 12.0), ("m-b", "static", 2, 1.5, 16.0),
    ("m-b", "continuous", 2, 1.4, 16.0),
]  # fmt: skip
# The budgets are the cells' own J/token, ascending: 0.8, 0.9, 1.2, 1.4, 1.5, 2.0, 3.0 (steps 0-6).
# Per model, the lowest latency among the cells with J/token <= the budget (a tie: lower J/token):
BUDGET_STARS = {
    6: {"cpu/m-a/bs1", "cpu/m-b/bs1"},  # every cell fits: the fastest of each (10 and 12 ms)
    4: {"cpu/m-a/bs2", "cpu/m-b/cb2"},  # 1.5 J: m-a bs2 14 ms beats cb4 18, bs4 25; m-b 16 ms tie
    3: {"cpu/m-a/bs2", "cpu/m-b/cb2"},  # 1.4 J: m-b's bs2 (1.5 J) is out
    1: {"cpu/m-a/cb4"},  # 0.9 J: m-a cb4 18 ms beats bs4 25 ms; no m-b cell fits
    0: {"cpu/m-a/bs4"},  # 0.8 J: m-a's bs4 alone
}
FITS = {6: 7, 4: 5, 3: 4, 1: 2, 0: 1}  # cells within each budget, counted from BUDGET_CELLS
BUDGET_STAR_NAMES = """(() => {
  const gd = document.getElementById('chart-energy-latency');
  return gd.data.find(t => t.meta === 'fastest').hovertext.map(h => h.split('</b>')[0].slice(3));
})()"""
# Page coordinates of slider step i of the energy chart: its tick's x, the rail's middle.
BUDGET_STEP = """(i => {
  const gd = document.getElementById('chart-energy-latency');
  gd.scrollIntoView({block: 'center'});
  const ticks = gd.querySelectorAll('.slider-tick-rect');
  const rail = gd.querySelector('.slider-rail-touch-rect').getBoundingClientRect();
  const t = ticks[i].getBoundingClientRect();
  return [ticks.length, t.x + t.width / 2, rail.y + rail.height / 2];
})(%d)"""


def small_study() -> ReportInputs:
    """BUDGET_CELLS as a metrics and a cells table (the columns the report reads), run once."""
    rows = []
    for model, mode, n, j, ms in BUDGET_CELLS:
        rows.append({"platform": "cpu", "model": model, "mode": mode, "batch_size": n,
                     "j_per_token": j, "g_per_token": j / 3.6e6 * 413, "e2e_s_per_token": ms / 1e3,
                     "s_per_token_user": ms / 1e3, "tokens_per_s": n / (ms / 1e3),
                     "energy_method": "modeled", "qa_flags": "modeled", "n_repeats": 1})  # fmt: skip
    metrics = pd.DataFrame(rows)
    cells = metrics[["platform", "model", "mode", "batch_size"]].assign(
        device_name="a CPU", power_source="modeled_cpu", backend="transformers",
        git_commit="0" * 40, window_start_wall_ns=1_700_000_000 * 10**9,
    )  # fmt: skip
    return ReportInputs(metrics=metrics, cells=cells, metas=[], slos_s_per_token=[0.02])


def test_the_energy_budget_slider_stars_the_fastest_cell_within_it(tmp_path):
    path = tmp_path / "report.html"
    write_report(small_study(), path)
    page = Browser(chromium())
    try:
        page.open(path)
        page.wait_js("typeof Plotly !== 'undefined' && "
                     "document.querySelectorAll('#chart-energy-latency .slider-tick-rect').length")  # fmt: skip
        # It opens at the loosest budget; then each step is clicked on the slider's rail.
        assert set(page.js(BUDGET_STAR_NAMES)) == BUDGET_STARS[6]
        for step in (4, 3, 1, 0, 6):
            n_ticks, x, y = page.js(BUDGET_STEP % step)
            assert n_ticks == 7
            _click(page, x, y)
            title = f"{FITS[step]} of 7 cells within"
            page.wait_js(f"document.querySelector('#chart-energy-latency .gtitle')"
                         f".textContent.includes({title!r})")  # fmt: skip
            assert set(page.js(BUDGET_STAR_NAMES)) == BUDGET_STARS[step], step
        faded = page.js("document.getElementById('chart-energy-latency').data"
                        ".filter(t => t.meta === 'cells')"
                        ".map(t => t.marker.opacity.filter(o => o < 1).length)")  # fmt: skip
        assert sum(faded) == 0  # back at the loosest budget, nothing faded
        rule = page.js("Array.from(document.querySelectorAll('p.note'))"
                       ".map(p => p.textContent).join(' ')")  # fmt: skip
        assert "the fastest cell (the lowest latency per token; on a tie, the lower energy)" in rule
    finally:
        page.close()
