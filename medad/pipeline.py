"""Execute the chapters and build the book: what ``make book`` / ``python -m medad book`` runs.

For each chapter listed in ``_toc.yml`` (as ``book/executed/<chapter>``):

1. read ``notebooks/<chapter>.py`` (Jupytext py:percent) into a notebook;
2. skip it when its *stamp* is unchanged and the last execution succeeded. The
   stamp covers what the chapter depends on: its notebook source, its profile
   YAML, the parameters, the medad modules it imported and the data archives it
   read during its last execution (``reads.json``, written by
   ``ChapterRun.finish``), and which archives the data directory holds. So
   editing the Probabilistic U-Net code re-executes that chapter only. The
   reason for each re-execution is printed;
3. otherwise execute it with papermill under the profile, into
   ``build/executing/``; only a finished execution replaces
   ``book/executed/<chapter>.ipynb`` (atomically, as does its stamp), so an
   interrupted build (Ctrl-C) leaves the previous good output in place. A
   failed execution never replaces a good one: the last good execution stays,
   under an error admonition that gives the failure's date and error (a chapter
   that never succeeded shows its failed execution instead), so the book shows
   the chapter as failed without losing its last results;
4. keep going past a failing chapter;

then build the HTML with Jupyter Book (execution off: the notebooks are
already executed), and fail at the end naming every failed chapter and its
error. As d2l and MONAI do it: one failing chapter never hides the others.

A data directory is resolved to an absolute path here, against the folder the
command runs in, before it reaches a kernel (kernels run in ``notebooks/``).
One build at a time holds a book tree (``build/book.lock``); a second one stops
with a message naming the first.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from medad.data.atomic import TEMP_MARK, write_atomic
from medad.errors import INTERRUPTED_EXIT, BusyError, ConfigError, DataError, MedadError, one_line
from medad.paths import BOOK_DIR, NOTEBOOKS_DIR, REPO_ROOT

EXECUTED_DIR = BOOK_DIR / "executed"
SOURCE_ROOT = REPO_ROOT  # where medad's own files are (tests move REPO_ROOT, the book's folder, elsewhere)
TOC = REPO_ROOT / "_toc.yml"
CONFIG = REPO_ROOT / "_config.yml"
FAILURE_TAG = "medad-last-execution-failed"


@dataclass
class ChapterOutcome:
    chapter: str
    status: str  # "executed" | "cached" | "failed"
    seconds: float = 0.0
    error: str = ""
    reason: str = ""  # why it was (re-)executed


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


# ----------------------------------------------------------------------------- stamps


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha(path: Path) -> str:
    return _sha(path.read_bytes()) if path.is_file() else "missing"


def _all_medad_files() -> list[str]:
    """Every source file of the package: what a chapter without a ``reads.json`` is assumed to depend on."""
    package = SOURCE_ROOT / "medad"
    return sorted(p.relative_to(SOURCE_ROOT).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def _archive_state(key: str, data_dir: Path, checksum: bool) -> str:
    """An archive's identity in ``data_dir``: its checksum (when the chapter read it) or just whether it is there."""
    from medad.data.registry import archive_checksum, locate_archive

    try:
        archive = locate_archive(key, data_dir)
        if not checksum:
            return "present"
        if archive.is_zip:
            return archive_checksum(archive, key)
        # no checksum for a folder: every file's name, size and mtime, so an edited file re-executes the chapter
        return f"folder:{len(archive.names())} files, state {archive.fingerprint()[:16]}"
    except DataError as exc:  # missing or unreadable: the kernel will say why, the stamp just differs
        return f"unavailable: {exc}"


def _data_parts(data_dir: Path | None, archives: list[str] | None) -> dict:
    """The data a chapter depends on: the manifest (chapters show its licences), which archives the
    folder holds, and the checksums and split files of those it read."""
    from medad.paths import DATA_MANIFEST_DIR, SPLITS_DIR

    parts = {"manifest": _file_sha(DATA_MANIFEST_DIR / "manifest.yml")}
    if data_dir is None:
        return {**parts, "data": "synthetic"}
    from medad.data.registry import manifest

    read = set(manifest()) if archives is None else set(archives)
    parts["folder"] = str(data_dir)
    for key in sorted(manifest()):
        parts[key] = _archive_state(key, data_dir, checksum=key in read)
        if key in read:
            parts[f"{key} split file"] = _file_sha(SPLITS_DIR / f"{key}.json")
    return parts


def stamp_parts(chapter: str, parameters: dict, data_dir: Path | None, reads: dict | None = None) -> dict:
    """What a chapter's output depends on, each part hashed, given what its last execution read."""
    from medad.profiles import profile_file
    from medad.reports.pages import chapter_inputs_digest

    modules = (reads or {}).get("modules") or _all_medad_files()
    return {
        "source": _file_sha(NOTEBOOKS_DIR / f"{chapter}.py"),
        "profile": _file_sha(profile_file(chapter)),
        "parameters": json.loads(json.dumps(parameters, sort_keys=True, default=str)),
        "data": _data_parts(data_dir, (reads or {}).get("archives")),
        "modules": {m: _file_sha(SOURCE_ROOT / m) for m in modules},  # an absolute m stays absolute
        "results": chapter_inputs_digest(chapter),  # committed runs, claims and exercises a chapter shows
    }


def chapter_stamp(chapter: str, parameters: dict, data_dir: Path | None, reads: dict | None = None) -> str:
    """One digest of :func:`stamp_parts`."""
    return _sha(json.dumps(stamp_parts(chapter, parameters, data_dir, reads), sort_keys=True).encode())


def _changed(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _listed(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def rerun_reasons(previous: dict | None, parts: dict) -> list[str]:
    """Why a chapter must be executed again (empty: its last good output is up to date)."""
    if not previous:
        return ["not executed before"]
    if previous.get("status") != "ok":
        return ["its last execution failed"]
    old = previous.get("parts")
    if not old:
        return ["its stamp is from an older medad"]
    reasons = []
    if old.get("source") != parts["source"]:
        reasons.append("its notebook source changed")
    if old.get("profile") != parts["profile"]:
        reasons.append("its profile YAML changed")
    if old.get("parameters") != parts["parameters"]:
        reasons.append(f"parameters changed: {_listed(_changed(old.get('parameters', {}), parts['parameters']))}")
    if old.get("data") != parts["data"]:
        reasons.append(f"data changed: {_listed(_changed(old.get('data', {}), parts['data']))}")
    if old.get("results") != parts.get("results"):
        reasons.append("its committed results, claims or exercises changed")
    if old.get("modules") != parts["modules"]:
        reasons.append(f"medad code it imports changed: {_listed(_changed(old.get('modules', {}), parts['modules']))}")
    return reasons


def _write_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename: readers see the old or the new file, never half.

    A failed write (disk full, read-only folder) leaves no temporary file and stops the build in one line.
    """
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise MedadError(f"cannot write {path} ({exc.strerror or exc}); free space or make {path.parent} writable, "
                         "then rerun: the previous file is unchanged") from exc


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


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


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def execute_chapter(chapter: str, profile: str, data_dir: Path | None, force: bool = False, extra: dict | None = None,
                    echo=None) -> ChapterOutcome:
    """Execute one chapter with papermill unless its stamp is unchanged; ``echo`` hears why it is executed."""
    import nbformat
    import papermill

    from medad.chapter import READS_FILE
    from medad.notebook_export import scrub_notebook

    echo = echo or (lambda line: None)
    parameters = {"profile": profile, "data_dir": str(data_dir) if data_dir else None, **(extra or {})}
    output = EXECUTED_DIR / f"{chapter}.ipynb"
    stamp_file = EXECUTED_DIR / f"{chapter}.stamp.json"
    run_dir = REPO_ROOT / "runs" / f"{chapter}-{profile}"
    previous = _read_json(stamp_file) if output.is_file() else None
    t0 = time.perf_counter()
    try:
        parts = stamp_parts(chapter, parameters, data_dir, (previous or {}).get("reads"))
    except (MedadError, OSError) as exc:
        return _failed(chapter, output, stamp_file, None, one_line(exc), 0.0, previous=previous)
    reasons = ["--force"] if force else rerun_reasons(previous, parts)
    if not reasons:
        return ChapterOutcome(chapter, "cached", 0.0)
    reason = "; ".join(reasons)
    echo(f"  {chapter}: executing ({reason}) ...")
    partial = REPO_ROOT / "build" / "executing" / f"{chapter}.ipynb"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.unlink(missing_ok=True)
    (run_dir / READS_FILE).unlink(missing_ok=True)
    # The kernel inherits this environment: figures must render inline even where
    # MPLBACKEND=Agg is set (tests, headless shells), or the book would have no plots.
    # It also imports the medad this process runs (first on its path), whatever the environment installed.
    # The data directory travels as the absolute path resolved here; an empty MEDAD_DATA means "not set", so a
    # relative MEDAD_DATA of the caller's shell never reaches a kernel that runs in another folder.
    kernel_env = {"MEDAD_RUN_DIR": str(run_dir), "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                  "MEDAD_DATA": str(data_dir) if data_dir else "",
                  "PYTHONPATH": os.pathsep.join(p for p in (str(SOURCE_ROOT), os.environ.get("PYTHONPATH")) if p)}
    saved = {k: os.environ.get(k) for k in kernel_env}
    os.environ.update(kernel_env)
    try:
        source_nb = _to_notebook(chapter, REPO_ROOT / "build" / "notebooks" / f"{chapter}.ipynb")
        papermill.execute_notebook(
            str(source_nb), str(partial), parameters=parameters, kernel_name="python3",
            cwd=str(NOTEBOOKS_DIR), progress_bar=False, log_output=False,
            # The kernel's own log is noise on the build's console: its start-up warning about unencrypted TCP,
            # and on Ctrl-C a ZMQ traceback from replying on a socket its shutdown closed. A cell's error
            # reaches the build through papermill, not through this log.
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )
    except Exception as exc:  # a chapter's failure is reported at the end, never hides the others
        if getattr(exc, "ename", "") == "KeyboardInterrupt":  # Ctrl-C reached the kernel first
            raise KeyboardInterrupt from exc
        return _failed(chapter, output, stamp_file, partial, _short_error(exc), time.perf_counter() - t0, parts, previous)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    seconds = time.perf_counter() - t0
    reads = _read_json(run_dir / READS_FILE)
    scrub_notebook(partial)  # the page shows no path of this machine (medad.notebook_export)
    _write_atomic(output, nbformat.writes(nbformat.read(partial, as_version=4)))
    partial.unlink(missing_ok=True)
    # the stamp records the parts computed from what this execution read (its imports may have changed)
    parts = stamp_parts(chapter, parameters, data_dir, reads)
    _write_atomic(stamp_file, json.dumps({"chapter": chapter, "status": "ok", "executed_at": _now(), "seconds": round(seconds, 1),
                                          "profile": profile, "reads": reads, "parts": parts}, indent=1))
    return ChapterOutcome(chapter, "executed", seconds, reason=reason)


def _last_good(output: Path, previous: dict | None) -> str | None:
    """When ``output`` holds a good execution (by its stamp), the date of that execution; else None."""
    if not previous or not output.is_file():
        return None
    if previous.get("status") == "ok":
        return previous.get("executed_at") or datetime.fromtimestamp(output.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return previous.get("good_executed_at")  # failed before, and the good execution was kept then


def _failed(chapter: str, output: Path, stamp_file: Path, partial: Path | None, error: str, seconds: float,
            parts: dict | None = None, previous: dict | None = None) -> ChapterOutcome:
    """Show the failure above the last good execution (kept), else above the failed one; stamp it as failed."""
    import nbformat

    good_date = _last_good(output, previous)
    if good_date:
        nb = nbformat.read(output, as_version=4)
        shown = f"Below is the last good execution of this chapter, from {good_date}; its results are not from this build."
    elif partial is not None and partial.is_file():
        nb = nbformat.read(partial, as_version=4)
        shown = "What follows stops at the failing cell."
    else:
        nb = _placeholder_notebook(chapter)
        shown = ""
    if partial is not None:
        partial.unlink(missing_ok=True)
    when = _now()
    mark_failed(nb, chapter, error, when=when, shown=shown)
    _write_atomic(output, nbformat.writes(nb))
    _write_atomic(stamp_file, json.dumps({"chapter": chapter, "status": "failed", "failed_at": when, "error": error,
                                          "good_executed_at": good_date, "parts": parts}, indent=1))
    return ChapterOutcome(chapter, "failed", seconds, error)


def mark_failed(nb, chapter: str, error: str, when: str = "", shown: str = "What follows stops at the failing cell.") -> None:
    """Put (or replace) an error admonition under the notebook's title: the book then shows the chapter as failed."""
    import nbformat

    # papermill's own red banners (one above the title) give way to one admonition under the title
    banners = {FAILURE_TAG, "papermill-error-cell-tag"}
    nb.cells = [c for c in nb.cells if not banners & set(c.get("metadata", {}).get("tags", []))]
    text = error.replace("`", "'")
    cell = nbformat.v4.new_markdown_cell(
        f":::{{admonition}} The last execution of this chapter failed\n:class: error\n\n"
        f"{'Failed on ' + when + ': ' if when else ''}`{text}`\n\n"
        f"{shown + ' ' if shown else ''}Fix the cause and run "
        f"`python -m medad book --chapters {chapter}` (see \"When something goes wrong\" in Reproducing).\n:::"
    )
    cell.metadata["tags"] = [FAILURE_TAG]
    first_is_title = bool(nb.cells) and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("#")
    nb.cells.insert(1 if first_is_title else 0, cell)


def _short_error(exc: Exception) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    cell = getattr(exc, "exec_count", None)
    where = f" (cell {cell})" if cell else ""
    return f"{ename}: {' '.join(str(evalue).split())}{where}".strip()[:2000]


def build_html(quiet: bool = True) -> subprocess.CompletedProcess:
    from medad.mathjax import ensure_local_mathjax
    from medad.notebook_export import export_downloads
    from medad.reports.pages import write_generated

    ensure_local_mathjax(BOOK_DIR / "_static" / "mathjax")
    write_generated(REPO_ROOT / "build" / "generated")  # the front page's claims, the course page's tables
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(REPO_ROOT), "--path-output", str(BOOK_DIR)]
    if quiet:
        cmd.append("-q")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode == 0:  # the .ipynb the book offers: glue written into the text (medad.notebook_export)
        export_downloads(EXECUTED_DIR, BOOK_DIR / "_build" / "html")
    return proc


def build_book(profile: str = "quick", data_dir: str | None = None, chapters: list[str] | None = None,
               force: bool = False, html: bool = True, echo=print) -> int:
    """Execute the chapters (all, or ``chapters``), build the HTML; return 0 only if everything worked."""
    from medad.data.registry import check_holds_archives, resolve_data_dir
    from medad.profiles import PROFILES

    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    root = resolve_data_dir(data_dir)  # absolute, against the caller's folder: kernels run elsewhere
    if root is not None:
        check_holds_archives(root)
    listed = chapters_from_toc()
    if chapters is not None and not chapters:
        raise ConfigError(f"no chapter given; chapters in _toc.yml: {', '.join(listed)} (give none for all)")
    chosen = chapters or listed
    unknown = [c for c in chosen if c not in listed]
    if unknown:
        raise ConfigError(f"unknown chapter(s) {', '.join(unknown)}; chapters in _toc.yml: {', '.join(listed)}")
    with build_lock():
        return _build_locked(profile, root, chapters, chosen, listed, force, html, echo)


def _build_locked(profile, root, chapters, chosen, listed, force, html, echo) -> int:
    echo(f"medad book: profile={profile}, data={'from ' + str(root) if root else 'synthetic (no data directory given)'}")
    _remove_stale_temporaries()
    outcomes = []
    for chapter in chosen:
        try:
            outcome = execute_chapter(chapter, profile, root, force=force, echo=echo)
        except KeyboardInterrupt:
            again = " ".join(["python -m medad book --profile", profile, *(["--data-dir", shlex.quote(str(root))] if root else []),
                              *(["--chapters", ",".join(chapters)] if chapters else [])])
            echo(f"interrupted while executing {chapter}: its previous executed notebook and stamp are kept, and the "
                 f"chapters finished before it are saved; to continue, rerun: {again}")
            return INTERRUPTED_EXIT
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


LOCK_NAME = "book.lock"


@contextlib.contextmanager
def build_lock():
    """Hold ``build/book.lock`` for one build of this tree; a second build stops with who holds it.

    Two builds in one tree would execute into the same ``build/executing`` files and
    overwrite each other's chapters. The lock is the kernel's (``flock``): it goes
    away with its process, so a killed build never leaves the tree locked.
    """
    import fcntl

    path = REPO_ROOT / "build" / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise BusyError(f"another book build is running in {REPO_ROOT} ({holder}); wait for it to finish "
                            f"(two builds in one tree would overwrite each other's chapters)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {_now()}")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def _remove_stale_temporaries() -> None:
    """Temporary files an interrupted build left behind (the outputs themselves were never touched)."""
    for tmp in EXECUTED_DIR.glob(f".*{TEMP_MARK}*"):
        tmp.unlink(missing_ok=True)
    for partial in (REPO_ROOT / "build" / "executing").glob("*.ipynb"):
        partial.unlink(missing_ok=True)


def _placeholder_notebook(chapter: str):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {chapter}\n\nThis chapter has not been executed yet: run `make book` (or `python -m medad book --chapters {chapter}`).")]
    return nb


def _placeholder(chapter: str) -> None:
    import nbformat

    _write_atomic(EXECUTED_DIR / f"{chapter}.ipynb", nbformat.writes(_placeholder_notebook(chapter)))
