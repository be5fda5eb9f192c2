"""The comparison report: self-contained HTML (no network needed), JSON and Markdown with provenance."""
import json
import re

import pytest
from axlab.core.data import Splits
from axlab.core.errors import ExportError
from axlab.core.testing import tiny_split
from axlab.deploy.compare import variants_table
from axlab.deploy.report import external_references, write_report
from test_compare import synthetic_variants


@pytest.fixture
def splits():
    s = tiny_split(30)
    return Splits("tiny", ["neg", "pos"], s, s.head(10), s.head(20), 0, "ab" * 32, "/somewhere/tiny.csv")


def test_report_files_are_complete_and_offline(tmp_path, splits):
    vs = synthetic_variants()
    paths = write_report(vs, tmp_path / "r", splits=splits, title="Tiny <comparison>")
    page = paths["html"].read_text()
    # offline: no tag loads anything from the network, and plotly.js is inlined exactly once
    assert external_references(page) == []
    assert not re.search(r"<script[^>]+src=", page)
    assert page.count("plotly.js v") == 1 and len(page) > 1_000_000
    assert page.count('class="plotly-graph-div"') == 3
    assert "Tiny &lt;comparison&gt;" in page                      # escaped
    for v in ("pruned", "base", "quant"):
        assert v in page
    assert '"op": "prune_heads"' in page or "&quot;op&quot;: &quot;prune_heads&quot;" in page

    data = json.loads(paths["json"].read_text())
    assert [v["name"] for v in data["variants"]] == ["pruned", "base", "quant"]
    assert data["variants"][0]["recipe"] == vs[0].recipe
    assert data["data"]["file_sha256"] == splits.file_hash and set(data["data"]["split_sha256"]) == {
        "train", "validation", "test"}
    assert len(set(data["data"]["split_sha256"].values())) == 3   # the splits differ, so do their hashes
    assert data["versions"]["torch"] and data["versions"]["transformers"] and data["hardware"]["cpu"]
    assert len(data["table"]) == 5 and set(data["pareto_front_accuracy_vs"]) == {"latency_b1_ms", "latency_b32_ms",
                                                                                 "size_mb"}
    md = paths["md"].read_text()
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| name |")]
    assert len(table_rows) == 5
    assert splits.file_hash in md


def test_external_reference_checker_catches_cdn_and_css():
    assert external_references('<script src="https://cdn.plot.ly/plotly-2.js"></script>')
    assert external_references('<link rel="stylesheet" href="//fonts.example.com/a.css">')
    assert external_references("<style>@import url(https://x.org/a.css);</style>")
    assert external_references('<div style="background: url(http://x.org/a.png)"></div>')
    assert not external_references('<script>var s = "https://plotly.com/";</script><a href="#top">top</a>')


def test_report_refuses_to_overwrite(tmp_path, splits):
    vs = synthetic_variants()
    write_report(vs, tmp_path, splits=splits)
    before = (tmp_path / "report.json").read_text()
    with pytest.raises(ExportError, match="already holds"):
        write_report(vs[:1], tmp_path)
    assert (tmp_path / "report.json").read_text() == before
    write_report(vs[:1], tmp_path, overwrite=True)
    assert len(json.loads((tmp_path / "report.json").read_text())["variants"]) == 1
    with pytest.raises(ExportError, match="No variants"):
        write_report([], tmp_path / "empty")


def test_report_renders_in_a_browser_with_the_network_blocked(tmp_path, splits):
    """The real claim: opened from disk with every non-file request blocked, all figures draw."""
    import shutil
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (bash scripts/setup.sh --test installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    paths = write_report(synthetic_variants(), tmp_path, splits=splits)
    blocked = []
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-sync", "--disable-component-update"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        try:
            page = browser.new_page()
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                       else (blocked.append(route.request.url), route.abort()))
            page.goto(paths["html"].as_uri())
            page.wait_for_function("document.querySelectorAll('.plotly-graph-div .main-svg').length >= 3",
                                   timeout=60_000)
            n_points = page.evaluate("document.querySelectorAll('.plotly-graph-div .scatterlayer .point').length")
        finally:
            browser.close()
    assert blocked == []
    df = variants_table(synthetic_variants())
    drawable = sum(int((df[x].notna() & df.accuracy.notna()).sum())
                   for x in ("latency_b1_ms", "latency_b32_ms", "size_mb"))
    assert n_points == drawable     # every figure drew every measured point


def test_report_summarises_recipes_in_words_and_shows_per_class_figures(tmp_path, splits):
    from axlab.core.recipe import describe_recipe
    vs = synthetic_variants()
    pruned = vs[0]
    pruned.measurements = {**pruned.measurements, "per_class": {
        "neg": {"precision": 0.9, "recall": 0.8, "f1": 0.847, "support": 10, "predicted": 9},
        "pos": {"precision": 0.7, "recall": 0.8, "f1": 0.747, "support": 10, "predicted": 11}},
        "confusion": [[8, 2], [2, 8]], "labels": ["neg", "pos"],
        "latency_vs_base": {"b1": {"speedup": 1.01, "speedup_range": [0.8, 1.3], "within_noise": True,
                                   "base_ms": 5.0, "ms": 4.95, "base_spread_ms": [4, 6], "spread_ms": [4, 6],
                                   "rounds": 5}}}
    paths = write_report(vs, tmp_path / "r", splits=splits)
    page, md = paths["html"].read_text(), paths["md"].read_text()
    line = describe_recipe(pruned.recipe)
    assert line in page and line in md
    assert "<details><summary" in page and "<details open>" not in page       # JSON behind a toggle
    data = json.loads(paths["json"].read_text())
    assert data["variants"][0]["summary"] == line and data["variants"][0]["recipe"] == pruned.recipe
    assert "Per class" in page and '"heatmap"' in page and "0.847" in page
    row = variants_table(vs).set_index("name").loc["pruned"]
    assert row.speedup_b1 == pytest.approx(1.01) and row.latency_noise == "within noise"
    assert "within noise" in md


def test_report_without_a_base_row_says_so(tmp_path, splits):
    vs = [v for v in synthetic_variants() if (v.recipe if hasattr(v, "recipe") else v["recipe"])]
    data = json.loads(write_report(vs, tmp_path / "r", splits=splits)["json"].read_text())
    assert any("No base-model row" in n for n in data["notes"])


def test_cli_report_on_a_users_csv_has_no_split_hash_warning(tmp_path, monkeypatch, capsys, caplog):
    from axlab.cli import main
    from axlab.store.variants import VariantStore
    monkeypatch.setenv("AXLAB_DATA", str(tmp_path / "store"))
    store = VariantStore()
    for v in synthetic_variants():
        rec = v.to_dict() if hasattr(v, "to_dict") else dict(v)
        from axlab.store.variants import Variant
        store.add(Variant(name=rec["name"], base="default", dataset="my-reviews", recipe=rec["recipe"],
                          measurements=rec["measurements"]))
    with caplog.at_level("WARNING"):
        assert main(["report", "--out", str(tmp_path / "r"), "--json"]) == 0
    assert not [r for r in caplog.records if "hash" in r.getMessage()]
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert any(row["is_base"] for row in data["table"]) and data["data"] == {}
