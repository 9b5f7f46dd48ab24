"""Execute the chapters and build the book: what ``make book`` / ``python -m medad book`` runs.

For each chapter listed in ``_toc.yml`` (as ``book/executed/<chapter>``):

1. read ``notebooks/<chapter>.py`` (Jupytext py:percent) into a notebook;
2. skip it when its *stamp* is unchanged — a hash of the source, the
   parameters, the data archives' checksums and medad's own code — and the
   last execution succeeded;
3. otherwise execute it with papermill under the profile, writing
   ``book/executed/<chapter>.ipynb`` (written even when a cell fails, so the
   error shows in the book);
4. keep going past a failing chapter;

then build the HTML with Jupyter Book (execution off: the notebooks are
already executed), and fail at the end naming every failed chapter and its
error. As d2l and MONAI do it: one failing chapter never hides the others.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from medad.errors import ConfigError
from medad.paths import BOOK_DIR, NOTEBOOKS_DIR, REPO_ROOT

EXECUTED_DIR = BOOK_DIR / "executed"
TOC = REPO_ROOT / "_toc.yml"
CONFIG = REPO_ROOT / "_config.yml"


@dataclass
class ChapterOutcome:
    chapter: str
    status: str  # "executed" | "cached" | "failed"
    seconds: float = 0.0
    error: str = ""


def chapters_from_toc(toc_path: Path | None = None) -> list[str]:
    """Chapters in book order: the ``book/executed/<name>`` files of the table of contents."""
    toc_path = toc_path or TOC
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            file = node.get("file") or node.get("root")
            if isinstance(file, str) and file.startswith("book/executed/"):
                found.append(Path(file).stem)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load(toc_path.read_text()))
    return found


def _code_digest() -> str:
    digest = hashlib.sha256()
    package = REPO_ROOT / "medad"
    for path in sorted(package.rglob("*")):
        if path.suffix in {".py", ".yml"} and "__pycache__" not in path.parts:
            digest.update(path.relative_to(package).as_posix().encode())
            digest.update(path.read_bytes())
    for path in sorted((REPO_ROOT / "data").rglob("*")):
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _data_digest(data_dir: Path | None) -> dict:
    """Checksums of the registered archives present in ``data_dir`` (cached; cheap after the first time)."""
    if data_dir is None:
        return {"data": "synthetic"}
    from medad.data.registry import archive_checksum, list_datasets, locate_archive, manifest
    from medad.errors import DataError

    seen = {}
    keys = sorted({k for k in manifest()})
    for key in keys:
        try:
            archive = locate_archive(key, data_dir)
        except DataError:
            continue
        seen[key] = archive_checksum(archive, key) if archive.is_zip else f"folder:{len(archive.names())}"
    seen["registered"] = ",".join(list_datasets())
    return seen


def chapter_stamp(chapter: str, parameters: dict, data_dir: Path | None) -> str:
    source = (NOTEBOOKS_DIR / f"{chapter}.py").read_bytes()
    payload = json.dumps(
        {"parameters": parameters, "data": _data_digest(data_dir), "code": _code_digest()}, sort_keys=True, default=str
    ).encode()
    return hashlib.sha256(source + b"\0" + payload).hexdigest()


def _to_notebook(chapter: str, dest: Path) -> Path:
    import jupytext
    import nbformat

    source = NOTEBOOKS_DIR / f"{chapter}.py"
    if not source.is_file():
        raise ConfigError(f"chapter {chapter!r}: source {source} does not exist (listed in _toc.yml)")
    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return dest


def execute_chapter(chapter: str, profile: str, data_dir: Path | None, force: bool = False, extra: dict | None = None) -> ChapterOutcome:
    """Execute one chapter with papermill unless its stamp is unchanged."""
    import papermill

    parameters = {"profile": profile, "data_dir": str(data_dir) if data_dir else None, **(extra or {})}
    output = EXECUTED_DIR / f"{chapter}.ipynb"
    stamp_file = EXECUTED_DIR / f"{chapter}.stamp.json"
    t0 = time.perf_counter()
    try:
        stamp = chapter_stamp(chapter, parameters, data_dir)
    except (ConfigError, FileNotFoundError, OSError) as exc:
        return ChapterOutcome(chapter, "failed", 0.0, f"{type(exc).__name__}: {exc}")
    if not force and output.is_file() and stamp_file.is_file():
        previous = json.loads(stamp_file.read_text())
        if previous.get("stamp") == stamp and previous.get("status") == "ok":
            return ChapterOutcome(chapter, "cached", 0.0)
    stamp_file.unlink(missing_ok=True)
    EXECUTED_DIR.mkdir(parents=True, exist_ok=True)
    # The kernel inherits this environment: figures must render inline even where
    # MPLBACKEND=Agg is set (tests, headless shells), or the book would have no plots.
    kernel_env = {"MEDAD_RUN_DIR": str(REPO_ROOT / "runs" / f"{chapter}-{profile}"),
                  "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    saved = {k: os.environ.get(k) for k in kernel_env}
    os.environ.update(kernel_env)
    try:
        source_nb = _to_notebook(chapter, REPO_ROOT / "build" / "notebooks" / f"{chapter}.ipynb")
        papermill.execute_notebook(
            str(source_nb), str(output), parameters=parameters, kernel_name="python3",
            cwd=str(NOTEBOOKS_DIR), progress_bar=False, log_output=False,
        )
    except Exception as exc:  # a chapter's failure is reported at the end, never hides the others
        return ChapterOutcome(chapter, "failed", time.perf_counter() - t0, _short_error(exc))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    seconds = time.perf_counter() - t0
    stamp_file.write_text(json.dumps({"stamp": stamp, "status": "ok", "seconds": round(seconds, 1), "profile": profile}))
    return ChapterOutcome(chapter, "executed", seconds)


def _short_error(exc: Exception) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    cell = getattr(exc, "exec_count", None)
    where = f" (cell {cell})" if cell else ""
    return f"{ename}: {evalue}{where}".strip()[:2000]


def build_html(quiet: bool = True) -> subprocess.CompletedProcess:
    from medad.mathjax import ensure_local_mathjax

    ensure_local_mathjax(BOOK_DIR / "_static" / "mathjax")
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(REPO_ROOT), "--path-output", str(BOOK_DIR)]
    if quiet:
        cmd.append("-q")
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)


def build_book(profile: str = "quick", data_dir: str | None = None, chapters: list[str] | None = None,
               force: bool = False, html: bool = True, echo=print) -> int:
    """Execute the chapters (all, or ``chapters``), build the HTML; return 0 only if everything worked."""
    from medad.data.registry import resolve_data_dir
    from medad.profiles import PROFILES

    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    root = resolve_data_dir(data_dir)
    if root is not None and not root.is_dir():
        raise ConfigError(f"data directory {root} does not exist (from --data-dir or MEDAD_DATA)")
    listed = chapters_from_toc()
    chosen = chapters or listed
    unknown = [c for c in chosen if c not in listed]
    if unknown:
        raise ConfigError(f"unknown chapter(s) {', '.join(unknown)}; chapters in _toc.yml: {', '.join(listed)}")
    echo(f"medad book: profile={profile}, data={'real: ' + str(root) if root else 'synthetic (no data directory given)'}")
    outcomes = []
    for chapter in chosen:
        echo(f"  {chapter}: executing ...")
        outcome = execute_chapter(chapter, profile, root, force=force)
        outcomes.append(outcome)
        echo(f"  {chapter}: {outcome.status} ({outcome.seconds:.0f} s){'  ' + outcome.error if outcome.error else ''}")
    status = 0
    if html:
        missing = [c for c in listed if not (EXECUTED_DIR / f"{c}.ipynb").is_file()]
        for c in missing:  # a chapter never executed still gets a page saying so, so the build can proceed
            _placeholder(c)
        proc = build_html()
        if proc.returncode != 0:
            echo(proc.stdout[-3000:] + proc.stderr[-3000:])
            echo("HTML build failed")
            status = 1
        else:
            echo(f"HTML: {BOOK_DIR / '_build' / 'html' / 'index.html'}")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        echo(f"{len(failed)} chapter(s) failed:")
        for o in failed:
            echo(f"  - {o.chapter}: {o.error}")
        status = 1
    return status


def _placeholder(chapter: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {chapter}\n\nThis chapter has not been executed yet: run `make book` (or `python -m medad book --chapters {chapter}`).")]
    EXECUTED_DIR.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, EXECUTED_DIR / f"{chapter}.ipynb")
