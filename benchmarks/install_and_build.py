"""Benchmark the two README commands on this machine; print times against the targets.

    .venv/bin/python benchmarks/install_and_build.py [--skip-install] [--skip-tests] [--warm-pip-cache]

1. fresh install: `make install` into a new virtual environment in a
   temporary folder (uv's and pip's caches disabled unless --warm-pip-cache,
   so wheels really come from the registry);
2. `make test` in this checkout (its environment already installed);
3. the data-atlas chapter executed by the book pipeline (quick profile,
   forced re-execution, empty medad cache so the archives are hashed and
   decoded as on a first run), on the real archives when MEDAD_DATA is set.

Targets (2-core CPU machine): install < 180 s, tests < 600 s, atlas < 180 s.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"fresh install": 180.0, "make test": 600.0, "data atlas (make book, one chapter)": 180.0}


def timed(cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc.returncode, (proc.stdout + proc.stderr)[-1500:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-install", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--warm-pip-cache", action="store_true")
    args = parser.parse_args()
    results: dict[str, tuple[float, int]] = {}

    if not args.skip_install:
        with tempfile.TemporaryDirectory() as tmp:
            # exactly what `make book` / `make test` do first, into a throw-away environment
            env = dict(os.environ)
            if not args.warm_pip_cache:
                env.update(UV_NO_CACHE="1", PIP_NO_CACHE_DIR="1")
            seconds, rc, out = timed(["make", "install", f"VENV={tmp}/venv"], env=env)
            results["fresh install"] = (seconds, rc)
            if rc:
                print(out)

    if not args.skip_tests:
        seconds, rc, out = timed(["make", "test"])
        results["make test"] = (seconds, rc)
        print(out.strip().splitlines()[-1] if out.strip() else "")

    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, MEDAD_CACHE=cache)
        cmd = [str(ROOT / ".venv" / "bin" / "python"), "-m", "medad", "book", "--chapters", "data_atlas", "--force", "--no-html"]
        seconds, rc, out = timed(cmd, env=env)
        data = os.environ.get("MEDAD_DATA") or "synthetic"
        results["data atlas (make book, one chapter)"] = (seconds, rc)
        print(f"data atlas on: {data}")
        if rc:
            print(out)

    print(f"\n{'step':40s} {'seconds':>8s} {'target':>8s} {'ratio':>6s}  status")
    for step, (seconds, rc) in results.items():
        target = TARGETS[step]
        print(f"{step:40s} {seconds:8.1f} {target:8.0f} {seconds / target:6.2f}  {'ok' if rc == 0 else 'FAILED'}")
    return 0 if all(rc == 0 for _, rc in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
