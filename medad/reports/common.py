"""Report blocks every chapter shares: headline results, parameters table, module list, tables, captions.

The chapter notebooks call these from cells tagged ``remove-input``; what they
display is built here once, so that every chapter looks the same.
"""
from __future__ import annotations

import html
import importlib
import re
import warnings
from contextlib import contextmanager
from typing import Sequence

import pandas as pd
import yaml

from medad import results
from medad.paths import REPO_ROOT


# ----------------------------------------------------------------------------- quiet execution


@contextmanager
def quiet():
    """Silence warnings inside a chapter step: the rendered book must carry no stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def quiet_notebook() -> None:
    """For a whole chapter: no warnings or log records on stderr (they would show in the book), no progress bars.

    What such a warning says must be in the chapter itself where it matters
    (e.g. the speed table's "random weights" column), not in a stderr box.
    """
    import logging
    import os

    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns through the root logger
    os.environ["TQDM_DISABLE"] = "1"  # tqdm >= 4.66 reads it: no bar even if a caller asks for one


# ----------------------------------------------------------------------------- display helpers


def show_table(table: pd.DataFrame, caption: str = "", index: bool = True, percent: Sequence[str] = (),
               digits: int = 3):
    """A page-width table: named columns, numbers rounded, a caption above it."""
    formats = {c: ("{:.1%}" if c in percent else f"{{:.{digits}f}}") for c in table.columns
               if pd.api.types.is_float_dtype(table[c])}
    styler = table.style.format(formats, na_rep="–").set_table_attributes('class="medad-table"')
    if caption:
        styler = styler.set_caption(caption)
    if not index:
        styler = styler.hide(axis="index")
    return styler


def caption(text: str):
    """A one-line figure caption shown under the figure (HTML, so it renders in the book as written)."""
    from IPython.display import HTML

    return HTML(f'<p class="medad-caption">{html.escape(text)}</p>')


def show_figure(fig, text: str) -> None:
    """Show a finished figure and its one-line caption, then close it (no duplicate output)."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    display(fig)
    plt.close(fig)
    display(caption(text))


# ----------------------------------------------------------------------------- headline results


def headline(chapter: str, run_name: str | None = None, select=None, index: str = "method", columns: str = "metric",
             digits: int = 3, percent: bool = False):
    """The chapter's best committed run next to the paper's reported numbers.

    Returns ``(run, table)``: the :class:`medad.results.Run` (None when nothing is
    committed) and a display table with one row per ``index`` value and, for every
    ``columns`` value (a metric), one column for the run and one for the reported
    numbers, each cell ``value (low–high)``. ``select`` filters the run's tidy table
    to the rows the paper reports (e.g. one setting).
    """
    run = results.headline_run(chapter, run_name)
    if run is None:
        return None, None
    ours = run.table if select is None else select(run.table)
    try:
        reported = results.load_reported(chapter)
    except results.DataError:
        reported = pd.DataFrame(columns=results.REPORTED_COLUMNS)
    merged = results.side_by_side(ours, reported, "this book", keys=(index, columns), digits=digits, percent=percent)
    wide = merged.melt(id_vars=[index, columns], var_name="source", value_name="cell")
    wide["column"] = wide[columns] + ", " + wide["source"]
    order = [f"{m}, {s}" for m in dict.fromkeys(merged[columns]) for s in ("this book", "reported")]
    table = wide.pivot_table(index=index, columns="column", values="cell", aggfunc="first", sort=False)
    rows = list(dict.fromkeys([*ours[index], *reported[index]]))
    table = table.reindex(index=rows, columns=[c for c in order if c in table.columns]).fillna("–")
    table.columns.name = None
    return run, table


def headline_label(run) -> str:
    """``**Headline run** long-cpu-2026-11-22 (long CPU run: ...), commit ..., device ...`` as Markdown."""
    prov = run.provenance
    parts = [f"**Headline run:** {run.label}"]
    if prov.get("commit"):
        parts.append(f"commit `{prov['commit']}`")
    if prov.get("device"):
        parts.append(str(prov["device"]))
    return "; ".join(parts) + "."


def sources_markdown(chapter: str) -> str:
    """The reported numbers' sources, one bullet per distinct source."""
    try:
        reported = results.load_reported(chapter)
    except results.DataError:
        return ""
    items = [f"- {source}: {', '.join(dict.fromkeys(part['method']))}"
             for source, part in reported.groupby("source", sort=False)]
    return "Reported numbers (copied from the cited papers, labelled *reported*):\n\n" + "\n".join(items)


# ----------------------------------------------------------------------------- parameters and modules


def _short(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(_short(v) for v in value) if value else "–"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) or "–"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parameters_table(chapter: str) -> pd.DataFrame:
    """Every declared parameter of ``medad/profiles/<chapter>.yml``: quick and full values, what it means and accepts.

    Built from ``medad.params.parameter_table`` (the profile and its ``schema:``), never typed.
    """
    from medad import params

    rows = [{"parameter": r["name"], "quick": _short(r["quick"]), "full": _short(r["full"]),
             "meaning (allowed)": f"{r['help']} ({r['allowed']})" if r["help"] else f"({r['allowed']})"}
            for r in params.parameter_table(chapter)]
    return pd.DataFrame(rows)


def parameters_block(chapter: str):
    """The parameters table, styled for the page."""
    return show_table(parameters_table(chapter), index=False,
                      caption=f"Parameters (medad/profiles/{chapter}.yml); papermill -p NAME VALUE overrides one")


def modules_markdown(modules: Sequence[str]) -> str:
    """A list of the chapter's medad modules, each with its source path and the first line of its docstring."""
    lines = []
    for name in modules:
        module = importlib.import_module(name)
        doc = _plain(module.__doc__ or "").strip().splitlines()
        path = name.replace(".", "/") + (".py" if not hasattr(module, "__path__") else "/__init__.py")
        url = _source_url(path)
        where = f"[`{path}`]({url})" if url else f"`{path}`"
        lines.append(f"- `{name}` ({where}) — {doc[0] if doc else ''}")
    return "\n".join(lines)


def _plain(text: str) -> str:
    """Docstring text without Sphinx roles: ``:class:`~a.B``` -> ```B```."""
    return re.sub(r":\w+:`~?\.?([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", text)


def _source_url(path: str) -> str:
    """A link to a module's source: under ``repository.url`` of _config.yml when set, else none."""
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text()) or {}
    base = ((config.get("repository") or {}).get("url") or "").rstrip("/")
    branch = (config.get("repository") or {}).get("branch", "main")
    return f"{base}/blob/{branch}/{path}" if base else ""


def code_and_parameters(chapter: str, modules: Sequence[str]) -> None:
    """Display the chapter's modules and its parameters table (the "Code and parameters" section)."""
    from IPython.display import Markdown, display

    display(Markdown(modules_markdown(modules)))
    display(parameters_block(chapter))


# ----------------------------------------------------------------------------- generated pages (front page, course page)


_URL = re.compile(r"https?://[^\s<>()\"',;]+[^\s<>()\"',;.]")


def html_table(table: pd.DataFrame, caption: str = "", bold: Sequence[str] = (), merge: Sequence[str] = ()) -> str:
    """A page-width ``medad-table`` as raw HTML, for Markdown the book build generates (MyST passes it through).

    Every cell is escaped and its web addresses linked; the columns named in ``bold`` are set in bold.
    A column in ``merge`` shows a run of equal cells once (``rowspan``), within the runs of the first
    such column (e.g. the paper, then what differs for that paper). The index is not shown.
    """
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    values = [list(v) for v in table.itertuples(index=False)]
    spans = {}  # (row, column) -> rowspan; 0 = covered by the cell above
    for c, column in enumerate(table.columns):
        if column not in merge:
            continue
        group = [list(table.columns).index(merge[0])] if column != merge[0] else []
        start = 0
        for r in range(1, len(values) + 1):
            same = r < len(values) and values[r][c] == values[start][c] and all(values[r][g] == values[start][g] for g in group)
            if not same:
                spans[(start, c)] = r - start
                for covered in range(start + 1, r):
                    spans[(covered, c)] = 0
                start = r
    rows = []
    for r, row_values in enumerate(values):
        cells = []
        for c, (column, value) in enumerate(zip(table.columns, row_values)):
            span = spans.get((r, c), 1)
            if span == 0:
                continue
            text = html.escape("–" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value))
            text = _URL.sub(lambda m: f'<a href="{m.group(0)}">{m.group(0)}</a>', text)
            attr = f' rowspan="{span}"' if span > 1 else ""
            cells.append(f"<td{attr}><b>{text}</b></td>" if column in bold else f"<td{attr}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return (f'<table class="medad-table">{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")
