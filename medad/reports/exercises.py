"""Exercises: declared as data in ``book/exercises/<chapter>.yml``, rendered at the end of each chapter.

Each exercise is a papermill run of the chapter with a few parameters changed::

    exercises:
      - id: mvfa-shots
        title: How many shots does MVFA need?
        question: ...           # Markdown
        parameters: {k: 8}      # papermill -p / -y values; checked against the chapter's schema
        look_for: ...           # what to compare in the output
        solution: ...           # a worked answer, hidden until opened

:func:`show` renders a chapter's exercises (sphinx-exercise directives, the
solution folded) in a cell tagged ``remove-input``; :func:`commands` lists each
exercise's papermill command, with counts (epochs, iterations, images, seeds)
capped for a rehearsal run; :func:`check` validates every exercise's parameters
against the notebook's parameters cell and ``medad.params.validate``.
"""
from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from medad.errors import ConfigError
from medad.paths import BOOK_DIR, NOTEBOOKS_DIR

EXERCISE_DIR = BOOK_DIR / "exercises"
_KEYS = {"id", "title", "question", "parameters", "look_for", "solution"}
_REQUIRED = ("id", "title", "question", "look_for", "solution")
# Parameters papermill passes that are not in a profile's schema.
NOTEBOOK_ONLY = {"profile", "data_dir", "long_run"}
# What a rehearsal caps: a count parameter's value becomes at most this (a list keeps at most this many items).
REHEARSAL_CAPS = {"epochs": 1, "cls_epochs": 1, "seg_epochs": 1, "iterations": 5, "train_images": 32,
                  "test_images": 16, "train_slices": 100, "test_slices": 10, "seeds": 1}


@dataclass
class Command:
    chapter: str
    exercise: str
    parameters: dict
    argv: list[str]

    @property
    def text(self) -> str:
        # an environment variable stays expandable ("$MEDAD_DATA"); everything else is quoted as needed
        return " ".join(f'"{a}"' if a.startswith("$") else shlex.quote(a) for a in self.argv)


def exercise_file(chapter: str, root: Path | None = None) -> Path:
    return (root or EXERCISE_DIR) / f"{chapter}.yml"


def chapters_with_exercises(root: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (root or EXERCISE_DIR).glob("*.yml"))


def load(chapter: str, root: Path | None = None) -> list[dict]:
    """A chapter's exercises, their fields checked (not yet their parameters: see :func:`check`)."""
    path = exercise_file(chapter, root)
    if not path.is_file():
        raise ConfigError(f"{path} is missing: the exercises of chapter {chapter!r}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    items = data.get("exercises") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: needs 'exercises', a non-empty list")
    seen = set()
    for i, item in enumerate(items):
        where = f"{path}, exercise {i + 1}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: an exercise is a mapping of {', '.join(sorted(_KEYS))}")
        unknown = sorted(set(item) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
        for key in _REQUIRED:
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise ConfigError(f"{where}: needs '{key}' (text)")
        if item["id"] in seen:
            raise ConfigError(f"{where}: id {item['id']!r} is used twice")
        seen.add(item["id"])
        if not isinstance(item.get("parameters", {}), dict):
            raise ConfigError(f"{where} ({item['id']}): 'parameters' must be a mapping of name -> value")
    return items


def notebook_parameters(chapter: str, notebooks: Path | None = None) -> list[str]:
    """The names the chapter's ``parameters`` cell assigns: what papermill can set."""
    import jupytext

    path = (notebooks or NOTEBOOKS_DIR) / f"{chapter}.py"
    if not path.is_file():
        raise ConfigError(f"chapter {chapter!r}: {path} does not exist")
    for cell in jupytext.read(path).cells:
        if "parameters" in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            return [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                    if isinstance(t, ast.Name)]
    raise ConfigError(f"{path} has no cell tagged 'parameters'")


def check(chapter: str, root: Path | None = None) -> list[dict]:
    """Every exercise's parameters: known to the notebook, and valid under the chapter's schema."""
    from medad import params
    from medad.profiles import PROFILES

    known = set(notebook_parameters(chapter))
    items = load(chapter, root)
    for item in items:
        given = dict(item.get("parameters", {}))
        where = f"{exercise_file(chapter, root)}, exercise {item['id']}"
        unknown = sorted(set(given) - known)
        if unknown:
            raise ConfigError(f"{where}: parameter(s) {', '.join(unknown)} are not in notebooks/{chapter}.py's "
                              f"parameters cell ({', '.join(sorted(known))})")
        if given.get("profile", "quick") not in PROFILES:
            raise ConfigError(f"{where}: profile must be one of {', '.join(PROFILES)}, got {given['profile']!r}")
        try:
            params.validate(chapter, {k: v for k, v in given.items() if k not in NOTEBOOK_ONLY})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return items


def _capped(chapter: str, given: dict, profile: str, caps: dict) -> dict:
    """``given`` with every count parameter the notebook accepts brought down to its cap."""
    from medad import profiles

    schema = profiles.schema(chapter)
    known = set(notebook_parameters(chapter))
    values = profiles.load(chapter)[profile]
    out = dict(given)
    for name, cap in caps.items():
        if name not in known or name not in schema:
            continue
        value = out.get(name, values.get(name))
        if isinstance(value, list):
            out[name] = value[:cap]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = type(value)(min(value, cap))
        elif value is None and "null = all" in str(schema[name].get("help", "")):
            out[name] = cap
    return out


def _argv(chapter: str, exercise: str, given: dict, profile: str, data_dir: str) -> list[str]:
    argv = ["papermill", f"{chapter}.ipynb", f"{exercise}.ipynb", "-p", "profile", profile]
    if data_dir:
        argv += ["-p", "data_dir", data_dir]
    for name, value in given.items():
        if isinstance(value, (list, dict)):  # papermill's -p would pass a string; -y reads YAML
            argv += ["-y", f"{name}: " + yaml.safe_dump(value, default_flow_style=True).strip()]
        else:
            argv += ["-p", name, str(value)]
    return argv


def commands(chapter: str | None = None, caps: dict | None = None, profile: str = "quick",
             data_dir: str = "$MEDAD_DATA", root: Path | None = None) -> list[Command]:
    """Each exercise's papermill command (run from a folder holding ``<chapter>.ipynb``).

    ``caps``: count parameters brought down to at most these values (``REHEARSAL_CAPS`` for a rehearsal);
    ``None`` leaves the exercise as written.
    """
    out = []
    for ch in [chapter] if chapter else chapters_with_exercises(root):
        for item in check(ch, root):
            given = dict(item.get("parameters", {}))
            run_profile = given.pop("profile", profile)
            if caps:
                given = _capped(ch, given, run_profile, caps)
            out.append(Command(ch, item["id"], given, _argv(ch, item["id"], given, run_profile, data_dir)))
    return out


def _measured(entry: dict | None, command: Command) -> str:
    """``Measured: 2.1 CPU minutes (3.5 wall) on <machine>.`` when the benchmark timed this very command."""
    if not entry or entry.get("command") != command.text:
        return ""
    machine = (entry.get("machine") or {}).get("description", "an unrecorded machine")
    return (f"*Measured by `benchmarks/book_time.py --exercises`: {entry['cpu_s'] / 60:.1f} CPU minutes "
            f"({entry['wall_s'] / 60:.1f} wall) on {machine}.*")


def markdown(chapter: str, root: Path | None = None, benchmark: Path | None | bool = None) -> str:
    """The chapter's exercises as MyST: sphinx-exercise directives, each solution folded until opened.

    ``benchmark``: the timings file (default ``results/benchmarks/book_time.json``; ``False``: none); an
    exercise whose exact command was timed there says how long it took.
    """
    from medad.reports.course import load_benchmark

    items = check(chapter, root)
    by_id = {c.exercise: c for c in commands(chapter, root=root)}
    timed = (load_benchmark(benchmark) or {}).get("exercises", {}) if benchmark is not False else {}
    blocks = [f"To run one, make the notebook once with `jupytext --to ipynb -o {chapter}.ipynb "
              f"notebooks/{chapter}.py`, set `MEDAD_DATA` to your data folder, run the command, and render the "
              f"numbers into the output's text with `python -m medad render-glue <exercise>.ipynb`. "
              "Each is sized for a few minutes of a laptop CPU (quick profile)."]
    for item in items:
        label = f"ex-{item['id']}"
        blocks.append("\n".join([
            f"::::{{exercise}} {item['title'].strip()}", f":label: {label}", ":nonumber:", "",
            item["question"].strip(), "", "```bash", by_id[item["id"]].text, "```", "",
            _measured(timed.get(item["id"]), by_id[item["id"]]), "",
            "**What to look for.** " + item["look_for"].strip(), "::::", "",
            f"::::{{solution}} {label}", ":class: dropdown", "", item["solution"].strip(), "::::",
        ]))
    return "\n\n".join(blocks)


def show(chapter: str) -> None:
    """Display the chapter's exercises (the cell needs ``mystnb: {markdown_format: myst}`` for the directives)."""
    from IPython.display import Markdown, display

    display(Markdown(markdown(chapter)))
