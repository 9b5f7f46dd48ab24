"""Markdown the book build generates from committed files, included by the hand-written pages.

``book/intro.md`` includes the reproduction summary (every paper's claims and their
verdicts, from the headline runs) and ``book/course.md`` the run-time and dataset
tables. They are written to ``build/generated/`` at every HTML build
(``medad.pipeline.build_html``), so a newly committed run or benchmark shows on the
next build without re-executing any chapter.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from medad.reports import claims, course


def write_generated(folder: Path, chapters: list[str] | None = None) -> list[Path]:
    """Write the generated includes into ``folder``; returns the files written."""
    from medad.pipeline import chapters_from_toc

    chapters = chapters if chapters is not None else chapters_from_toc()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pages = {
        "claims.md": claims.summary_markdown(),
        "course-runtime.md": course.runtime_markdown(chapters),
        "course-data.md": course.datasets_markdown(chapters),
    }
    written = []
    for name, text in pages.items():
        path = folder / name
        if not path.is_file() or path.read_text() != text:  # an unchanged include keeps Sphinx's cache valid
            path.write_text(text)
        written.append(path)
    return written


def chapter_inputs_digest(chapter: str, results_root: Path | None = None, exercise_root: Path | None = None) -> str:
    """A digest of the committed files a chapter shows but does not import: ``results/<chapter>/`` (runs,
    reported numbers, claims) and ``book/exercises/<chapter>.yml``. The book pipeline re-executes a
    chapter when it changes (part of the chapter's stamp)."""
    from medad.paths import RESULTS_DIR
    from medad.reports.exercises import exercise_file

    base = (results_root or RESULTS_DIR) / chapter
    files = {f"results/{p.relative_to(base).as_posix()}": p
             for p in (sorted(base.rglob("*")) if base.is_dir() else []) if p.is_file()}
    exercises = exercise_file(chapter, exercise_root)
    if exercises.is_file():
        files["exercises"] = exercises
    digest = hashlib.sha256()
    for name, path in files.items():
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
