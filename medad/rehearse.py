"""A rehearsal of every chapter's full profile on this machine (``make rehearse``, ``python -m medad rehearse``).

In the spirit of MONAI's tutorial runner that forces one epoch: each paper chapter's experiment
(``medad.train.<chapter>_experiment.run_experiment``) runs under its ``rehearse`` profile — the
``full`` profile's models at their full size and resolution, on the real datasets, with only the
counts capped (an epoch or a few iterations, a few test images per class, one seed; random CLIP
weights where the full profile names CLIP). It meets every error a full run would meet before its
first hour, on a CPU and in minutes. Checkpoints go to a temporary folder and nothing is written
under ``results/`` (a rehearsal's run kind is ``rehearsal``).

Then each exercise's papermill command runs with its counts capped
(:data:`medad.reports.exercises.REHEARSAL_CAPS`), so every command a student is given is known to run.

For each chapter it prints the wall time, the training steps it took and the measured time per
training step (forward, backward and update; :func:`medad.experiment.loop.observe`), and the full
profile's projected training time from those per-step times (each experiment module's
``full_profile_steps``). ``--json FILE`` writes the same numbers for ``benchmarks/gpu_check.py``.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medad.errors import ConfigError
from medad.paths import REPO_ROOT

CHAPTERS = ("mvfa", "vip", "egc", "prob_unet")


def experiment_module(chapter: str):
    return importlib.import_module(f"medad.train.{chapter}_experiment")


def rehearse_chapter(chapter: str, data_dir=None, device: str | None = None, threads: int | None = None) -> dict:
    """Run one chapter's experiment under its ``rehearse`` profile; return times and per-step measurements."""
    from medad.experiment.loop import observe
    from medad.experiment.record import RunRecord, RunState

    overrides = {k: v for k, v in (("device", device), ("threads", threads)) if v is not None}
    record = RunRecord(chapter, "rehearse", None, data_dir=data_dir, overrides=overrides)
    if record.kind != "rehearsal":
        raise ConfigError(f"{chapter}: the rehearse profile must be run as a rehearsal, got kind {record.kind!r}")
    module = experiment_module(chapter)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"medad-rehearse-{chapter}-") as folder, observe() as fits:
        module.run_experiment(record.config, record.opener, RunState(folder), record.device, progress=False)
    wall = time.perf_counter() - t0
    trained = [f for f in fits if f.steps_now]
    steps = sum(f.steps_now for f in trained)
    per_step = {f.name: f.step_seconds for f in trained}
    out = {"chapter": chapter, "device": record.device, "wall_s": round(wall, 1), "fits": len(trained), "steps": steps,
           "step_s": {k: round(v, 4) for k, v in per_step.items()},
           "mean_step_s": round(sum(f.step_seconds * f.steps_now for f in trained) / steps, 4) if steps else math.nan}
    projector = getattr(module, "full_profile_steps", None)
    if projector is not None and trained:
        from medad import profiles

        sizes = {(d["dataset"], d["split"]): int(d["n"]) for d in record.opener.provenance() if d.get("n")}
        # {fit name or name prefix: training steps in the full profile}
        plan = projector(profiles.resolve_named(chapter, "full"), record.config, sizes)
        seconds = sum(n * step_time(per_step, key, out["mean_step_s"]) for key, n in plan.items())
        out["full_profile_steps"] = int(sum(plan.values()))
        out["full_profile_projected_h"] = round(seconds / 3600, 2)
    return out


def step_time(per_step: dict[str, float], key: str, fallback: float) -> float:
    """The measured seconds per step of the fit named ``key``, else the mean over the fits whose names start with
    it, else ``fallback`` (the chapter's mean): the rehearsal trains one of each kind of fit, the full profile many."""
    if key in per_step:
        return per_step[key]
    alike = [v for name, v in per_step.items() if name.startswith(key)]
    return sum(alike) / len(alike) if alike else fallback


def run_exercises(data_dir=None, chapters=None, timeout_s: int = 600, jobs: int = 2, report=None) -> list[dict]:
    """Every exercise's papermill command with its counts capped, run in a scratch folder, ``jobs`` at a time (each
    a separate kernel; most of an exercise's time is its kernel's start and imports); one result per exercise, in
    the exercises' order. ``report(result)`` is called as each one ends."""
    from concurrent.futures import ThreadPoolExecutor

    from medad.reports import exercises

    todo = [c for c in exercises.commands(caps=exercises.REHEARSAL_CAPS, data_dir=str(data_dir or ""))
            if not chapters or c.chapter in chapters]
    with tempfile.TemporaryDirectory(prefix="medad-rehearse-exercises-") as work:
        for chapter in {c.chapter for c in todo}:  # converted once, before the kernels start
            notebook_for(chapter, Path(work))
        # each kernel gets an equal share of the cores (torch would otherwise start one thread per core in each)
        threads = max(1, (os.cpu_count() or 1) // max(1, jobs))

        def one(command):
            result = run_exercise(command, Path(work), timeout_s, threads=threads if jobs > 1 else None)
            if report:
                report(result)
            return result

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            return list(pool.map(one, todo))


def notebook_for(chapter: str, work: Path) -> Path:
    """The chapter's notebook converted from ``notebooks/<chapter>.py`` into ``work`` (once)."""
    import jupytext

    notebook = work / f"{chapter}.ipynb"
    if not notebook.is_file():
        jupytext.write(jupytext.read(REPO_ROOT / "notebooks" / f"{chapter}.py"), notebook)
    return notebook


def run_exercise(command, work: Path, timeout_s: int = 600, threads: int | None = None) -> dict:
    """Run one exercise's papermill command (its notebook converted into ``work``); wall time and outcome."""
    notebook_for(command.chapter, work)
    env = {**os.environ, "MEDAD_RUN_DIR": str(work / "runs" / command.exercise),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    argv = [str(Path(sys.executable).parent / "papermill"), *command.argv[1:], "--no-progress-bar", "--cwd", str(work)]
    argv = [str(work / a) if a.endswith(".ipynb") else a for a in argv]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
        code, tail = proc.returncode, (proc.stderr.strip().splitlines() or ["no output"])[-1]
    except subprocess.TimeoutExpired:
        code, tail = 124, f"did not finish in {timeout_s} s"
    return {"chapter": command.chapter, "exercise": command.exercise, "ok": code == 0,
            "wall_s": round(time.perf_counter() - t0, 1), "error": "" if code == 0 else tail[:300]}


def main(argv=None) -> int:
    import argparse

    from medad.data.registry import resolve_data_dir

    ap = argparse.ArgumentParser(prog="python -m medad rehearse", description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="folder with the archives (default: $MEDAD_DATA)")
    ap.add_argument("--chapters", default=",".join(CHAPTERS), help="comma-separated chapters")
    ap.add_argument("--device", default=None, help="cpu, cuda or auto (default: the rehearse profile's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-exercises", action="store_true", help="skip the exercises' commands")
    ap.add_argument("--jobs", type=int, default=2, help="exercises run at a time (default 2)")
    ap.add_argument("--json", default=None, help="also write the measurements to this file")
    args = ap.parse_args(argv)
    chapters = [c.strip() for c in args.chapters.split(",") if c.strip()]
    unknown = sorted(set(chapters) - set(CHAPTERS))
    if unknown or not chapters:
        raise ConfigError(f"--chapters {args.chapters!r}: choose among {', '.join(CHAPTERS)}")
    data_dir = resolve_data_dir(args.data_dir)
    print(f"rehearsal of the full profiles on {'real data in ' + str(data_dir) if data_dir else 'SYNTHETIC data'}; "
          "nothing is written under results/")
    report = {"chapters": [], "exercises": []}
    failed = []
    for chapter in chapters:
        try:
            r = rehearse_chapter(chapter, data_dir, args.device, args.threads)
        except Exception as exc:  # a rehearsal reports every chapter's failure, then fails
            failed.append(chapter)
            print(f"{chapter:10s} FAILED: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}", flush=True)
            continue
        report["chapters"].append(r)
        projected = (f", full profile: {r['full_profile_steps']:,} training steps ≈ {r['full_profile_projected_h']} h of "
                     "training at these step times" if "full_profile_projected_h" in r else "")
        print(f"{chapter:10s} ok  {r['wall_s']:7.1f} s wall, {r['steps']} training steps, "
              f"{r['mean_step_s']:.3f} s per step on {r['device']}{projected}", flush=True)
    if not args.no_exercises:
        def said(e):
            print(f"exercise {e['exercise']:28s} {'ok' if e['ok'] else 'FAILED'} {e['wall_s']:6.1f} s"
                  + (f"  {e['error']}" if e["error"] else ""), flush=True)

        t0 = time.perf_counter()
        report["exercises"] = run_exercises(data_dir, chapters, jobs=args.jobs, report=said)
        failed += [e["exercise"] for e in report["exercises"] if not e["ok"]]
        print(f"exercises: {len(report['exercises'])} in {time.perf_counter() - t0:.0f} s wall, {args.jobs} at a time",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if failed:
        print(f"rehearsal FAILED: {', '.join(failed)}")
        return 1
    return 0
