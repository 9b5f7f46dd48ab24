"""What was reproduced: each paper's claims, declared as data, checked against the chapter's headline run.

A chapter's claims live in ``results/<chapter>/claims.yml``::

    paper: "MVFA (Huang et al., CVPR 2024)"
    differs: "STAND-IN backbone instead of CLIP ViT-L/14-336; four public datasets instead of BMAD"
    claims:
      - id: fewshot_vs_memory_bank
        kind: main table            # or: ablation
        claim: "Few-shot (K = 4): MVFA beats a frozen memory bank built from the same shots"
        paper: "+7.33 average image AUC over the best prior few-shot method (abstract)"
        reported:                   # rows of results/<chapter>/reported.csv (each must exist)
          - {dataset: average, setting: few-shot K=4, method: MVFA (reported), metric: image AUC}
        compare:                    # rows of the headline run's table.csv
          - better: {setting: few-shot K=4, method: MVFA, metric: image AUC}
            worse: {setting: few-shot K=4, method: PatchCore-style (frozen memory bank), metric: image AUC}

A selector value is a string that equals the cell, or the cell before a trailing
backbone tag (``"MVFA"`` matches ``"MVFA [STAND-IN]"``), or ``{prefix: ...}`` or
``{regex: ...}`` (a full match). ``worse`` may be ``{constant: 0.5, label: chance}``.
A comparison may give ``difference:`` instead, a row holding a paired difference
(better minus worse); where the run has no such row, ``better``/``worse`` are used.
``pair_on`` (default ``[dataset, bracket]``) says which rows face each other: the
same dataset and the same ``[...]`` tag of the method (``parens``: the trailing
``(...)`` instead, e.g. EGC's backbone). Unless a selector names them, the
``average`` dataset and ``[mean of ...]`` rows are left out: they repeat the others.
``testable: false`` with ``why`` marks a claim that cannot be tested here at all.

Nothing here holds a result: every verdict is computed from the headline run
(:func:`medad.results.headline_run`) when the page is built, so a new headline
run re-evaluates every claim.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from medad import results
from medad.errors import ConfigError
from medad.paths import RESULTS_DIR

PAPER_CHAPTERS = ("mvfa", "vip", "egc", "prob_unet")
VERDICTS = ("reproduced", "partly", "not reproduced", "not testable here", "not run yet")

RULE = (
    "Each claim is a comparison (A is better than B), checked in our headline run on every dataset (and backbone) "
    "that has both rows. On each, the claim **holds** when our numbers are ordered as claimed, and is "
    "**separated** when our 95% intervals do not overlap, or when the interval of a paired difference "
    "excludes 0; a number without an interval (one seed) never counts as separated. "
    "**Reproduced**: it holds and is separated everywhere. "
    "**Not reproduced**: it is reversed and separated somewhere, or reversed (or tied) on more than half. "
    "**Partly**: anything in between (for example: holds everywhere, but the intervals overlap). "
    "**Not testable here**: the data, weights or method it needs are not in the run. "
    "**Not run yet**: the headline run was cut short (its schedule says so) before the units the comparison needs. "
    "Absolute numbers are shown for orientation only: backbones, data and schedules differ from the papers'."
)

_TOP_KEYS = {"paper", "differs", "paper_schedule", "claims"}
_CLAIM_KEYS = {"id", "kind", "claim", "paper", "reported", "compare", "higher_is_better", "pair_on", "testable",
               "why", "if_missing", "note"}
_COMPARE_KEYS = {"better", "worse", "difference"}
_SELECT_FIELDS = ("dataset", "setting", "method", "metric")
_PAIR_FIELDS = {"dataset", "setting", "metric", "bracket", "parens"}
_BRACKET = re.compile(r"^(.*?) \[([^\]]*)\]$")
_PARENS = re.compile(r"^(.*?) \(([^()]*)\)$")


# ----------------------------------------------------------------------------- declaration


def claims_file(chapter: str, root: Path | None = None) -> Path:
    return (root or RESULTS_DIR) / chapter / "claims.yml"


def load_claims(chapter: str, root: Path | None = None) -> dict:
    """``results/<chapter>/claims.yml``, checked: unknown keys, missing fields and bad selectors are errors."""
    path = claims_file(chapter, root)
    if not path.is_file():
        raise ConfigError(f"{path} is missing: the claims of chapter {chapter!r} (see medad/reports/claims.py)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    _check_keys(data, _TOP_KEYS, str(path))
    if not isinstance(data.get("paper_schedule", {}), dict):
        raise ConfigError(f"{path}: 'paper_schedule' must map the run's parameters to the paper's values, "
                          f"got {data['paper_schedule']!r}")
    if not isinstance(data.get("claims"), list) or not data["claims"]:
        raise ConfigError(f"{path}: 'claims' must be a non-empty list")
    seen = set()
    for i, claim in enumerate(data["claims"]):
        where = f"{path}, claim {i + 1}"
        if not isinstance(claim, dict):
            raise ConfigError(f"{where}: a claim is a mapping (id, claim, compare, ...)")
        _check_keys(claim, _CLAIM_KEYS, where)
        for key in ("id", "claim"):
            if not isinstance(claim.get(key), str) or not claim[key].strip():
                raise ConfigError(f"{where}: needs '{key}' (text)")
        if claim["id"] in seen:
            raise ConfigError(f"{where}: id {claim['id']!r} is used twice")
        seen.add(claim["id"])
        if claim.get("testable", True) is False:
            if not claim.get("why"):
                raise ConfigError(f"{where} ({claim['id']}): 'testable: false' needs 'why'")
            continue
        compare = claim.get("compare")
        if not isinstance(compare, list) or not compare:
            raise ConfigError(f"{where} ({claim['id']}): 'compare' must be a non-empty list of comparisons")
        for comp in compare:
            _check_keys(comp, _COMPARE_KEYS, f"{where} ({claim['id']}), compare")
            if not ("difference" in comp or ("better" in comp and "worse" in comp)):
                raise ConfigError(f"{where} ({claim['id']}): a comparison needs 'better' and 'worse', or 'difference'")
            for side in ("better", "worse", "difference"):
                if side in comp:
                    _check_selector(comp[side], f"{where} ({claim['id']}), {side}", constant_ok=side == "worse")
        for field_name in claim.get("pair_on", []):
            if field_name not in _PAIR_FIELDS:
                raise ConfigError(f"{where} ({claim['id']}): pair_on {field_name!r} is not one of {', '.join(sorted(_PAIR_FIELDS))}")
        for sel in claim.get("reported", []):
            _check_selector(sel, f"{where} ({claim['id']}), reported", constant_ok=False)
    return data


def _check_keys(mapping, allowed: set, where: str) -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _check_selector(selector, where: str, constant_ok: bool) -> None:
    if not isinstance(selector, dict):
        raise ConfigError(f"{where}: a selector is a mapping of {', '.join(_SELECT_FIELDS)}")
    if "constant" in selector:
        if not constant_ok:
            raise ConfigError(f"{where}: only 'worse' may be a constant")
        _check_keys(selector, {"constant", "label"}, where)
        if not isinstance(selector["constant"], (int, float)) or isinstance(selector["constant"], bool):
            raise ConfigError(f"{where}: 'constant' must be a number")
        return
    _check_keys(selector, set(_SELECT_FIELDS), where)
    if not selector:
        raise ConfigError(f"{where}: an empty selector would match every row")
    for key, value in selector.items():
        if isinstance(value, dict):
            if len(value) != 1 or not ({"prefix", "regex"} >= set(value)) or not isinstance(next(iter(value.values())), str):
                raise ConfigError(f"{where}: {key} must be text, {{prefix: text}} or {{regex: text}}, got {value!r}")
            if "regex" in value:
                try:
                    re.compile(value["regex"])
                except re.error as exc:
                    raise ConfigError(f"{where}: {key} regex {value['regex']!r} does not compile ({exc})") from None
        elif not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be text, {{prefix: text}} or {{regex: text}}, got {value!r}")


# ----------------------------------------------------------------------------- selecting rows


def split_tag(method: str, kind: str = "bracket") -> tuple[str, str]:
    """``"MVFA [STAND-IN]"`` -> ``("MVFA", "STAND-IN")``; ``kind="parens"`` splits a trailing ``(...)`` instead."""
    match = (_BRACKET if kind == "bracket" else _PARENS).match(str(method))
    return (match.group(1), match.group(2)) if match else (str(method), "")


def _matches(cell, pattern) -> bool:
    cell = str(cell)
    if isinstance(pattern, dict):
        if "prefix" in pattern:
            return cell.startswith(pattern["prefix"])
        return re.fullmatch(pattern["regex"], cell) is not None
    return cell == pattern or split_tag(cell)[0] == pattern


def select(table: pd.DataFrame, selector: dict, explicit_only: bool = True) -> pd.DataFrame:
    """The rows of a tidy table that match ``selector``; without an explicit choice the
    ``average`` dataset and ``[mean of ...]`` rows are dropped (they repeat the others)."""
    keep = np.ones(len(table), dtype=bool)
    for key, pattern in selector.items():
        keep &= table[key].map(lambda cell: _matches(cell, pattern)).to_numpy(dtype=bool)
    rows = table[keep]
    if explicit_only and "dataset" not in selector:
        rows = rows[rows["dataset"].astype(str) != "average"]
    if explicit_only and not _names_mean(selector.get("method")):
        rows = rows[~rows["method"].astype(str).map(lambda m: split_tag(m)[1].startswith("mean of"))]
    return rows


def _names_mean(pattern) -> bool:
    return pattern is not None and "mean of" in (pattern if isinstance(pattern, str) else next(iter(pattern.values())))


def _pair_key(row, pair_on) -> tuple:
    key = []
    for name in pair_on:
        if name in ("bracket", "parens"):
            key.append(split_tag(row["method"], name)[1])
        else:
            key.append(str(row[name]))
    return tuple(key)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Unit:
    """One face-to-face comparison: a dataset (and backbone) where both rows exist."""

    label: str
    better: tuple[float, float, float]
    worse: tuple[float, float, float] | None  # None for a paired difference
    difference: tuple[float, float, float] | None = None
    worse_label: str = ""
    better_name: str = ""
    worse_name: str = ""
    holds: bool | None = None  # None: a tie
    separated: bool = False

    @property
    def score(self) -> int:
        """+2 holds and separated, +1 holds, -1 tie or reversed, -2 reversed and separated."""
        if self.holds is None:
            return -1
        return (2 if self.separated else 1) * (1 if self.holds else -1)

    @property
    def outcome(self) -> str:
        if self.holds is None:
            return "tie"
        return ("holds" if self.holds else "reversed") + (", separated" if self.separated else "")

    def evidence(self, digits: int = 3) -> str:
        if self.difference is not None:
            return f"paired difference {results.format_interval(*self.difference, digits=digits)}"
        worse = results.format_interval(*self.worse, digits=digits) if self.worse else "–"
        return f"{results.format_interval(*self.better, digits=digits)} vs {self.worse_label}{worse}"

    def sides(self, digits: int = 3) -> tuple[str, str]:
        """(claimed better, claimed worse), each ``name: value (low–high)``; a paired difference on the first."""
        if self.difference is not None:
            return (f"{self.better_name}: {results.format_interval(*self.difference, digits=digits)}", "0 (no difference)")
        worse = f"{self.worse_label.strip() or self.worse_name}: {results.format_interval(*self.worse, digits=digits)}"
        return f"{self.better_name}: {results.format_interval(*self.better, digits=digits)}", worse


@dataclass
class Evaluation:
    chapter: str
    claim: dict
    verdict: str
    units: list[Unit] = field(default_factory=list)
    note: str = ""  # why not testable, or what was missing

    @property
    def id(self) -> str:
        return self.claim["id"]

    def summary(self) -> str:
        """``holds on 3 of 4, separated on 1`` or the single comparison's numbers."""
        if not self.units:
            return self.note
        if len(self.units) == 1:
            unit = self.units[0]
            return f"{unit.evidence()}: {unit.outcome}"
        holds = sum(u.holds is True for u in self.units)
        separated = sum(u.holds is True and u.separated for u in self.units)
        against = sum(u.holds is False and u.separated for u in self.units)
        text = f"holds in {holds} of {len(self.units)} comparisons, separated in {separated}"
        return text + (f"; reversed and separated in {against}" if against else "")


def _triple(row) -> tuple[float, float, float]:
    return (float(row["value"]), float(row["ci_low"]), float(row["ci_high"]))


def _has_interval(t) -> bool:
    return t is not None and np.isfinite(t[1]) and np.isfinite(t[2])


def _compare(better, worse, higher: bool) -> tuple[bool | None, bool]:
    """(holds, separated) of two (value, low, high) triples; ``worse`` may be a constant (low = high = value)."""
    sign = 1.0 if higher else -1.0
    gap = sign * (better[0] - worse[0])
    if gap == 0 or not np.isfinite(gap):
        return None, False
    if not (_has_interval(better) and _has_interval(worse)):
        return gap > 0, False
    b_lo, b_hi = sorted((sign * better[1], sign * better[2]))
    w_lo, w_hi = sorted((sign * worse[1], sign * worse[2]))
    separated = b_lo > w_hi if gap > 0 else w_lo > b_hi
    return gap > 0, bool(separated)


def _difference(diff, higher: bool) -> tuple[bool | None, bool]:
    sign = 1.0 if higher else -1.0
    value = sign * diff[0]
    if value == 0 or not np.isfinite(value):
        return None, False
    if not _has_interval(diff):
        return value > 0, False
    lo, hi = sorted((sign * diff[1], sign * diff[2]))
    return value > 0, bool(lo > 0 or hi < 0)


def _short(method: str, pair_on=()) -> str:
    """A method's name without the tag that the "where" column already names (its backbone)."""
    name = split_tag(method)[0]
    return split_tag(name, "parens")[0] if "parens" in pair_on else name


def _unit_label(row, pair_on) -> str:
    parts = [str(row["dataset"]).split(" (")[0]]
    for name in pair_on:
        if name in ("bracket", "parens"):
            tag = split_tag(row["method"], name)[1]
            if tag:
                parts.append(tag)
        elif name not in ("dataset",):
            parts.append(str(row[name]))
    return ", ".join(dict.fromkeys(parts))


def _one_per_pair(rows: pd.DataFrame, selector: dict, pair_on) -> pd.DataFrame:
    """``rows``, refused when two of them would face the same counterpart: the selector is too loose."""
    keys = [_pair_key(r, pair_on) for _, r in rows.iterrows()]
    doubled = sorted({k for k in keys if keys.count(k) > 1})
    if doubled:
        raise ConfigError(f"selector {selector} matches {keys.count(doubled[0])} rows for {', '.join(doubled[0])}; "
                          f"name the setting, metric or method more precisely (pair_on: {', '.join(pair_on)})")
    return rows


def _units(comp: dict, table: pd.DataFrame, higher: bool, pair_on) -> list[Unit]:
    units = []
    if "difference" in comp:
        for _, row in _one_per_pair(select(table, comp["difference"]), comp["difference"], pair_on).iterrows():
            holds, separated = _difference(_triple(row), higher)
            units.append(Unit(_unit_label(row, pair_on), _triple(row), None, _triple(row), holds=holds, separated=separated,
                              better_name=_short(row["method"], pair_on)))
        if units or "better" not in comp:
            return [u for u in units if np.isfinite(u.difference[0])]
    better = _one_per_pair(select(table, comp["better"]), comp["better"], pair_on)
    worse_sel = comp["worse"]
    if "constant" in worse_sel:
        value = float(worse_sel["constant"])
        for _, row in better.iterrows():  # a constant is exact: separated when the interval excludes it
            holds, separated = _compare(_triple(row), (value, value, value), higher)
            units.append(Unit(_unit_label(row, pair_on), _triple(row), (value, math.nan, math.nan),
                              worse_label=f"{worse_sel.get('label', 'constant')} ", holds=holds, separated=separated,
                              better_name=_short(row["method"], pair_on), worse_name=str(worse_sel.get("label", "constant"))))
        return [u for u in units if np.isfinite(u.better[0])]
    worse = {_pair_key(row, pair_on): row
             for _, row in _one_per_pair(select(table, worse_sel), worse_sel, pair_on).iterrows()}
    for _, row in better.iterrows():
        other = worse.get(_pair_key(row, pair_on))
        if other is None or not (np.isfinite(row["value"]) and np.isfinite(other["value"])):
            continue
        holds, separated = _compare(_triple(row), _triple(other), higher)
        units.append(Unit(_unit_label(row, pair_on), _triple(row), _triple(other), holds=holds, separated=separated,
                          better_name=_short(row["method"], pair_on), worse_name=_short(other["method"], pair_on)))
    return units


def verdict_of(units: list[Unit]) -> str:
    """The stated rule (:data:`RULE`) applied to the per-dataset comparisons of one claim."""
    if not units:
        return "not testable here"
    scores = [u.score for u in units]
    if all(s == 2 for s in scores):
        return "reproduced"
    if any(s == -2 for s in scores) or sum(s < 0 for s in scores) * 2 > len(scores):
        return "not reproduced"
    return "partly"


def evaluate_claim(chapter: str, claim: dict, table: pd.DataFrame | None, cut_short: bool = False) -> Evaluation:
    """One claim's verdict from a headline table (None: no committed run); ``cut_short``: the run stopped before
    every planned unit finished, so a comparison without rows has not run yet."""
    if claim.get("testable", True) is False:
        return Evaluation(chapter, claim, "not testable here", note=claim["why"])
    if table is None:
        return Evaluation(chapter, claim, "not testable here", note="no committed run")
    higher = bool(claim.get("higher_is_better", True))
    pair_on = list(claim.get("pair_on", ["dataset", "bracket"]))
    try:
        units = [u for comp in claim["compare"] for u in _units(comp, table, higher, pair_on)]
    except ConfigError as exc:
        raise ConfigError(f"{claims_file(chapter)}, claim {claim['id']}: {exc}") from None
    if not units and cut_short and not claim.get("if_missing"):  # if_missing: rows no run here can have
        return Evaluation(chapter, claim, "not run yet", note="the headline run was cut short before this comparison")
    if not units:
        why = claim.get("if_missing") or "the headline run has no rows for this comparison"
        return Evaluation(chapter, claim, "not testable here", note=why)
    return Evaluation(chapter, claim, verdict_of(units), units)


def evaluate(chapter: str, run_name: str | None = None, root: Path | None = None) -> tuple[list[Evaluation], "results.Run | None"]:
    """Every claim of a chapter checked against its headline run (or the named run)."""
    declared = load_claims(chapter, root)
    run = results.headline_run(chapter, run_name, root)
    table = run.table if run is not None else None
    short = run is not None and run.cut_short
    return [evaluate_claim(chapter, c, table, short) for c in declared["claims"]], run


# ----------------------------------------------------------------------------- what the paper reports, what differs


def reported_text(chapter: str, claim: dict, root: Path | None = None) -> str:
    """The paper's numbers the claim cites (each selector must match reported.csv) and its own words."""
    parts = []
    if claim.get("reported"):
        reported = results.load_reported(chapter, root)
        for sel in claim["reported"]:
            rows = select(reported, sel, explicit_only=False)
            if rows.empty:
                raise ConfigError(f"{claims_file(chapter, root)}, claim {claim['id']}: reported selector {sel} matches "
                                  f"no row of results/{chapter}/reported.csv")
            for _, row in rows.iterrows():
                where = ", ".join(str(row[k]) for k in ("dataset", "setting") if str(row[k]) not in ("", "nan", "test", "main"))
                parts.append(f"{row['method']}, {row['metric']}: {float(row['value']):.3f} ({where})")
    if claim.get("paper"):
        parts.append(str(claim["paper"]))
    return "; ".join(parts) or "–"


def run_facts(run, paper_schedule: dict | None = None) -> str:
    """What the provenance says about how the headline run differs: backbone, CPU or GPU, precision, schedule
    (``paper_schedule``: the paper's values of the run's parameters, from the chapter's claims.yml)."""
    if run is None:
        return "no committed run"
    prov = run.provenance
    device = str(prov.get("device", ""))
    params = prov.get("parameters") or prov.get("config") or {}
    facts = []
    backbones = prov.get("backbones") or ([prov["backbone"]] if prov.get("backbone") else [])
    if not backbones and params.get("arch"):
        backbones = [params["arch"], *params.get("extra_archs", [])]
    if backbones:
        stand_in = any("standin" in str(b) for b in backbones) or prov.get("stand_in") is True
        facts.append(("STAND-IN " if stand_in else "") + f"backbone {', '.join(map(str, backbones))}")
    facts.append("GPU run" if device.lower().startswith(("cuda", "gpu")) else "CPU run")
    precision = prov.get("precision") or params.get("precision")
    if precision:
        facts.append(f"{precision} arithmetic")
    schedule = schedule_fact(params, paper_schedule, run.kind)
    if schedule:
        facts.append(schedule)
    if run.cut_short:
        facts.append("cut short (not every planned unit ran)")
    return ", ".join(facts)


def schedule_fact(params: dict, paper_schedule: dict | None, kind: str) -> str:
    """``the paper's schedule`` when every declared value matches the run's parameters, else the ones that differ
    (``epochs 5 (paper: 50)``); without a declaration, a CPU run is called ``shortened schedule``."""
    if not paper_schedule:
        return "" if kind == "gpu-full" else "shortened schedule"
    if any(k not in params for k in paper_schedule):
        return "shortened schedule"
    differ = [f"{k} {params[k]} (paper: {v})" for k, v in paper_schedule.items() if params[k] != v]
    return "schedule: " + ", ".join(differ) if differ else "the paper's schedule"


def differs_text(run, declared: dict) -> str:
    """The chapter's own statement of what differs from the paper, then what the run's provenance says."""
    return "; ".join(p for p in (str(declared.get("differs", "")).strip(), run_facts(run, declared.get("paper_schedule")))
                     if p)


# ----------------------------------------------------------------------------- tables


def claims_table(chapter: str, run_name: str | None = None, root: Path | None = None,
                 with_paper: bool = False) -> tuple[pd.DataFrame, list[Evaluation], "results.Run | None"]:
    """One row per claim: claim, kind, paper's numbers, ours, verdict, what differs."""
    declared = load_claims(chapter, root)
    evaluations, run = evaluate(chapter, run_name, root)
    rows = []
    for i, ev in enumerate(evaluations, 1):
        row = {"paper": str(declared.get("paper", chapter)).split(" (")[0]} if with_paper else {"#": i}
        kind = ev.claim.get("kind", "main table")
        claim = ("Ablation: " if kind == "ablation" else "") + ev.claim["claim"]
        claim += f" ({ev.claim['note']})" if ev.claim.get("note") else ""
        row.update({"claim": claim, "paper reports": reported_text(chapter, ev.claim, root),
                    "ours (headline run)": ev.summary(), "verdict": ev.verdict,
                    "what differs": run_facts(run, declared.get("paper_schedule"))})
        rows.append(row)
    return pd.DataFrame(rows), evaluations, run


def evidence_table(evaluations: list[Evaluation]) -> pd.DataFrame:
    """Each claim's face-to-face comparisons, one row per dataset (and backbone); ``#`` is the claim's row."""
    rows = []
    for i, ev in enumerate(evaluations, 1):
        for u in ev.units:
            better, worse = u.sides()
            rows.append({"#": i, "where": u.label, "claimed better": better, "claimed worse": worse, "outcome": u.outcome})
    return pd.DataFrame(rows, columns=["#", "where", "claimed better", "claimed worse", "outcome"])


def counts(evaluations: list[Evaluation]) -> str:
    """``2 reproduced, 3 partly, 1 not reproduced, 1 not testable here`` (verdicts that occur, in order)."""
    found = [ev.verdict for ev in evaluations]
    return ", ".join(f"{found.count(v)} {v}" for v in VERDICTS if v in found)


def summary_markdown(chapters=PAPER_CHAPTERS, root: Path | None = None) -> str:
    """The front page's reproduction summary: every chapter's claims, the rule, the headline runs."""
    from medad.reports.common import html_table

    tables, runs_rows, all_evaluations = [], [], []
    for chapter in chapters:
        table, evaluations, run = claims_table(chapter, root=root, with_paper=True)
        declared = load_claims(chapter, root)
        tables.append(table.assign(**{"what differs": differs_text(run, declared)}))
        all_evaluations += evaluations
        runs_rows.append({"paper": declared.get("paper", chapter),
                          "headline run": run.name if run else "none committed",
                          "schedule": run.provenance.get("schedule", "–") if run else "–",
                          "device": run.provenance.get("device", "–") if run else "–",
                          "commit": run.provenance.get("commit", "–") if run else "–"})
    claims = pd.concat(tables, ignore_index=True)
    return "\n\n".join([
        f"Verdicts over the {len(all_evaluations)} claims: {counts(all_evaluations)}.",
        html_table(claims, bold=("verdict",), merge=("paper", "what differs")),
        "**How a verdict is decided.** " + RULE,
        "**The headline runs** these verdicts come from (each chapter's best committed run, "
        "`results/<chapter>/<run>/`; the table above is recomputed from them at every build):",
        html_table(pd.DataFrame(runs_rows)),
    ]) + "\n"


# ----------------------------------------------------------------------------- in a chapter


def show_chapter(chapter: str, run_name: str | None = None, glue=None) -> list[Evaluation]:
    """Display a chapter's claims table and per-dataset evidence; glue ``claim_<id>`` (the verdict) and ``claims_counts``."""
    from IPython.display import Markdown, display

    from medad.reports.common import show_table

    table, evaluations, run = claims_table(chapter, run_name)
    label = run.label if run is not None else "no committed run"
    display(Markdown(f"**What differs from the paper:** {differs_text(run, load_claims(chapter))}."))
    styled = show_table(table, index=False, caption=f"What was reproduced, from the headline run {label}")
    display(styled.set_properties(subset=["verdict"], **{"font-weight": "bold"}))
    evidence = evidence_table(evaluations)
    if len(evidence):
        display(show_table(evidence, index=False, caption="The comparisons behind each verdict (# is the claim's row), "
                                                          "per dataset and backbone"))
    display(Markdown("*How a verdict is decided:* " + RULE))
    if glue is not None:
        for ev in evaluations:
            glue(f"claim_{ev.id}", ev.verdict)
        glue("claims_counts", counts(evaluations))
    return evaluations
