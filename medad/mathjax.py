"""Serve MathJax from the book itself, so equations render with the network off.

The book's HTML would load MathJax from a CDN. Instead, the npm package
``mathjax`` (version pinned below) is installed once into ``build/npm`` and
its browser bundle copied to ``book/_static/mathjax/``; ``_config.yml``
points Sphinx's ``mathjax_path`` there.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from medad.errors import MedadError
from medad.paths import BOOK_DIR, REPO_ROOT

MATHJAX_VERSION = "3.2.2"
ENTRY = "tex-mml-chtml.js"


def static_dir() -> Path:
    return BOOK_DIR / "_static" / "mathjax"


def ensure_local_mathjax(dest: Path | None = None, npm: str | None = None) -> Path:
    """Make sure ``dest/tex-mml-chtml.js`` (and its fonts) exist; install from npm if needed."""
    dest = Path(dest) if dest else static_dir()
    if (dest / ENTRY).is_file():
        return dest / ENTRY
    npm = npm or shutil.which("npm")
    if npm is None:
        raise MedadError(
            "MathJax must be served locally for offline math, and npm (Node.js) is not installed. "
            f"Install Node.js, or copy the 'es5' folder of the npm package mathjax@{MATHJAX_VERSION} to {dest}."
        )
    prefix = REPO_ROOT / "build" / "npm"
    prefix.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix), f"mathjax@{MATHJAX_VERSION}"],
        capture_output=True, text=True,
    )
    source = prefix / "node_modules" / "mathjax" / "es5"
    if proc.returncode != 0 or not (source / ENTRY).is_file():
        raise MedadError(f"npm could not install mathjax@{MATHJAX_VERSION} into {prefix}:\n{proc.stderr[-2000:]}")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest)
    return dest / ENTRY
