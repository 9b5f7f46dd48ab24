"""The course page's generated tables: each chapter's measured run time, and how to obtain every dataset.

Run times come from ``results/benchmarks/book_time.json`` (written by
``benchmarks/book_time.py``), never typed; datasets, licences and download pages
from ``data/manifest.yml``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from medad.errors import DataError
from medad.paths import RESULTS_DIR

BENCHMARK_FILE = RESULTS_DIR / "benchmarks" / "book_time.json"


def load_benchmark(path: Path | None = None) -> dict | None:
    """The committed book-time benchmark, or None when none was committed."""
    path = path or BENCHMARK_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); rerun benchmarks/book_time.py to rewrite it") from None
    if not isinstance(data.get("profiles"), dict):
        raise DataError(f"{path}: expected a 'profiles' mapping (profile -> chapters -> times); rerun benchmarks/book_time.py")
    return data


def _minutes(seconds) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f}"


def runtime_table(chapters: list[str], path: Path | None = None) -> tuple[pd.DataFrame, dict | None]:
    """One row per chapter: per profile, the measured wall and CPU minutes (``–`` where not measured)."""
    data = load_benchmark(path)
    profiles = ("quick", "full")
    rows = []
    for chapter in [*chapters, "HTML build"]:
        row = {"chapter": chapter}
        for profile in profiles:
            entry = (((data or {}).get("profiles", {}).get(profile) or {}).get("chapters") or {}).get(chapter)
            if chapter == "HTML build":
                entry = ((data or {}).get("profiles", {}).get(profile) or {}).get("html")
            row[f"{profile}: wall min"] = _minutes(entry.get("wall_s")) if entry else "–"
            row[f"{profile}: CPU min"] = _minutes(entry.get("cpu_s")) if entry else "–"
        rows.append(row)
    return pd.DataFrame(rows), data


def runtime_markdown(chapters: list[str], path: Path | None = None) -> str:
    from medad.reports.common import html_table

    table, data = runtime_table(chapters, path)
    if data is None:
        return ("*No timing is committed yet: run `MEDAD_DATA=<data> python benchmarks/book_time.py`, which writes "
                "`results/benchmarks/book_time.json`.*\n")
    machine = data.get("machine", {})
    where = (f"Measured by `benchmarks/book_time.py` on {data.get('measured', 'an unknown date')} at commit "
             f"`{data.get('commit', '?')}`, on {machine.get('description', 'an unrecorded machine')}, with "
             f"{data.get('data', 'unrecorded')} data. CPU minutes count the processor time of the chapter and "
             "its kernel; on a shared machine the wall time also counts waiting for a core, so on a laptop with "
             "the cores to itself expect a time near the CPU minutes. The `full` profile is meant for a GPU and "
             "was not timed on a CPU (–).")
    return where + "\n\n" + html_table(table) + "\n"


def _dataset_users(chapters: list[str], data: dict | None) -> dict[str, list[str]]:
    """Manifest key -> chapters that read it: from the benchmark's record of each chapter's archives, and
    the datasets each chapter's profiles and schema name."""
    from medad import profiles
    from medad.data.registry import get_spec, list_datasets

    users: dict[str, list[str]] = {}

    def add(key, chapter):
        if chapter not in users.setdefault(key, []):
            users[key].append(chapter)

    for profile in ((data or {}).get("profiles") or {}).values():
        for chapter, entry in (profile.get("chapters") or {}).items():
            for key in entry.get("archives", []):
                add(key, chapter)
    known = set(list_datasets())
    for chapter in chapters:
        try:
            loaded = profiles.load(chapter)
        except Exception:  # a chapter without profiles (none today) names no datasets
            continue
        spec = loaded["schema"].get("datasets", {})
        names = set(spec.get("choices", []))
        for profile in profiles.named_profiles(chapter):
            names |= set(loaded[profile].get("datasets") or [])
        for name in sorted(names & known):
            for key in get_spec(name).archive_keys:
                add(key, chapter)
    return users


def datasets_markdown(chapters: list[str], path: Path | None = None) -> str:
    """Every archive of ``data/manifest.yml``: what it is, its licence, where to get it, the file to put in the data folder."""
    from medad.data.registry import manifest
    from medad.reports.common import html_table

    users = _dataset_users(chapters, load_benchmark(path))
    rows = []
    for key, entry in manifest().items():
        archive = entry.get("archive", "")
        rows.append({"dataset": f"{key}: {entry.get('title', '')}", "licence": entry.get("licence", "–"),
                     "how to obtain it": entry.get("download", "–"),
                     "put in your data folder": archive + (f" (or the folder {entry['top']}/)" if entry.get("top") else ""),
                     "used by": ", ".join(users.get(key, [])) or "–"})
    return html_table(pd.DataFrame(rows)) + "\n"
