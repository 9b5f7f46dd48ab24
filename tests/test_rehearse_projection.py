"""The rehearsal's projection of each chapter's full profile: training steps counted by hand, step times matched by name."""
import pytest

from medad import profiles
from medad.rehearse import step_time
from medad.train import egc_experiment, mvfa_experiment, prob_unet_experiment, vip_experiment


def _profiles(chapter):
    return profiles.resolve_named(chapter, "full"), profiles.resolve_named(chapter, "rehearse")


def test_a_step_time_is_the_fit_s_own_else_the_mean_of_its_kind_else_the_chapter_s():
    measured = {"gain seed 0": 0.2, "gain-am seed 0": 0.6, "unet seed 0": 1.0, "ca-unet seed 0": 3.0}
    assert step_time(measured, "unet seed 0", 9.0) == 1.0
    assert step_time(measured, "gain ", 9.0) == 0.2  # 'gain ' is not a prefix of 'gain-am seed 0'
    assert step_time(measured, "unet", 9.0) == 1.0 and step_time(measured, "u", 9.0) == 1.0
    assert step_time(measured, "zero-shot", 9.0) == 9.0


def test_full_profile_steps_by_hand():
    egc = egc_experiment.full_profile_steps(*_profiles("egc"), {("endoscopy_ad", "train"): 2000, ("kvasir_seg", "train"): 800})
    # 80 epochs of ceil(2000 / 4) batches, 3 seeds, 2 backbones; segmenters: 80 x ceil(800 / 8), 3 seeds
    assert egc["gain "] == 80 * 500 * 3 * 2 and egc["ca-unet "] == 80 * 100 * 3
    pu = prob_unet_experiment.full_profile_steps(*_profiles("prob_unet"), {})
    assert pu["M-heads"] == 240_000 and pu["oracle check: Prob. U-Net"] == 20_000
    mvfa = mvfa_experiment.full_profile_steps(*_profiles("mvfa"))
    # projector-only: 4 datasets x 3 seeds, each 50 epochs over 2K = 8 support images augmented x11, batch 1
    assert mvfa["projector-only"] == 4 * 3 * 50 * 88
    vip = vip_experiment.full_profile_steps(*_profiles("vip"), {("chest_xray", "train"): 4683, ("brain_mri", "train"): 1714})
    # three CLIP backbones (batches 32, 16, 8; the partial batch dropped), 3 seeds, 50 epochs
    assert vip["chest_xray vip"] == 3 * 50 * (4683 // 32 + 4683 // 16 + 4683 // 8)
    assert "chest_xray zs_names" not in vip  # nothing to train


@pytest.mark.parametrize("chapter", ["mvfa", "vip", "egc", "prob_unet"])
def test_every_chapter_projects_its_full_profile(chapter):
    module = {"mvfa": mvfa_experiment, "vip": vip_experiment, "egc": egc_experiment, "prob_unet": prob_unet_experiment}[chapter]
    sizes = {(d, "train"): 500 for d in ("endoscopy_ad", "kvasir_seg", "chest_xray", "brain_mri", "lidc")}
    steps = module.full_profile_steps(*_profiles(chapter), sizes)
    assert steps and all(isinstance(n, int) and n > 0 for n in steps.values())


def test_exercises_run_jobs_at_a_time_each_on_its_share_of_the_cores(monkeypatch):
    """Two exercises overlap when jobs=2 (each waits for the other to start); results keep the exercises' order."""
    import threading

    from medad import rehearse
    from medad.reports import exercises

    commands = exercises.commands(caps=exercises.REHEARSAL_CAPS)[:4]
    started, seen, said = threading.Barrier(2, timeout=10), [], []

    def fake(command, work, timeout_s=600, threads=None):
        started.wait()  # raises BrokenBarrierError when the two are not running at the same time
        seen.append(threads)
        return {"exercise": command.exercise, "ok": True}

    monkeypatch.setattr(exercises, "commands", lambda **kw: commands)
    monkeypatch.setattr(rehearse, "run_exercise", fake)
    monkeypatch.setattr(rehearse, "notebook_for", lambda chapter, work: None)
    monkeypatch.setattr(rehearse.os, "cpu_count", lambda: 4)
    out = rehearse.run_exercises(jobs=2, report=said.append)
    assert [r["exercise"] for r in out] == [c.exercise for c in commands] and len(out) == 4
    assert sorted(r["exercise"] for r in said) == sorted(c.exercise for c in commands)
    assert seen == [2, 2, 2, 2]
