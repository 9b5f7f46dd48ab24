"""Exercises: every exercise's parameters are valid papermill parameters of its chapter; commands and rendering.

Fast: nothing is executed. The rehearsal (running every command with its counts
capped) uses ``exercises.commands(caps=exercises.REHEARSAL_CAPS)``.
"""
from __future__ import annotations

import jupytext
import pytest
import yaml

from medad import params
from medad.errors import ConfigError
from medad.paths import NOTEBOOKS_DIR
from medad.reports import exercises
from medad.reports.claims import PAPER_CHAPTERS


@pytest.mark.parametrize("chapter", PAPER_CHAPTERS)
def test_every_paper_chapter_has_three_to_five_valid_exercises(chapter):
    items = exercises.check(chapter)  # raises on an unknown or invalid parameter
    assert 3 <= len(items) <= 5
    known = set(exercises.notebook_parameters(chapter))
    for item in items:
        given = item.get("parameters", {})
        assert set(given) <= known
        params.validate(chapter, {k: v for k, v in given.items() if k not in exercises.NOTEBOOK_ONLY})


@pytest.mark.parametrize("chapter", PAPER_CHAPTERS)
def test_capped_commands_stay_valid_and_small(chapter):
    from medad import profiles

    quick = profiles.load(chapter)["quick"]
    for command in exercises.commands(chapter, caps=exercises.REHEARSAL_CAPS):
        assert command.argv[:6] == ["papermill", f"{chapter}.ipynb", f"{command.exercise}.ipynb", "-p", "profile", "quick"]
        params.validate(chapter, command.parameters)
        for name, cap in exercises.REHEARSAL_CAPS.items():
            value = command.parameters.get(name, quick.get(name))
            if isinstance(value, list):
                assert len(value) <= cap, (command.text, name)
            elif isinstance(value, (int, float)) and name in command.parameters:
                assert value <= cap, (command.text, name)


def test_commands_pass_lists_as_yaml_and_keep_the_data_variable():
    by_id = {c.exercise: c for c in exercises.commands("prob_unet")}
    command = by_id["pu-longer-training"]
    assert command.argv[command.argv.index("-y") + 1] == "models: [prob_unet, mheads]"
    assert "-p iterations 300" in command.text
    assert '-p data_dir "$MEDAD_DATA"' in command.text  # expanded by the student's shell
    assert yaml.safe_load(command.argv[command.argv.index("-y") + 1]) == {"models": ["prob_unet", "mheads"]}
    capped = {c.exercise: c for c in exercises.commands("prob_unet", caps={"iterations": 20})}["pu-longer-training"]
    assert capped.parameters["iterations"] == 20 and capped.parameters["models"] == ["prob_unet", "mheads"]
    # a count the exercise does not set is capped from the profile's value; "null = all" becomes the cap
    assert exercises._capped("vip", {}, "full", {"train_images": 64, "epochs": 1}) == {"train_images": 64, "epochs": 1}
    assert exercises._capped("vip", {}, "quick", {"epochs": 5}) == {"epochs": 2}  # never raised above the profile's


def write(tmp_path, chapter, items):
    (tmp_path / f"{chapter}.yml").write_text(yaml.safe_dump({"exercises": items}))
    return tmp_path


GOOD = {"id": "x", "title": "T", "question": "Q", "look_for": "L", "solution": "S", "parameters": {"k": 8}}


@pytest.mark.parametrize("change, message", [
    ({"parameters": {"k": 0}}, "parameter 'k' = 0"),                       # schema: k >= 1
    ({"parameters": {"max_minutes_per_model": 5}}, "not in notebooks/mvfa.py's parameters cell"),
    ({"parameters": {"datasets": "chest_xray"}}, "a list is expected"),
    ({"parameters": {"profile": "huge"}}, "profile must be one of"),
    ({"hint": "h"}, "unknown key(s) hint"),
    ({"solution": ""}, "needs 'solution'"),
])
def test_bad_exercises_name_the_problem(tmp_path, change, message):
    root = write(tmp_path, "mvfa", [{**GOOD, **change}])
    with pytest.raises(ConfigError, match="mvfa.yml") as info:
        exercises.check("mvfa", root)
    assert message in str(info.value)


def test_markdown_folds_each_solution(tmp_path):
    root = write(tmp_path, "mvfa", [GOOD, {**GOOD, "id": "y", "parameters": {"datasets": ["chest_xray"]}}])
    text = exercises.markdown("mvfa", root)
    assert text.count("::::{exercise}") == 2 and text.count("::::{solution} ex-") == 2
    assert text.count(":class: dropdown") == 2
    assert "papermill mvfa.ipynb x.ipynb -p profile quick -p data_dir \"$MEDAD_DATA\" -p k 8" in text
    assert "-y 'datasets: [chest_xray]'" in text


@pytest.mark.parametrize("chapter", PAPER_CHAPTERS)
def test_chapter_ends_with_the_closing_sections_and_exercises(chapter):
    nb = jupytext.read(NOTEBOOKS_DIR / f"{chapter}.py")
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in ("## What was reproduced", "## What this chapter did not run", "## What to take away", "## Exercises"):
        assert heading in markdown, f"{chapter}: {heading}"
    assert markdown.index("## What was reproduced") < markdown.index("## Headline results")
    shows = [c for c in nb.cells if c.cell_type == "code" and f'exercises.show("{chapter}")' in c.source]
    assert len(shows) == 1
    assert shows[0].metadata["mystnb"] == {"markdown_format": "myst"}  # the directives need MyST, not CommonMark
    assert "remove-input" in shows[0].metadata["tags"]
    claims_cells = [c for c in nb.cells if c.cell_type == "code" and f'show_chapter("{chapter}", long_run' in c.source]
    assert len(claims_cells) == 1 and "remove-input" in claims_cells[0].metadata["tags"]


def test_a_timed_exercise_says_how_long_it_took(tmp_path):
    import json

    root = write(tmp_path, "mvfa", [GOOD])
    command = exercises.commands("mvfa", root=root)[0]
    timing = tmp_path / "book_time.json"
    timing.write_text(json.dumps({"profiles": {}, "exercises": {"x": {
        "chapter": "mvfa", "wall_s": 240.0, "cpu_s": 150.0, "command": command.text,
        "machine": {"description": "2 CPU cores (test)"}}}}))
    assert "2.5 CPU minutes (4.0 wall) on 2 CPU cores (test)" in exercises.markdown("mvfa", root, timing)
    # a timing of another command (the exercise changed since) is not shown
    timing.write_text(timing.read_text().replace("-p k 8", "-p k 9"))
    assert "CPU minutes" not in exercises.markdown("mvfa", root, timing)
    assert "CPU minutes" not in exercises.markdown("mvfa", root, False)
