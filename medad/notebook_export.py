"""Executed notebooks that read outside the book: glued values written into the prose, no machine paths.

The book shows every number of the prose through myst-nb's ``glue``: the markdown
says ``{glue:text}`h_few_ac:.3f``` and the value sits, invisible, in a code cell's
output. Opened in Jupyter (the book's ``.ipynb`` download, or a student's papermill
run) that markup is all one sees. :func:`render_glue` replaces each glue role and
``{glue:md}`` directive with the glued value, formatted as myst-nb formats it, and
turns the MyST blocks Jupyter cannot show (dropdowns, exercises, solutions) into
HTML ``<details>``. :func:`scrub_paths` replaces the build machine's paths (the
injected ``data_dir``, the repository, the home folder) with placeholders.

    python -m medad render-glue out.ipynb            # in place
    python -m medad render-glue out.ipynb -o read.ipynb

The book pipeline calls :func:`scrub_notebook` on each executed chapter (the page keeps
its glue) and :func:`export_downloads` after the HTML build, so the ``.ipynb`` the
book offers is the rendered copy. The provenance table, which the book shows at the
top through ``{glue:md} provenance``, is then the first thing in the notebook too.
"""
from __future__ import annotations

import ast
import html
import os
import re
from pathlib import Path

from medad.errors import ConfigError, DataError

GLUE_PREFIX = "application/papermill.record/"
DATA_PLACEHOLDER = "<DATA_DIR>"
REPO_PLACEHOLDER = "<REPO>"
HOME_PLACEHOLDER = "~"

# {glue}`key`, {glue:}`key`, {glue:any}`key`, {glue:text}`key:fmt`, {glue:md}`key:format`
_ROLE = re.compile(r"\{glue(?::(?P<kind>text|md|any))?:?\}`(?P<body>[^`]+)`")
# ```{glue:md} key  (or {glue}, {glue:any}, {glue:figure}) with option lines, closed by the same fence
_DIRECTIVE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{glue(?::(?P<kind>md|any|figure))?\}[ \t]+(?P<key>\S+)[ \t]*\n"
                        r"(?P<body>(?:.*\n)*?)(?P=fence)[ \t]*$", re.MULTILINE)
_CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")
_FENCE_OPEN = re.compile(r"^(?P<fence>:{3,}|`{3,})\{(?P<name>dropdown|exercise|solution|admonition|note|warning)\}[ \t]*(?P<title>.*)$")


# ----------------------------------------------------------------------------- glued values


def glued_values(nb) -> dict[str, dict]:
    """Every glued value of an executed notebook: name -> its mime bundle (without the papermill prefix)."""
    values = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("scrapbook")
            if not meta:
                continue
            prefix = len(meta.get("mime_prefix", ""))
            values[meta["name"]] = {k[prefix:]: v for k, v in output.get("data", {}).items()}
    return values


def format_plain(text: str, spec: str) -> str:
    """A glued ``text/plain`` value formatted with a format spec, as myst-nb's ``{glue:text}`` does."""
    try:
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        value = text
    if spec == "":
        return str(value)
    kind = spec[-1]
    if kind == "s":
        value = str(value)
    elif kind in "bcdoxX":
        value = int(value)
    elif kind in "eEfFgGn%":
        value = float(value)
    return format(value, spec)


def _text(bundle: dict) -> str:
    return "".join(bundle["text/plain"]) if isinstance(bundle.get("text/plain"), list) else str(bundle.get("text/plain", ""))


def _markdown(bundle: dict) -> str:
    md = bundle.get("text/markdown", "")
    return "".join(md) if isinstance(md, list) else str(md)


def _missing(key: str) -> str:
    return f"[{key}: not computed]"


def _role(match, values: dict) -> str:
    kind, body = match.group("kind") or "any", match.group("body")
    key, _, spec = body.partition(":") if kind in ("text", "md") else (body, "", "")
    bundle = values.get(key)
    if bundle is None:
        return _missing(key)
    if kind == "md" and "text/markdown" in bundle:
        return _markdown(bundle).strip()
    if "text/plain" not in bundle:
        return _markdown(bundle).strip() or _missing(key)
    try:
        return format_plain(_text(bundle), spec if kind == "text" else "")
    except (ValueError, TypeError):
        return _text(bundle)


def _directive(match, values: dict) -> str:
    key, kind = match.group("key"), match.group("kind") or "any"
    bundle = values.get(key)
    if bundle is None:
        return _missing(key)
    if kind == "figure" or ("image/png" in bundle and "text/markdown" not in bundle):
        png = bundle.get("image/png")
        return f"![{key}](data:image/png;base64,{''.join(png) if isinstance(png, list) else png})" if png else _missing(key)
    if "text/markdown" in bundle:
        return _markdown(bundle).strip()
    return _text(bundle)


def myst_to_jupyter(markdown: str) -> str:
    """MyST that Jupyter cannot show, rewritten: ``{cite}`a,b``` -> ``[a, b]``, folded blocks -> ``<details>``."""
    markdown = _CITE.sub(lambda m: "[" + ", ".join(k.strip() for k in m.group(1).split(",")) + "]", markdown)
    out, stack = [], []
    lines = markdown.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        opened = _FENCE_OPEN.match(line)
        if opened:
            name, title = opened.group("name"), opened.group("title").strip()
            i += 1
            options = {}
            while i < len(lines) and re.match(r"^:[\w-]+:", lines[i]):  # directive options (:label:, :class:)
                key, _, value = lines[i][1:].partition(":")
                options[key.strip()] = value.strip()
                i += 1
            if name == "solution":
                summary = "Solution (click to open)"
            elif name == "exercise":
                summary = f"Exercise: {title}" if title else "Exercise"
            else:
                summary = title or name.capitalize()
            is_open = name in ("exercise", "admonition", "note", "warning")
            out += [f"<details{' open' if is_open else ''}><summary><b>{html.escape(summary)}</b></summary>", ""]
            stack.append(opened.group("fence"))
            continue
        if stack and line.strip() == stack[-1]:
            stack.pop()
            out += ["", "</details>"]
            i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def render_markdown(source: str, values: dict) -> str:
    """One markdown cell with every glue role and directive replaced by its value."""
    source = _DIRECTIVE.sub(lambda m: _directive(m, values), source)
    source = _ROLE.sub(lambda m: _role(m, values), source)
    return myst_to_jupyter(source)


def render_glue(nb):
    """The notebook with glued values written into its markdown (and into markdown outputs), provenance first."""
    values = glued_values(nb)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = render_markdown(cell.source, values)
        elif cell.cell_type == "code":
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                if "text/markdown" in data and "scrapbook" not in output.get("metadata", {}):
                    text = "".join(data["text/markdown"]) if isinstance(data["text/markdown"], list) else data["text/markdown"]
                    data["text/markdown"] = myst_to_jupyter(text)
    _provenance_first(nb, values)
    return nb


def _provenance_first(nb, values: dict) -> None:
    """Where no markdown cell showed the provenance, put it under the title: it is the first thing to read."""
    import nbformat

    bundle = values.get("provenance")
    if bundle is None or "text/markdown" not in bundle:
        return
    table = myst_to_jupyter(_markdown(bundle).strip())
    first_line = table.splitlines()[0] if table else ""
    if any(c.cell_type == "markdown" and first_line and first_line in c.source for c in nb.cells):
        return
    at = 1 if nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("#") else 0
    nb.cells.insert(at, nbformat.v4.new_markdown_cell(table))


# ----------------------------------------------------------------------------- paths


def machine_paths(nb, extra: dict | None = None) -> dict[str, str]:
    """Paths of the build machine to hide, longest first: the data folder papermill injected, this
    repository, the home folder (and ``extra``), each with its placeholder."""
    from medad.paths import REPO_ROOT

    found = {}
    data_dir = (nb.metadata.get("papermill", {}).get("parameters") or {}).get("data_dir")
    if data_dir:
        found[str(data_dir).rstrip("/")] = DATA_PLACEHOLDER
    if os.environ.get("MEDAD_DATA"):
        found.setdefault(os.environ["MEDAD_DATA"].rstrip("/"), DATA_PLACEHOLDER)
    found[str(REPO_ROOT)] = REPO_PLACEHOLDER
    home = str(Path.home())
    if home not in ("/", ""):
        found[home] = HOME_PLACEHOLDER
    found.update(extra or {})
    for path in list(found):  # the same folder reached through a symbolic link
        real = os.path.realpath(path)
        if real != path:
            found.setdefault(real, found[path])
    return dict(sorted(found.items(), key=lambda kv: -len(kv[0])))


def _scrub(value, paths: dict):
    if isinstance(value, str):
        for path, placeholder in paths.items():
            value = value.replace(path, placeholder)
        return value
    if isinstance(value, list):
        return [_scrub(v, paths) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, paths) for k, v in value.items()}
    return value


def scrub_paths(nb, paths: dict[str, str]):
    """Every path of ``paths`` replaced by its placeholder: sources, outputs and notebook metadata."""
    import nbformat

    for cell in nb.cells:
        cell.source = _scrub(cell.source, paths)
        if cell.cell_type == "code":
            cell.outputs = [nbformat.from_dict(_scrub(dict(o), paths)) for o in cell.get("outputs", [])]
    nb.metadata = nbformat.from_dict(_scrub(dict(nb.metadata), paths))
    return nb


def leaked_paths(nb, paths) -> list[str]:
    """Which of ``paths`` still occur anywhere in the notebook (for tests and checks)."""
    import nbformat

    text = nbformat.writes(nb)
    return [p for p in paths if p and p in text]


# ----------------------------------------------------------------------------- files


def _read(path: Path):
    import nbformat

    if not path.is_file():
        raise DataError(f"{path}: no such notebook")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as exc:  # nbformat raises several kinds for a file that is not a notebook
        raise DataError(f"{path} is not a readable notebook ({type(exc).__name__}: {exc})") from None


def scrub_notebook(path: Path) -> None:
    """Hide the build machine's paths in an executed notebook, in place (its glue is kept for the book)."""
    import nbformat

    nb = _read(Path(path))
    nbformat.write(scrub_paths(nb, machine_paths(nb)), path)


def export_notebook(source: Path, dest: Path | None = None) -> Path:
    """``source`` rendered to read anywhere (glue into text, MyST into HTML, no machine paths) at ``dest``."""
    import nbformat

    source = Path(source)
    dest = Path(dest) if dest else source
    nb = _read(source)
    paths = machine_paths(nb)
    nb = scrub_paths(render_glue(nb), paths)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, dest)
    return dest


def export_downloads(executed_dir: Path, html_dir: Path) -> list[Path]:
    """Replace the book's downloadable copies (``_sources/<page>.ipynb``) with rendered ones."""
    written = []
    sources = Path(html_dir) / "_sources"
    for notebook in sorted(Path(executed_dir).glob("*.ipynb")):
        for target in sources.rglob(notebook.name):
            if target.parent.name == Path(executed_dir).name:
                written.append(export_notebook(notebook, target))
    return written


def main(paths: list[str], output: str | None = None) -> int:
    """``python -m medad render-glue NOTEBOOK [-o OUT]``."""
    if output and len(paths) != 1:
        raise ConfigError("-o names one output file: give one notebook with it")
    for path in paths:
        dest = export_notebook(Path(path), Path(output) if output else None)
        print(f"wrote {dest}")
    return 0
