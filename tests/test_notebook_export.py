"""Executed notebooks that read outside the book: glue rendered into the text, provenance first, no machine paths."""
from __future__ import annotations

import nbformat
import pytest
from IPython.core.formatters import format_display_data
from IPython.display import Markdown

from medad import cli, notebook_export as ne
from medad.chapter import PlainText
from medad.paths import REPO_ROOT

DATA = "/srv/somebody/archives"


def glue_output(name: str, value) -> dict:
    """A glued value as myst_nb.glue(name, value, display=False) stores it in a cell's outputs."""
    bundle, metadata = format_display_data(value)
    metadata["scrapbook"] = {"name": name, "mime_prefix": ne.GLUE_PREFIX}
    return nbformat.v4.new_output("display_data", data={ne.GLUE_PREFIX + k: v for k, v in bundle.items()},
                                  metadata=metadata)


def executed_notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"parameters": {"profile": "quick", "data_dir": DATA},
                                "input_path": f"{REPO_ROOT}/build/notebooks/toy.ipynb"}
    title = nbformat.v4.new_markdown_cell(
        "# Toy chapter\n\n```{glue:md} provenance\n:format: myst\n```\n\n"
        "Seen in {cite}`kohl2018probabilistic,baumgartner2019phiseg`.")
    injected = nbformat.v4.new_code_cell(f'# Parameters\nprofile = "quick"\ndata_dir = "{DATA}"\n',
                                         metadata={"tags": ["injected-parameters"]})
    work = nbformat.v4.new_code_cell("print(...)", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=f"reading {DATA}/lidc.zip from {REPO_ROOT}/data\n"),
        glue_output("auc", 0.876543), glue_output("n_images", 12874), glue_output("kind", PlainText("real")),
        glue_output("share", 0.25)])
    prose = nbformat.v4.new_markdown_cell(
        "AUC {glue:text}`auc:.3f` on {glue:text}`n_images:,` {glue}`kind` images, "
        "{glue:text}`share:.0%` of them; {glue:text}`absent:.2f` was never glued.")
    last = nbformat.v4.new_code_cell("run.finish()", outputs=[glue_output(
        "provenance", Markdown("| Provenance | |\n|---|---|\n| Commit | `abc` |\n\n"
                               ":::{dropdown} All 2 parameters of this run\n| Parameter | Value |\n|---|---|\n"
                               "| `k` | `4` |\n:::"))])
    nb.cells = [title, injected, work, prose, last]
    return nb


def test_glue_is_written_into_the_text():
    nb = ne.render_glue(executed_notebook())
    prose = nb.cells[3].source
    assert prose == "AUC 0.877 on 12,874 real images, 25% of them; [absent: not computed] was never glued."
    text = nbformat.writes(nb)
    assert "{glue" not in text and "{cite}" not in text
    assert "[kohl2018probabilistic, baumgartner2019phiseg]" in nb.cells[0].source


def test_provenance_is_the_first_thing_under_the_title():
    nb = ne.render_glue(executed_notebook())
    first = nb.cells[0].source
    assert first.startswith("# Toy chapter\n\n| Provenance | |")
    # the folded MyST block becomes HTML that Jupyter shows folded
    assert "<details><summary><b>All 2 parameters of this run</b></summary>" in first and "</details>" in first
    assert ":::" not in first


def test_provenance_is_added_when_no_cell_shows_it():
    nb = executed_notebook()
    nb.cells[0].source = "# Toy chapter\n\nNo directive here."
    nb = ne.render_glue(nb)
    assert nb.cells[0].source == "# Toy chapter\n\nNo directive here."
    assert nb.cells[1].cell_type == "markdown" and nb.cells[1].source.startswith("| Provenance | |")


def test_machine_paths_are_replaced():
    nb = executed_notebook()
    paths = ne.machine_paths(nb)
    assert paths[DATA] == ne.DATA_PLACEHOLDER and paths[str(REPO_ROOT)] == ne.REPO_PLACEHOLDER
    nb = ne.scrub_paths(nb, paths)
    assert ne.leaked_paths(nb, [DATA, str(REPO_ROOT)]) == []
    assert 'data_dir = "<DATA_DIR>"' in nb.cells[1].source
    assert nb.cells[2].outputs[0]["text"] == "reading <DATA_DIR>/lidc.zip from <REPO>/data\n"
    assert nb.metadata["papermill"]["parameters"]["data_dir"] == ne.DATA_PLACEHOLDER
    nbformat.validate(nb)  # still a valid notebook


def test_format_matches_myst_nb():
    from myst_nb.core.variables import format_plain_text

    for text, spec in [("0.876543", ".3f"), ("12874", ","), ("0.25", ".0%"), ("'real'", ""), ("real", "s"),
                       ("3", "d"), ("1.5e-05", ".2g")]:
        assert ne.format_plain(text, spec) == format_plain_text(text, spec), (text, spec)


def test_myst_blocks_become_details_and_code_survives():
    md = ("::::{exercise} Shots\n:label: ex-a\n\nRun:\n\n```bash\npapermill a.ipynb b.ipynb\n```\n::::\n\n"
          "::::{solution} ex-a\n:class: dropdown\n\nBecause.\n::::")
    out = ne.myst_to_jupyter(md)
    assert "<details open><summary><b>Exercise: Shots</b></summary>" in out
    assert "<details><summary><b>Solution (click to open)</b></summary>" in out
    assert "```bash\npapermill a.ipynb b.ipynb\n```" in out
    assert out.count("</details>") == 2 and "::::" not in out and ":label:" not in out


def test_render_glue_command(tmp_path):
    source, dest = tmp_path / "out.ipynb", tmp_path / "read.ipynb"
    nbformat.write(executed_notebook(), source)
    assert cli.main(["render-glue", str(source), "-o", str(dest)]) == 0
    rendered = nbformat.read(dest, as_version=4)
    assert "0.877" in rendered.cells[3].source and DATA not in nbformat.writes(rendered)
    assert "{glue" in source.read_text()  # -o leaves the input alone
    assert cli.main(["render-glue", str(source)]) == 0  # in place
    assert "{glue" not in source.read_text()


def test_render_glue_command_names_a_bad_file(tmp_path, capsys):
    (tmp_path / "broken.ipynb").write_text("not a notebook")
    assert cli.main(["render-glue", str(tmp_path / "broken.ipynb")]) == 2
    assert "broken.ipynb is not a readable notebook" in capsys.readouterr().err
    assert cli.main(["render-glue", str(tmp_path / "missing.ipynb")]) == 2
    assert "no such notebook" in capsys.readouterr().err


def test_export_downloads_replaces_the_books_copy(tmp_path):
    executed = tmp_path / "book" / "executed"
    executed.mkdir(parents=True)
    nbformat.write(executed_notebook(), executed / "toy.ipynb")
    download = tmp_path / "html" / "_sources" / "book" / "executed" / "toy.ipynb"
    download.parent.mkdir(parents=True)
    download.write_text((executed / "toy.ipynb").read_text())
    assert ne.export_downloads(executed, tmp_path / "html") == [download]
    text = download.read_text()
    assert "{glue" not in text and DATA not in text and "0.877" in text
    assert "{glue" in (executed / "toy.ipynb").read_text()  # the book's own copy keeps its glue


def test_scrub_notebook_keeps_the_glue(tmp_path):
    path = tmp_path / "toy.ipynb"
    nbformat.write(executed_notebook(), path)
    ne.scrub_notebook(path)
    text = path.read_text()
    assert DATA not in text and str(REPO_ROOT) not in text and "{glue:text}`auc:.3f`" in text


@pytest.mark.parametrize("role, expected", [("{glue:}`auc`", "0.876543"), ("{glue:any}`auc`", "0.876543"),
                                            ("{glue:text}`kind`", "real")])
def test_role_spellings(role, expected):
    nb = executed_notebook()
    nb.cells[3].source = role
    assert ne.render_glue(nb).cells[3].source == expected
