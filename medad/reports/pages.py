"""Markdown the book build generates from committed files, included by the hand-written pages.

``book/intro.md`` includes the reproduction summary (every paper's claims and their
verdicts, from the headline runs) and ``book/course.md`` the run-time and dataset
tables. They are written to ``build/generated/`` at every HTML build
(``medad.pipeline.build_html``), so a newly committed run or benchmark shows on the
next build without re-executing any chapter.
"""
from __future__ import annotations

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
