"""The reproduction summary: claims declared as data, checked against the headline run by the stated rule.

Hand-checked small cases for the rule, a small fake results folder for the
selectors (and for a new headline run replacing the old one), the committed
claims against the committed runs, and the generated front-page and course tables.
"""
from __future__ import annotations

import html
import json
import math

import pandas as pd
import pytest
import yaml

from medad import pipeline
from medad.errors import ConfigError, DataError
from medad.paths import REPO_ROOT
from medad.reports import claims, course, pages
from medad.reports.common import html_table
from medad.results import REPORTED_COLUMNS, row, write_run

NAN = math.nan


# ----------------------------------------------------------------------------- the rule, by hand


def unit(holds, separated=False):
    return claims.Unit("d", (1.0, NAN, NAN), (0.0, NAN, NAN), holds=holds, separated=separated)


@pytest.mark.parametrize("outcomes, verdict", [
    ([(True, True)], "reproduced"),
    ([(True, True), (True, True), (True, True)], "reproduced"),
    ([(True, False)], "partly"),                                   # holds, intervals overlap
    ([(True, True), (True, False)], "partly"),
    ([(False, False)], "not reproduced"),                          # reversed, overlapping
    ([(None, False)], "not reproduced"),                           # a tie does not hold
    ([(True, True), (True, True), (False, True)], "not reproduced"),  # reversed and separated somewhere
    ([(True, False), (False, False), (False, False)], "not reproduced"),  # reversed on more than half
    ([(True, False), (False, False)], "partly"),                   # reversed on exactly half
    ([], "not testable here"),
])
def test_verdict_rule(outcomes, verdict):
    assert claims.verdict_of([unit(*o) for o in outcomes]) == verdict


def test_compare_intervals_and_direction():
    # higher is better: 0.8 (0.75-0.85) vs 0.6 (0.55-0.70): holds, separated
    assert claims._compare((0.8, 0.75, 0.85), (0.6, 0.55, 0.70), higher=True) == (True, True)
    # overlapping intervals: holds, not separated
    assert claims._compare((0.8, 0.65, 0.95), (0.6, 0.50, 0.70), higher=True) == (True, False)
    # lower is better (GED): 0.45 (0.39-0.51) vs 0.32 (0.27-0.35) is reversed and separated
    assert claims._compare((0.45, 0.39, 0.51), (0.32, 0.27, 0.35), higher=False) == (False, True)
    # no interval on one side: never separated
    assert claims._compare((0.8, NAN, NAN), (0.1, 0.05, 0.15), higher=True) == (True, False)
    assert claims._compare((0.5, 0.4, 0.6), (0.5, 0.4, 0.6), higher=True) == (None, False)
    # a paired difference: its interval against 0
    assert claims._difference((0.06, 0.04, 0.09), higher=True) == (True, True)
    assert claims._difference((-0.04, -0.05, -0.02), higher=True) == (False, True)
    assert claims._difference((0.01, -0.01, 0.03), higher=True) == (True, False)


# ----------------------------------------------------------------------------- a fake chapter


def fake_table(mvfa=(0.9, 0.85, 0.95), base=(0.6, 0.55, 0.65), diff=None):
    rows = []
    for dataset in ("alpha", "beta"):
        rows.append(row(dataset, "few", "Method [X]", "auc", *mvfa, seeds=3, n=40))
        rows.append(row(dataset, "few", "Baseline [X]", "auc", *base, seeds=3, n=40))
        rows.append(row(dataset, "few", "Method [mean of 2 backbones]", "auc", 0.1, seeds=3, n=40))
        rows.append(row(dataset, "zero", "Method [X]", "auc", 0.45, seeds=1, n=40))
    rows.append(row("average", "few", "Method [X]", "auc", 0.1, seeds=3, n=80))  # left out unless named
    rows.append(row("average", "few", "Baseline [X]", "auc", 0.9, seeds=3, n=80))
    if diff is not None:
        rows.append(row("alpha", "paired", "Method minus Baseline", "auc", *diff, seeds=3, n=40))
    return rows


CLAIMS = {
    "paper": "Toy (Someone et al., 2024)",
    "differs": "a toy backbone",
    "claims": [
        {"id": "beats_baseline", "kind": "main table", "claim": "Method beats Baseline",
         "reported": [{"method": "Method (reported)", "metric": "auc"}],
         "compare": [{"better": {"setting": "few", "method": "Method", "metric": "auc"},
                      "worse": {"setting": "few", "method": "Baseline", "metric": "auc"}}]},
        {"id": "paired", "claim": "Method beats Baseline, paired",
         "compare": [{"difference": {"method": "Method minus Baseline", "metric": "auc"},
                      "better": {"setting": "few", "method": "Method", "metric": "auc"},
                      "worse": {"setting": "few", "method": "Baseline", "metric": "auc"}}]},
        {"id": "above_chance", "claim": "Zero-shot above chance",
         "compare": [{"better": {"setting": "zero", "method": "Method", "metric": "auc"},
                      "worse": {"constant": 0.5, "label": "chance"}}]},
        {"id": "absent", "claim": "Holds on gamma", "if_missing": "gamma is not on this machine",
         "compare": [{"better": {"dataset": "gamma", "method": "Method", "metric": "auc"},
                      "worse": {"dataset": "gamma", "method": "Baseline", "metric": "auc"}}]},
        {"id": "untestable", "claim": "Beats a method we lack", "testable": False, "why": "not implemented here"},
    ],
}


@pytest.fixture
def root(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "claims.yml").write_text(yaml.safe_dump(CLAIMS, sort_keys=False))
    pd.DataFrame([{**row("paper data", "few", "Method (reported)", "auc", 0.93), "source": "Toy paper, Table 1"}],
                 columns=REPORTED_COLUMNS).to_csv(tmp_path / "toy" / "reported.csv", index=False)
    write_run("toy", "cpu-1", fake_table(), {"kind": "long-cpu", "schedule": "2 epochs", "device": "cpu (test)",
                                             "finished": "2026-01-01 00:00:00 UTC", "backbone": "standin-x"}, root=tmp_path)
    return tmp_path


def test_fake_chapter_verdicts(root):
    evaluations, run = claims.evaluate("toy", root=root)
    verdicts = {ev.id: ev.verdict for ev in evaluations}
    assert run.name == "cpu-1"
    assert verdicts == {"beats_baseline": "reproduced", "paired": "reproduced", "above_chance": "not reproduced",
                        "absent": "not testable here", "untestable": "not testable here"}
    first = evaluations[0]
    # one comparison per dataset; the "average" and "[mean of ...]" rows are left out
    assert [u.label for u in first.units] == ["alpha, X", "beta, X"]
    assert [u.worse_name for u in first.units] == ["Baseline", "Baseline"]
    assert first.summary() == "holds in 2 of 2 comparisons, separated in 2"
    assert evaluations[2].units[0].worse_name == "chance"
    assert evaluations[3].note == "gamma is not on this machine"
    assert evaluations[4].note == "not implemented here"


def test_paired_difference_is_preferred_when_present(root):
    write_run("toy", "cpu-1", fake_table(diff=(-0.02, -0.03, -0.01)), {"kind": "long-cpu"}, root=root)
    ev = {e.id: e for e in claims.evaluate("toy", root=root)[0]}["paired"]
    # the separate intervals would say "reproduced"; the paired difference on the same images says reversed
    assert ev.verdict == "not reproduced" and ev.units[0].difference == (-0.02, -0.03, -0.01)
    assert ev.units[0].outcome == "reversed, separated"


def test_a_new_headline_run_re_evaluates_every_claim(root):
    table, _, _ = claims.claims_table("toy", root=root)
    assert table.loc[table["claim"] == "Method beats Baseline", "verdict"].item() == "reproduced"
    # a GPU run of the full profile outranks the long CPU run: its reversed numbers decide now
    write_run("toy", "gpu-1", fake_table(mvfa=(0.5, 0.45, 0.55), base=(0.7, 0.65, 0.75)),
              {"kind": "gpu-full", "device": "cuda (test)", "precision": "bf16"}, root=root)
    table, evaluations, run = claims.claims_table("toy", root=root)
    assert run.name == "gpu-1"
    assert table.loc[table["claim"] == "Method beats Baseline", "verdict"].item() == "not reproduced"
    assert table["what differs"].iloc[0] == "GPU run, bf16 arithmetic"
    # and the old run can still be asked for by name
    assert claims.evaluate("toy", "cpu-1", root=root)[0][0].verdict == "reproduced"


def test_reported_text_and_tables(root):
    table, evaluations, run = claims.claims_table("toy", root=root)
    assert table["paper reports"].iloc[0] == "Method (reported), auc: 0.930 (paper data, few)"
    assert table["what differs"].iloc[0] == "STAND-IN backbone standin-x, CPU run, shortened schedule"
    assert list(table["#"]) == [1, 2, 3, 4, 5]
    evidence = claims.evidence_table(evaluations)
    assert list(evidence["#"]) == [1, 1, 2, 2, 3, 3]
    assert evidence["claimed better"].iloc[0] == "Method: 0.900 (0.850–0.950)"
    assert claims.counts(evaluations) == "2 reproduced, 1 not reproduced, 2 not testable here"


def test_summary_markdown_is_one_table_with_the_rule(root):
    text = claims.summary_markdown(chapters=["toy"], root=root)
    assert "Verdicts over the 5 claims: 2 reproduced, 1 not reproduced, 2 not testable here." in text
    assert "<td>Method beats Baseline</td><td>Method (reported), auc: 0.930" in text
    assert "<td><b>reproduced</b></td>" in text and claims.RULE in text
    assert "<td>Toy (Someone et al., 2024)</td><td>cpu-1</td><td>2 epochs</td>" in text
    # the paper and what differs for it are shown once, spanning the paper's rows
    assert '<td rowspan="5">Toy</td>' in text and text.count("a toy backbone; STAND-IN backbone standin-x") == 1
    assert html_table(pd.DataFrame({"a": ["x < y, see https://example.org/a."]})) == (
        '<table class="medad-table"><thead><tr><th>a</th></tr></thead><tbody><tr><td>x &lt; y, see '
        '<a href="https://example.org/a">https://example.org/a</a>.</td></tr></tbody></table>')


def test_no_committed_run_means_not_testable(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "claims.yml").write_text(yaml.safe_dump(CLAIMS))
    evaluations, run = claims.evaluate("toy", root=tmp_path)
    assert run is None and {ev.verdict for ev in evaluations} == {"not testable here"}


@pytest.mark.parametrize("change, message", [
    (lambda c: c["claims"][0].update(colour="red"), "unknown key(s) colour"),
    (lambda c: c["claims"][0].pop("compare"), "'compare' must be a non-empty list"),
    (lambda c: c["claims"][1].update(id="beats_baseline"), "is used twice"),
    (lambda c: c["claims"][0]["compare"][0]["better"].update(method={"regex": "("}), "does not compile"),
    (lambda c: c["claims"][0]["compare"][0]["better"].update(colour="red"), "unknown key(s) colour"),
    (lambda c: c["claims"][0]["compare"][0].update(better={"constant": 1}), "only 'worse' may be a constant"),
    (lambda c: c["claims"][4].pop("why"), "'testable: false' needs 'why'"),
    (lambda c: c["claims"][0].update(pair_on=["colour"]), "pair_on 'colour'"),
])
def test_bad_claims_files_name_the_problem(root, change, message):
    bad = yaml.safe_load((root / "toy" / "claims.yml").read_text())
    change(bad)
    (root / "toy" / "claims.yml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="claims.yml") as info:
        claims.load_claims("toy", root=root)
    assert message in str(info.value)


def test_a_reported_reference_must_exist(root):
    bad = yaml.safe_load((root / "toy" / "claims.yml").read_text())
    bad["claims"][0]["reported"] = [{"method": "Method (reportd)"}]
    (root / "toy" / "claims.yml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="matches no row of results/toy/reported.csv"):
        claims.claims_table("toy", root=root)
    with pytest.raises(ConfigError, match="is missing"):
        claims.load_claims("nothing", root=root)


def test_committed_inputs_change_the_stamp(root, tmp_path):
    exercises = tmp_path / "exercises"
    exercises.mkdir()
    digest = lambda: pages.chapter_inputs_digest("toy", root, exercises)  # noqa: E731
    before = digest()
    write_run("toy", "cpu-2", fake_table(), {"kind": "cpu"}, root=root)
    after_run = digest()
    (exercises / "toy.yml").write_text("exercises: []\n")
    assert len({before, after_run, digest()}) == 3
    parts = {"source": "s", "profile": "p", "parameters": {}, "data": {}, "modules": {}, "results": "new"}
    assert pipeline.rerun_reasons({"status": "ok", "parts": {**parts, "results": "old"}}, parts) == [
        "its committed results, claims or exercises changed"]
    assert pipeline.rerun_reasons({"status": "ok", "parts": parts}, parts) == []


# ----------------------------------------------------------------------------- the committed claims


@pytest.mark.parametrize("chapter", claims.PAPER_CHAPTERS)
def test_committed_claims_find_their_rows(chapter):
    """Every claim that can be tested finds rows in the chapter's headline run (a renamed method fails here)."""
    table, evaluations, run = claims.claims_table(chapter)
    assert run is not None, f"results/{chapter} has no committed run"
    assert set(table["verdict"]) <= set(claims.VERDICTS)
    lost = [ev.id for ev in evaluations if ev.verdict == "not testable here"
            and ev.claim.get("testable", True) and not ev.claim.get("if_missing")]
    assert not lost, f"{chapter}: claims whose selectors match nothing in {run.name}: {lost}"
    waiting = [ev.id for ev in evaluations if ev.verdict == "not run yet"]
    assert not waiting or run.cut_short, waiting  # only a run cut short leaves a claim waiting
    assert any(ev.claim.get("kind", "main table") == "main table" for ev in evaluations)


def test_committed_summary_names_every_paper():
    text = claims.summary_markdown()
    for paper in ("MVFA", "ViP", "Early gastric cancer", "Probabilistic U-Net"):
        assert f">{paper}</td>" in text


# ----------------------------------------------------------------------------- the course page


def test_runtime_table_comes_from_the_benchmark_file(tmp_path):
    path = tmp_path / "book_time.json"
    assert "No timing is committed yet" in course.runtime_markdown(["vip"], path)
    path.write_text(json.dumps({"measured": "2026-01-01", "commit": "abc", "data": "real",
                                "machine": {"description": "2 CPU cores (test)"},
                                "profiles": {"quick": {"chapters": {"vip": {"wall_s": 120.0, "cpu_s": 90.0,
                                                                            "archives": ["chest_xray"]}},
                                                       "html": {"wall_s": 30.0, "cpu_s": 20.0}}}}))
    table, _ = course.runtime_table(["vip", "egc"], path)
    assert table.set_index("chapter").loc["vip", "quick: wall min"] == "2.0"
    assert table.set_index("chapter").loc["vip", "quick: CPU min"] == "1.5"
    assert table.set_index("chapter").loc["egc", "quick: wall min"] == "–"  # not measured: a dash, not a guess
    assert table.set_index("chapter").loc["HTML build", "quick: wall min"] == "0.5"
    assert table.set_index("chapter").loc["vip", "full: wall min"] == "–"
    assert "2 CPU cores (test)" in course.runtime_markdown(["vip"], path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        course.load_benchmark(path)


def test_datasets_table_has_every_manifest_entry():
    from medad.data.registry import manifest

    text = course.datasets_markdown(["mvfa", "vip", "egc", "prob_unet"])
    for key, entry in manifest().items():
        assert f"<td>{key}: " in text and f"<td>{entry['archive']}" in text
        assert html.escape(entry["licence"]) in text


def test_generated_pages_are_written(tmp_path):
    written = pages.write_generated(tmp_path, chapters=["vip"])
    assert sorted(p.name for p in written) == ["claims.md", "course-data.md", "course-runtime.md"]
    assert "Verdicts over the" in (tmp_path / "claims.md").read_text()


def test_a_loose_selector_is_refused(root):
    loose = yaml.safe_load((root / "toy" / "claims.yml").read_text())
    loose["claims"][0]["compare"][0]["better"].pop("setting")  # now "few" and "zero" rows face one Baseline
    (root / "toy" / "claims.yml").write_text(yaml.safe_dump(loose))
    with pytest.raises(ConfigError, match="claim beats_baseline: selector .* matches 2 rows for alpha, X"):
        claims.evaluate("toy", root=root)


def test_html_table_merges_runs_of_equal_cells_within_a_group():
    table = pd.DataFrame({"paper": ["A", "A", "B"], "claim": ["1", "2", "3"], "note": ["x", "x", "x"]})
    text = html_table(table, merge=("paper", "note"))
    assert text.count("<tr>") == 4  # header + 3 rows
    assert '<td rowspan="2">A</td><td>1</td><td rowspan="2">x</td>' in text
    assert "<tr><td>2</td></tr>" in text and "<tr><td>B</td><td>3</td><td>x</td></tr>" in text  # B's x is its own


def test_a_comparison_missing_from_a_run_cut_short_has_not_run_yet():
    claim = {"id": "c", "claim": "A beats B", "compare": [{"better": {"method": "A"}, "worse": {"method": "B"}}]}
    empty = pd.DataFrame(columns=["dataset", "setting", "method", "metric", "value", "ci_low", "ci_high", "seeds", "n"])
    assert claims.evaluate_claim("mvfa", claim, empty, cut_short=True).verdict == "not run yet"
    assert claims.evaluate_claim("mvfa", claim, empty).verdict == "not testable here"


def test_schedule_fact_names_what_differs_from_the_papers_declared_schedule():
    from medad.reports.claims import schedule_fact

    paper = {"epochs": 50, "batch_size": 32, "train_images": None}
    assert schedule_fact({"epochs": 50, "batch_size": 32, "train_images": None}, paper, "long-cpu") == "the paper's schedule"
    assert schedule_fact({"epochs": 5, "batch_size": 32, "train_images": 600}, paper, "long-cpu") == \
        "schedule: epochs 5 (paper: 50), train_images 600 (paper: None)"
    assert schedule_fact({"epochs": 50}, paper, "long-cpu") == "shortened schedule"  # a parameter it cannot check
    assert schedule_fact({}, None, "long-cpu") == "shortened schedule"
    assert schedule_fact({}, None, "gpu-full") == ""


def test_paper_schedule_must_be_a_mapping(tmp_path):
    import yaml

    from medad.reports.claims import load_claims

    src = yaml.safe_load((REPO_ROOT / "results" / "vip" / "claims.yml").read_text())
    (tmp_path / "vip").mkdir()
    (tmp_path / "vip" / "claims.yml").write_text(yaml.safe_dump({**src, "paper_schedule": [50, 32]}))
    with pytest.raises(ConfigError, match="paper_schedule"):
        load_claims("vip", tmp_path)
