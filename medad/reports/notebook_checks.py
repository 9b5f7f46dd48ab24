"""What an executed chapter must not show: stderr, warnings, progress-bar residue.

Used by the tests (every notebook in ``book/executed/`` and the end-to-end
build) so that the rendered book stays free of them.
"""
from __future__ import annotations

import re

# Warning categories Python prints, tqdm's bar tail ("12/80 [00:03<00:20, 3.1it/s]") and IProgress complaints.
RESIDUE = re.compile(
    r"\b\w*Warning\b|\bwarnings\.warn\b|\[\d\d:\d\d<\d\d:\d\d|\d+(\.\d+)?\s?(it|s)/(s|it)\]|IProgress not found",
)


def _texts(output) -> list[str]:
    if output.get("output_type") == "stream":
        return [output.get("text", "")]
    data = output.get("data", {})
    return [data[k] if isinstance(data[k], str) else "".join(data[k]) for k in ("text/plain", "text/html", "text/markdown")
            if k in data]


def residue(notebook) -> list[str]:
    """One line per offending output: ``cell 7: stderr: ...`` or ``cell 9: warning text: ...``."""
    found = []
    for number, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                found.append(f"cell {number}: stderr: {output.get('text', '')[:200]!r}")
                continue
            for text in _texts(output):
                match = RESIDUE.search(text)
                if match:
                    found.append(f"cell {number}: warning text {match.group(0)!r} in {text[:200]!r}")
    return found
