"""The harness's contract, once over all four chapters (issue 18).

Each chapter's experiment runs through ``run_experiment(cfg, opener, state, device)`` on synthetic data with a tiny
configuration of its own (borrowed from the chapter's test module). For each:

- a run interrupted right after its first mid-training checkpoint (Ctrl-C there) and then started again with the
  same name and settings gives the same table, number for number, as the same run never interrupted;
- starting that run again under a changed setting is refused, and the message names the setting, its old and its
  new value.
"""
from __future__ import annotations

import pandas as pd
import pytest
import torch

import test_egc_harness as egc_t
import test_mvfa_experiment as mvfa_t
import test_prob_unet as pu_t
import test_vip as vip_t
from medad.errors import ConfigError
from medad.experiment import loop
from medad.experiment.record import RunRecord
from medad.models import mvfa as mvfa_model
from medad.train import egc_experiment, mvfa_experiment, prob_unet_experiment, vip_experiment


def _prob_unet(monkeypatch, tmp_path):
    config = lambda **kw: pu_t.tiny_config(iterations=2, checkpoint_every=1, **kw)  # noqa: E731
    run = lambda rec: prob_unet_experiment.run_experiment(rec.config, rec.opener, rec.state, "cpu", progress=False)  # noqa: E731
    return prob_unet_experiment, config, run, ("batch_size", 4, 2), {}


def _egc(monkeypatch, tmp_path):
    run = lambda rec: egc_experiment.run_experiment(rec.config, rec.opener, rec.state, "cpu", progress=False)  # noqa: E731
    return egc_experiment, egc_t.tiny, run, ("cls_batch_size", 8, 4), {}


def _mvfa(monkeypatch, tmp_path):
    backbone = mvfa_t._TinyText().freeze()
    monkeypatch.setattr(mvfa_model, "text_matrix", mvfa_t._fake_text)
    monkeypatch.setattr(mvfa_experiment, "load_backbone_for", lambda cfg, device="cpu": backbone)
    config = lambda **kw: mvfa_t.tiny_config(datasets=["lgg_brain_ad"], stages=["few_shot"], **kw)  # noqa: E731
    run = lambda rec: mvfa_experiment.run_experiment(rec.config, rec.opener, rec.state, "cpu", progress=False)  # noqa: E731

    def synthetic(rec):
        rec.opener.synthetic_only, rec.opener.n_synthetic = True, 24

    return mvfa_experiment, config, run, ("lr", 0.001, 0.002), {"opener": synthetic, "resumable": ("stages",)}


def _vip(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    config = lambda **kw: vip_t._cfg(settings=["main"], seeds=[1], views=0, **kw)  # noqa: E731
    run = lambda rec: vip_experiment.run_experiment(rec.config, rec.opener, rec.state, "cpu", progress=False,  # noqa: E731
                                                    log=lambda *_: None, backbones={"tiny-test": vip_t.TinyBackbone()})
    return vip_experiment, config, run, ("epochs", 2, 3), {}


SETUPS = {"prob_unet": _prob_unet, "egc": _egc, "mvfa": _mvfa, "vip": _vip}


@pytest.mark.parametrize("chapter", sorted(SETUPS))
def test_an_interrupted_run_resumes_to_the_uninterrupted_table_and_other_settings_are_refused(
        chapter, monkeypatch, tmp_path):
    module, config, run, (setting, old, new), extra = SETUPS[chapter](monkeypatch, tmp_path)

    def record(where: str, **kw):
        rec = RunRecord(chapter, "long_cpu", "tiny-run", resolved=config(**kw), state_root=tmp_path / where / "state",
                        results_root=tmp_path / where / "results", code_files=module.CODE_FILES,
                        **({"resumable": extra["resumable"]} if "resumable" in extra else {}))
        if "opener" in extra:
            extra["opener"](rec)
        return rec

    def table(out) -> pd.DataFrame:
        return pd.DataFrame(out["rows"]).reset_index(drop=True)

    assert record("whole").config[setting] == old  # the tiny configuration has the value the refusal names
    whole = table(run(record("whole")))

    saves = []
    original_save = loop.atomic_save

    def save_then_stop(payload, path):  # Ctrl-C just after the first checkpoint inside a training loop
        original_save(payload, path)
        saves.append(path)
        if len(saves) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "atomic_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(record("cut"))
    assert saves and saves[0].is_file()
    torch.manual_seed(12345)  # a new process: other global random state
    resumed = table(run(record("cut")))
    assert len(saves) > 1  # training went on from the checkpoint ...
    pd.testing.assert_frame_equal(resumed, whole)  # ... to the uninterrupted run's numbers

    with pytest.raises(ConfigError, match=rf"other settings.*{setting}: {old} -> {new}.*--fresh"):
        record("cut", **{setting: new})


def test_each_finished_unit_notes_the_invocation_so_a_killed_one_still_counts(tmp_path):
    import json

    def record():
        return RunRecord("egc", "long_cpu", "tiny-run", resolved=egc_t.tiny(), state_root=tmp_path / "state",
                         results_root=tmp_path / "results", code_files=egc_experiment.CODE_FILES)

    first = record()
    first.state.unit("a", lambda: 1)  # then the process is killed: it never reaches RunRecord.write
    second = record()
    second.state.unit("b", lambda: 2)
    invocations = json.loads((tmp_path / "state" / "egc" / "tiny-run" / "invocations.json").read_text())
    assert [i["started"] for i in invocations] == [first.started, second.started]
    assert all(i["commit"] == first.commit and i["seconds"] >= 0 for i in invocations)
