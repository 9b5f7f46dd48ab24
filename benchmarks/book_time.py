"""Time `make book`: every chapter re-executed (empty executed cache), then the HTML; print against the budgets.

    MEDAD_DATA=../shared/data .venv/bin/python benchmarks/book_time.py [--chapters a,b] [--cold-cache]

Runs ``python -m medad book --profile quick --data-dir $MEDAD_DATA --force``
(``--force``: no chapter is taken from the executed cache) and reads each
chapter's time from its output. ``--cold-cache`` also empties medad's own
cache of decoded archives and checksums, as on a first run. Budgets on the
2-core CPU machine: 180 s per chapter (quick profile), 900 s for the whole book.
Exit status 1 when a chapter fails or a budget is exceeded.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTER_BUDGET_S = 180.0
TOTAL_BUDGET_S = 900.0
LINE = re.compile(r"^\s+(\w+): (executed|cached|failed) \((\d+) s\)(.*)$")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chapters", default="", help="comma-separated chapters (default: every chapter in _toc.yml)")
    parser.add_argument("--data-dir", default=os.environ.get("MEDAD_DATA"), help="archives (default: $MEDAD_DATA)")
    parser.add_argument("--cold-cache", action="store_true", help="start with an empty medad cache (MEDAD_CACHE)")
    args = parser.parse_args()
    if not args.data_dir:
        print("note: no --data-dir and no MEDAD_DATA: timing the book on synthetic data")
    cmd = [sys.executable, "-m", "medad", "book", "--profile", "quick", "--force"]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--chapters", args.chapters] if args.chapters else []
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        if args.cold_cache:
            env["MEDAD_CACHE"] = cache
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        total = time.perf_counter() - t0
    times = {m.group(1): (m.group(2), float(m.group(3)), m.group(4).strip())
             for m in map(LINE.match, proc.stdout.splitlines()) if m}
    over = 0
    print(f"{'chapter':14s} {'status':9s} {'seconds':>8s} {'budget':>7s}")
    for chapter, (status, seconds, error) in times.items():
        flag = "" if status == "executed" and seconds <= CHAPTER_BUDGET_S else "  <-- " + (error or "over budget")
        over += bool(flag)
        print(f"{chapter:14s} {status:9s} {seconds:8.0f} {CHAPTER_BUDGET_S:7.0f}{flag}")
    html_s = total - sum(t[1] for t in times.values())
    print(f"{'HTML + setup':14s} {'':9s} {html_s:8.0f}")
    print(f"{'total':14s} {'':9s} {total:8.0f} {TOTAL_BUDGET_S:7.0f}{'  <-- over budget' if total > TOTAL_BUDGET_S else ''}")
    if proc.returncode != 0:
        print(proc.stdout[-2000:] + proc.stderr[-2000:])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"(load average at the end: {load:.1f} on {os.cpu_count()} cores; a shared machine inflates every time)")
    return 1 if (proc.returncode != 0 or over or total > TOTAL_BUDGET_S) else 0


if __name__ == "__main__":
    raise SystemExit(main())
