"""Provenance of a result: which code, data, device, seed and profile produced it."""
from __future__ import annotations

import datetime as _dt
import platform
import re
import subprocess

from medad.paths import REPO_ROOT


def git_commit() -> str:
    """HEAD's hash, with '+uncommitted' when tracked files differ from it; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown (no git commit)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git unavailable)"


def files_digest(paths) -> str:
    """SHA-256 over files of the repository, each as its relative path, a NUL byte and its bytes, in the given order.

    The experiment modules record it as ``code_sha256``: a run may start before its
    code is committed, and this says which code it was.
    """
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        rel = (REPO_ROOT / path).resolve().relative_to(REPO_ROOT).as_posix()
        digest.update(rel.encode() + b"\0" + (REPO_ROOT / rel).read_bytes())
    return digest.hexdigest()


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def environment() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


_HEX64 = re.compile(r"\b[0-9a-f]{64}\b")


def _checksum_cell(sha: str) -> str:
    """A dataset's checksum as the table shows it: ``sha256 `abc…``` when verified (or made in memory), else the
    loader's own words, e.g. "unverified (no published checksum); sha256 `abc…`" (a composed dataset joins parts with +)."""
    parts = sha.split(" + ")
    if all(_HEX64.fullmatch(p) for p in parts):
        return "sha256 " + " + ".join(f"`{p[:12]}…`" for p in parts)
    return _HEX64.sub(lambda m: f"`{m[0][:12]}…`", sha)


def markdown_table(prov: dict) -> str:
    """A two-column MyST table of a provenance record (data sources one per line)."""
    rows = [
        ("Commit", f"`{prov['commit']}`"),
        ("Profile", prov["profile"]),
        ("Device", prov["device"]),
        ("Seed", str(prov["seed"])),
        *([("Training seeds", ", ".join(map(str, prov["parameters"]["seeds"])))]
          if isinstance(prov.get("parameters", {}).get("seeds"), list) else []),  # `seed` is not what trained (issue 22)
        ("Started", prov["started"]),
        ("Time taken", f"{prov['seconds']:.0f} s" if prov.get("seconds") is not None else "running"),
    ]
    by_dataset: dict[tuple, list] = {}
    for item in prov.get("data", []):  # one row per dataset and source, its splits listed
        by_dataset.setdefault((item["dataset"], item["kind"]), []).append(item)
    for (name, kind), items in by_dataset.items():
        shas = sorted({_checksum_cell(i["sha256"]) for i in items})
        sizes = ", ".join(f"{i['split']} {i['n']:,}" for i in items)
        checksum = shas[0] if len(shas) == 1 else "per split: " + "; ".join(shas)
        rows.append((f"Data: {name}", f"**{kind}** ({sizes}), {checksum}"))
    if not prov.get("data"):
        rows.append(("Data", "none loaded"))
    lines = ["| Provenance | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    params = prov.get("parameters", {})
    if params:  # folded: the full list is long, and the key facts are above
        lines += ["", f":::{{dropdown}} All {len(params)} parameters of this run", "| Parameter | Value |", "|---|---|"]
        lines += [f"| `{key}` | `{value!r}` |" for key, value in params.items()]
        lines += [":::"]
    return "\n".join(lines)
