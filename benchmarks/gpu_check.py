"""One command for a machine with a GPU: the fast-path benchmark and the rehearsal on CUDA, and the full profiles' projected times.

    MEDAD_DATA=/path/to/archives python benchmarks/gpu_check.py [--out results/benchmarks/gpu_check.json]

1. ``benchmarks/fast_path.py --device cuda`` (with and without ``torch.compile``): the fast path (data
   resident on the GPU, bf16, channels-last) against a float32 loop that assembles batches on the host
   every step, on the three workloads, images/s and ratio;
2. ``python -m medad rehearse --device cuda``: every chapter's full profile with only the counts capped,
   with the measured time per training step;
3. a line per chapter with the projected training time of its full profile, from those per-step times.

The output (and the machine, torch and CUDA versions, commit) is written as JSON to ``--out``, small
enough to commit under ``results/benchmarks/``. Without a GPU it stops with a one-line message.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    import torch

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from medad import provenance
    from medad.rehearse import main as rehearse_main
    from medad.runtime import device_description

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "gpu_check.json"))
    ap.add_argument("--steps", type=int, default=30, help="timed steps per loop of the fast-path benchmark")
    ap.add_argument("--no-exercises", action="store_true", default=True)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing to check (run this where `python -c 'import torch; "
              "print(torch.cuda.is_available())'` prints True)")
        return 2
    import fast_path

    report = {"device": device_description("cuda"), "torch": torch.__version__, "cuda": torch.version.cuda,
              "commit": provenance.git_commit(), "started": provenance.now_utc(), "fast_path": {}}
    for compiled in (False, True):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            fast_path.main(["--device", "cuda", "--steps", str(args.steps), *(["--compile"] if compiled else [])])
        text = buffer.getvalue()
        print(text, end="")
        report["fast_path"]["compiled" if compiled else "eager"] = text.splitlines()
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        status = rehearse_main(["--device", "cuda", "--no-exercises", "--json", tmp.name])
        rehearsal = json.loads(Path(tmp.name).read_text()) if Path(tmp.name).stat().st_size else {}
    report["rehearsal"] = rehearsal
    report["rehearsal_status"] = status
    print("\nprojected training time of each chapter's full profile on this GPU (from the rehearsal's per-step times):")
    for chapter in rehearsal.get("chapters", []):
        hours = chapter.get("full_profile_projected_h")
        print(f"  {chapter['chapter']:10s} {hours if hours is not None else '?'} h "
              f"({chapter['mean_step_s']:.4f} s per step measured)")
    report["finished"] = provenance.now_utc()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
