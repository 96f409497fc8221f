"""The study report (tokencarbon.report, rule build_report) of the tiny CPU study, opened in a real
headless chromium (tests/browser.py): each chart draws one point per cell, the page asks for
nothing but itself, hovering a point names the cell with its flags and interval, the SLO slider
stars the least-carbon cell meeting it, and the headline table quotes the paper beside ours.

The report is the one `all` built in the shared tiny_run fixture; expected counts are worked out
from the tiny study's config (.test/config-cpu/config.yaml), values from its metrics table.
"""

from __future__ import annotations

import pandas as pd
import pytest

from browser import Browser, chromium

pytestmark = pytest.mark.slow

# .test/config-cpu: one platform (cpu), three models, static batch sizes 1 and 2, continuous
# max_num_seqs 2: three cells per model, nine in all, in two traces per model (static, continuous).
MODELS = ("tiny-gpt2", "tiny-llama", "tiny-llama-int8")
CELLS = {f"cpu/{m}/{c}" for m in MODELS for c in ("bs1", "bs2", "cb2")}
TRACES = {f"{m} on cpu, {mode}" for m in MODELS for mode in ("static", "continuous")}
CHARTS = ("chart-carbon-latency", "chart-energy-batch", "chart-throughput-latency")

# Per chart: each trace's name, meta and the SVG points the browser drew for it.
TRACE_POINTS = """(id => {
  const gd = document.getElementById(id);
  return gd._fullData.map(t => ({name: t.name, meta: t.meta,
    points: gd.querySelectorAll('.trace' + t.uid + ' path.point').length}));
})(%r)"""
# The page-coordinate centre of point `i` of the trace named `name` in chart `id`, scrolled into view.
POINT_CENTRE = """((id, name, i) => {
  const gd = document.getElementById(id);
  gd.scrollIntoView({block: 'center'});
  const t = gd._fullData.find(t => t.name === name);
  const r = gd.querySelectorAll('.trace' + t.uid + ' path.point')[i].getBoundingClientRect();
  return [r.x + r.width / 2, r.y + r.height / 2];
})(%r, %r, %d)"""
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


@pytest.mark.parametrize("chart", CHARTS)
def test_each_chart_draws_one_point_per_cell(browser, chart):
    traces = browser.js(TRACE_POINTS % chart)
    cells = [t for t in traces if t["meta"] == "cells"]
    assert {t["name"] for t in cells} == TRACES
    assert sum(t["points"] for t in cells) == len(CELLS) == 9
    assert all(t["points"] == (2 if t["name"].endswith("static") else 1) for t in cells)


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


def test_hovering_a_point_names_the_cell_its_flags_and_interval(browser, metrics):
    x, y = browser.js(POINT_CENTRE % ("chart-energy-batch", "tiny-llama on cpu, static", 0))
    browser.mouse("mouseMoved", x, y)
    text = browser.wait_js(HOVER_TEXT % "chart-energy-batch")
    assert "cpu/tiny-llama/bs1" in text
    row = _row(metrics, "tiny-llama", "static", 1)
    flags = [f for f in row["qa_flags"].split(";") if f]
    assert flags and all(f in text for f in flags), (flags, text)
    # run.repeats: 3, so J/token has a bootstrap interval, shown to 3 significant digits
    assert f"[{row['j_per_token_ci_low']:.3g}, {row['j_per_token_ci_high']:.3g}]" in text


def _click(browser, x, y):
    browser.mouse("mouseMoved", x, y)
    browser.mouse("mousePressed", x, y)
    browser.mouse("mouseReleased", x, y)


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
