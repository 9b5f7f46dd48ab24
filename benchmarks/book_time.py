"""Time `make book`: every chapter re-executed (empty executed cache), then the HTML; print against the budgets.

    MEDAD_DATA=../shared/data .venv/bin/python benchmarks/book_time.py [--chapters a,b] [--cold-cache] [--no-write]
    MEDAD_DATA=../shared/data .venv/bin/python benchmarks/book_time.py --exercises [all | id,id]

The times are also written to ``results/benchmarks/book_time.json`` (per profile and
chapter: wall and CPU seconds, the archives the chapter read; the machine, the
commit, the data), which the course page renders; timing some chapters updates
only theirs. ``--no-write`` leaves the file alone.

Runs ``python -m medad book --profile quick --data-dir $MEDAD_DATA --force
--no-html --chapters <one>`` for each chapter in turn (``--force``: nothing is
taken from the executed cache), then the HTML build, and prints each step's
wall time and CPU time (the processor time of the step and its kernel: on a
shared machine the wall time also counts waiting for a core). ``--cold-cache`` also empties medad's own
cache of decoded archives and checksums, as on a first run. Budgets on the
2-core CPU machine: 180 s per chapter (quick profile), 900 s for the whole book.
Exit status 1 when a chapter fails or a budget is exceeded.

``--exercises`` instead runs the chapters' exercises (book/exercises/) exactly as
their pages print them, with papermill in a temporary folder, and records each
one's times under ``exercises`` in the same file (budget: 5 CPU minutes each).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTER_BUDGET_S = 180.0
EXERCISE_BUDGET_S = 300.0  # CPU seconds: "a few minutes on a laptop"
TOTAL_BUDGET_S = 900.0
LINE = re.compile(r"^\s+(\w+): (executed|cached|failed) \((\d+) s\)(.*)$")
RESULT = ROOT / "results" / "benchmarks" / "book_time.json"


def machine_description() -> str:
    """``2 CPU cores (Intel Xeon ...), shared`` from /proc/cpuinfo where it exists."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({model}), load average {os.getloadavg()[0]:.1f} at the end of the run"


def write_result(profile: str, times: dict, html: dict | None, data: str, exercises: dict | None = None,
                 commit: str = "") -> Path:
    """Merge this run's times into RESULT (the chapters or exercises timed replace their old entries).

    ``commit``: the commit the timed code was at when the run started (what was measured).
    """
    sys.path.insert(0, str(ROOT))
    from medad.provenance import git_commit, now_utc

    result = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    stamp = {"measured": now_utc(), "commit": commit or git_commit(), "machine": {"description": machine_description()},
             "data": data, "script": "benchmarks/book_time.py"}
    if exercises is not None:
        result.setdefault("exercises", {}).update({k: {**v, **stamp} for k, v in exercises.items()})
    else:
        result.update(stamp)
        entry = result.setdefault("profiles", {}).setdefault(profile, {})
        entry.setdefault("chapters", {}).update(times)
        if html is not None:
            entry["html"] = html
    result.setdefault("profiles", {})
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return RESULT


def archives_read(chapter: str, profile: str) -> list[str]:
    """The manifest keys the chapter's last execution read (runs/<chapter>-<profile>/reads.json)."""
    try:
        return sorted(json.loads((ROOT / "runs" / f"{chapter}-{profile}" / "reads.json").read_text()).get("archives", []))
    except (OSError, ValueError):
        return []


def timed(cmd: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds, CPU seconds of the command and its children (the kernel included), the process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


def time_exercises(which: str, data_dir: str | None, env: dict) -> int:
    """Run each chosen exercise's papermill command as printed (uncapped), in a temporary folder; record the times."""
    import jupytext

    from medad.reports import exercises

    chosen = None if which == "all" else set(which.split(","))
    commands = [c for c in exercises.commands(data_dir=data_dir or "") if chosen is None or c.exercise in chosen]
    printed = {c.exercise: c.text for c in exercises.commands()}  # as the page prints it ("$MEDAD_DATA", no path)
    if chosen and chosen - {c.exercise for c in commands}:
        print(f"unknown exercise(s): {', '.join(sorted(chosen - {c.exercise for c in commands}))}")
        return 2
    from medad.provenance import git_commit

    commit = git_commit()  # at the start: the code that is measured
    times, failed = {}, 0
    print(f"{'exercise':24s} {'status':9s} {'wall s':>7s} {'CPU s':>7s} {'budget':>7s}")
    with tempfile.TemporaryDirectory() as work:
        for command in commands:
            notebook = Path(work) / f"{command.chapter}.ipynb"
            if not notebook.is_file():
                jupytext.write(jupytext.read(ROOT / "notebooks" / f"{command.chapter}.py"), notebook)
            run_env = {**env, "MEDAD_RUN_DIR": str(Path(work) / "runs" / command.exercise),  # not the book's runs/
                       "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
            argv = [str(Path(sys.executable).parent / "papermill"), *command.argv[1:], "--no-progress-bar", "--cwd", work]
            argv = [str(Path(work) / a) if a.endswith(".ipynb") else a for a in argv]
            wall, cpu, proc = timed(argv, run_env)
            status = "ok" if proc.returncode == 0 else "failed"
            flag = ""
            if status != "ok":
                last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
                flag = "  <-- " + last[0][:300]
            elif cpu > EXERCISE_BUDGET_S:
                flag = "  <-- over budget"
            failed += status != "ok" or cpu > EXERCISE_BUDGET_S
            print(f"{command.exercise:24s} {status:9s} {wall:7.0f} {cpu:7.0f} {EXERCISE_BUDGET_S:7.0f}{flag}")
            if status == "ok":
                times[command.exercise] = {"chapter": command.chapter, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                                           "command": printed[command.exercise]}
    if times:
        data = "real (from the data directory)" if data_dir else "synthetic"
        print(f"wrote {write_result('quick', {}, None, data, times, commit).relative_to(ROOT)}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chapters", default="", help="comma-separated chapters (default: every chapter in _toc.yml)")
    parser.add_argument("--data-dir", default=os.environ.get("MEDAD_DATA"), help="archives (default: $MEDAD_DATA)")
    parser.add_argument("--cold-cache", action="store_true", help="start with an empty medad cache (MEDAD_CACHE)")
    parser.add_argument("--profile", default="quick", help="quick (default) or full")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {RESULT.relative_to(ROOT)}")
    parser.add_argument("--exercises", default="", help="time the exercises instead: 'all' or comma-separated ids")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from medad.pipeline import chapters_from_toc

    # the chapters' kernels import this checkout's medad (not another installed copy)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.exercises:
        return time_exercises(args.exercises, args.data_dir, env)
    from medad.provenance import git_commit

    commit = git_commit()  # at the start: the code that is measured
    chapters = [c for c in args.chapters.split(",") if c] or chapters_from_toc()
    if not args.data_dir:
        print("note: no --data-dir and no MEDAD_DATA: timing the book on synthetic data")
    base = [sys.executable, "-m", "medad", "book", "--profile", args.profile]
    base += ["--data-dir", args.data_dir] if args.data_dir else []
    failed = over = 0
    total_wall = total_cpu = 0.0
    times = {}
    print(f"{'step':16s} {'status':9s} {'wall s':>7s} {'CPU s':>7s} {'budget':>7s}")
    with tempfile.TemporaryDirectory() as cache:
        if args.cold_cache:
            env["MEDAD_CACHE"] = cache
        for chapter in chapters:  # one process per chapter, so each one's CPU time is its own
            wall, cpu, proc = timed(base + ["--chapters", chapter, "--force", "--no-html"], env)
            found = [m for m in map(LINE.match, proc.stdout.splitlines()) if m]
            status = found[0].group(2) if found else "failed"
            flag = ""
            if status != "executed" or proc.returncode != 0:
                failed += 1
                flag = "  <-- " + (found[0].group(4).strip() if found else proc.stderr[-300:])
            elif wall > CHAPTER_BUDGET_S:
                over += 1
                flag = "  <-- over budget"
            total_wall, total_cpu = total_wall + wall, total_cpu + cpu
            print(f"{chapter:16s} {status:9s} {wall:7.0f} {cpu:7.0f} {CHAPTER_BUDGET_S:7.0f}{flag}")
            if status == "executed" and proc.returncode == 0:  # a failed chapter's time says nothing
                times[chapter] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                                  "archives": archives_read(chapter, args.profile)}
        html = [sys.executable, "-c", "import sys; from medad.pipeline import build_html; "
                "p = build_html(); print(p.stdout[-1500:], p.stderr[-1500:]); sys.exit(p.returncode)"]
        wall, cpu, proc = timed(html, env)  # the HTML of the executed chapters, nothing re-executed
        total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        print(f"{'HTML build':16s} {'ok' if proc.returncode == 0 else 'failed':9s} {wall:7.0f} {cpu:7.0f}")
        html_time = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)} if proc.returncode == 0 else None
        if proc.returncode != 0:
            failed += 1
            print(proc.stdout[-1500:] + proc.stderr[-1500:])
    flag = "  <-- over budget" if total_wall > TOTAL_BUDGET_S else ""
    print(f"{'total':16s} {'':9s} {total_wall:7.0f} {total_cpu:7.0f} {TOTAL_BUDGET_S:7.0f}{flag}")
    if not args.no_write and times:
        data = "real (from the data directory)" if args.data_dir else "synthetic"
        print(f"wrote {write_result(args.profile, times, html_time, data, commit=commit).relative_to(ROOT)}")
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} cores. CPU s is the processor time the chapter "
          "used; on a shared machine wall time exceeds it by the time spent waiting for a core.")
    return 1 if (failed or over or total_wall > TOTAL_BUDGET_S) else 0


if __name__ == "__main__":
    raise SystemExit(main())
