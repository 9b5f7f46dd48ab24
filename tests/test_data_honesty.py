"""No silent synthetic data, honest checksums: every entry point says what the data directory holds and why.

Rule (issue 9, item 1): synthetic data only when no data directory was given
at all. Given one, a needed archive that is missing, truncated, unreadable or
fails its checksum is a DataError naming the folder, the archive and what is
wrong; ``data list`` says the same per dataset; an archive without a published
checksum is reported "unverified (no published checksum)" everywhere.
"""
from __future__ import annotations

import hashlib
import json

import pytest

import fixtures as fx
from medad import cli, provenance
from medad.chapter import ChapterRun
from medad.data import archive_status, available_real, checksums, open_dataset, registry
from medad.errors import ChecksumError, DataError

REAL_MANIFEST = registry.manifest
KVASIR_ZIP = fx.ARCHIVES["kvasir_seg"]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A data directory holding the Kvasir-SEG fixture ZIP, which the manifest records (SHA-256, size) as published."""
    root = fx.write(tmp_path / "data", fx.kvasir_files(), KVASIR_ZIP)
    blob = (root / KVASIR_ZIP).read_bytes()
    patched = {key: dict(entry) for key, entry in REAL_MANIFEST().items()}
    patched["kvasir_seg"].update(sha256=hashlib.sha256(blob).hexdigest(), size=len(blob))
    monkeypatch.setattr(registry, "manifest", lambda: patched)
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDAD_RUN_DIR", str(tmp_path / "run"))
    return root


def damage(root, how: str):
    """Make the data directory bad in one way; returns the words the error must contain."""
    path = root / KVASIR_ZIP
    blob = path.read_bytes()
    if how == "nonexistent":
        return root / "no-such-folder", [r"no-such-folder .*does not exist"]
    if how == "missing":
        path.unlink()
        return root, [r"kvasir-seg\.zip", "missing", str(root)]
    if how == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
        return root, [r"kvasir-seg\.zip", "truncated", r"expected [\d,]+"]
    if how == "mismatch":  # same size, one byte changed: still a readable ZIP, but not the published one
        middle = len(blob) // 2
        path.write_bytes(blob[:middle] + bytes([blob[middle] ^ 0xFF]) + blob[middle + 1:])
        return root, [r"kvasir-seg\.zip", "checksum mismatch", "SHA-256 is"]
    if how == "unreadable":
        path.write_bytes(b"\0" * len(blob))
        return root, [r"kvasir-seg\.zip", "unreadable", "not a readable ZIP"]
    raise ValueError(how)


BAD = ["nonexistent", "missing", "truncated", "mismatch", "unreadable"]


def open_via_argument(root):
    return open_dataset("kvasir_seg", "test", root)


def open_via_environment(root, monkeypatch=None):
    return open_dataset("kvasir_seg", "test")


def open_via_chapter_run(root):
    return ChapterRun("data_atlas", profile="quick", data_dir=str(root), device="cpu").open_dataset("kvasir_seg", "test")


@pytest.mark.parametrize("how", BAD)
@pytest.mark.parametrize("entry", [open_via_argument, open_via_environment, open_via_chapter_run])
def test_a_bad_data_directory_is_an_error_naming_what_is_wrong(data_dir, monkeypatch, how, entry):
    root, words = damage(data_dir, how)
    monkeypatch.setenv("MEDAD_DATA", str(root))  # used by open_via_environment; the others pass it explicitly
    with pytest.raises(DataError) as caught:
        entry(root)
    for word in words:
        assert caught.match(word)
    if how == "mismatch":
        assert isinstance(caught.value, ChecksumError)


@pytest.mark.parametrize("how", BAD[1:])
def test_data_list_says_per_dataset_why_it_is_not_real(data_dir, capsys, how):
    root, words = damage(data_dir, how)
    assert cli.main(["data", "list", "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("kvasir_seg "))
    assert f"NOT REAL: kvasir_seg {'checksum mismatch' if how == 'mismatch' else how}" in line
    composed = next(l for l in out.splitlines() if l.startswith("endoscopy_ad "))
    assert "NOT REAL" in composed and "hyperkvasir_normal missing" in composed


def test_data_list_of_a_directory_that_does_not_exist_is_an_error(data_dir, capsys):
    assert cli.main(["data", "list", "--data-dir", str(data_dir / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_no_data_directory_means_synthetic_everywhere(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MEDAD_RUN_DIR", str(tmp_path))
    run = ChapterRun("data_atlas", profile="quick", device="cpu")
    ds = run.open_dataset("kvasir_seg", "test", n=4)
    assert ds.synthetic and run.record["data"][0]["kind"] == "synthetic"
    assert "**synthetic**" in provenance.markdown_table(run.record) and "**real**" not in provenance.markdown_table(run.record)
    assert not any(available_real().values())
    assert cli.main(["data", "list"]) == 0
    assert "every dataset is synthetic" in capsys.readouterr().out


def test_available_real_refuses_a_broken_archive_but_not_a_missing_one(data_dir):
    assert available_real(data_dir)["kvasir_seg"] and not available_real(data_dir)["lidc"]
    damage(data_dir, "truncated")
    with pytest.raises(DataError, match=r"needs kvasir-seg\.zip in .*: truncated"):
        available_real(data_dir)


# ----------------------------------------------------------------------------- checksums: verified, unverified, failed


def test_unverified_archive_is_called_so_in_verify_list_and_provenance(data_dir, monkeypatch, capsys):
    patched = registry.manifest()
    patched["kvasir_seg"].update(sha256=None, size=None)
    status = archive_status("kvasir_seg", data_dir)
    assert status.state == "unverified" and status.usable
    ds = open_dataset("kvasir_seg", "test", data_dir)
    assert ds.checksum.startswith("unverified (no published checksum); sha256 ")
    assert cli.main(["data", "verify", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "UNVERIFIED kvasir_seg" in out and "unverified (no published checksum)" in out and "ok         kvasir_seg" not in out
    cli.main(["data", "list", "--data-dir", str(data_dir)])
    assert "real, unverified (no published checksum)" in capsys.readouterr().out
    table = provenance.markdown_table({"commit": "x", "profile": "quick", "device": "cpu", "seed": 0, "started": "now",
                                       "data": [ds.provenance()]})
    assert "unverified (no published checksum)" in table and "sha256 `" in table


def test_verified_archive_is_ok_and_its_verdict_cached(data_dir, monkeypatch, capsys):
    assert cli.main(["data", "verify", "--data-dir", str(data_dir)]) == 0
    assert "ok         kvasir_seg" in capsys.readouterr().out

    def rehash(path, chunk=0):
        raise AssertionError("hashed again despite the cached verdict")

    monkeypatch.setattr(checksums, "sha256_of", rehash)
    assert archive_status("kvasir_seg", data_dir).state == "verified"


@pytest.mark.parametrize("how", ["truncated", "mismatch", "unreadable"])
def test_verify_fails_and_names_the_failed_archive(data_dir, capsys, how):
    root, _ = damage(data_dir, how)
    assert cli.main(["data", "verify", "--data-dir", str(root)]) == 1
    captured = capsys.readouterr()
    state = "checksum mismatch" if how == "mismatch" else how
    assert f"FAILED     kvasir_seg         {state}" in captured.out
    assert f"1 archive(s) failed: kvasir_seg ({state})" in captured.err


def test_verify_of_a_directory_without_any_archive_fails(data_dir, capsys):
    (data_dir / KVASIR_ZIP).unlink()
    assert cli.main(["data", "verify", "--data-dir", str(data_dir)]) == 1
    assert "no archive of data/manifest.yml found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a notebook run by papermill


def test_papermill_data_dir_with_a_truncated_archive_fails_the_notebook(tmp_path):
    """A chapter's kernel, given ``-p data_dir``, stops on a truncated archive instead of going synthetic."""
    nbformat = pytest.importorskip("nbformat")
    papermill = pytest.importorskip("papermill")
    from medad.paths import REPO_ROOT

    root = tmp_path / "data"
    root.mkdir()
    (root / KVASIR_ZIP).write_bytes(b"PK\x03\x04 an interrupted download")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell("data_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("from medad.data import available_real\nreal = available_real(data_dir)")]
    source = tmp_path / "probe.ipynb"
    source.write_text(json.dumps(nb))
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"), parameters={"data_dir": str(root)},
                                   cwd=str(REPO_ROOT), progress_bar=False, kernel_name="python3")
    assert caught.value.ename == "DataError"
    assert "needs kvasir-seg.zip" in caught.value.evalue and "truncated" in caught.value.evalue
