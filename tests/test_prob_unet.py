"""Probabilistic U-Net, baselines and their training loop (medad.models, medad.train.segmentation)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from medad.errors import ConfigError
from medad.models.ambiguous import MODELS, build_model
from medad.models.prob_unet import DiagonalGaussian, ProbUNet, kl_diagonal
from medad.models.segmentation_common import pixel_ce_sum
from medad.train.segmentation import NonFiniteLossError, TrainSettings, train

SMALL = {"channels": (4, 8), "convs_per_block": 1, "latent_dim": 3, "members": 2, "heads": 3}


def tiny_data(n=12, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    graders = np.zeros((n, 4, size, size), bool)
    for i in range(n):
        for g in range(4):
            r = rng.integers(0, 4)
            if r:
                graders[i, g, 8 - r : 8 + r, 8 - r : 8 + r] = True
    return {"images": images, "grader_masks": graders, "groups": np.array([f"p{i // 3}" for i in range(n)])}


def batch(n=3, size=16, seed=0):
    d = tiny_data(n, size, seed)
    return torch.from_numpy(d["images"]).float().div(255)[:, None], torch.from_numpy(d["grader_masks"])


# ----------------------------------------------------------------------------- shapes and sampling


@pytest.mark.parametrize("name", list(MODELS))
def test_loss_and_sample_shapes(name):
    torch.manual_seed(0)
    model = build_model(name, **SMALL)
    x, y = batch()
    out = model.loss(x, y, generator=torch.Generator().manual_seed(0))
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    s = model.sample(x, 5, generator=torch.Generator().manual_seed(1))
    assert s.shape == (3, 5, 16, 16) and s.dtype == torch.bool


def test_sampling_behaviour_of_each_baseline():
    torch.manual_seed(0)
    x, _ = batch()
    det = build_model("unet", **SMALL).eval()
    s = det.sample(x, 4)
    assert (s == s[:, :1]).all()  # deterministic: identical copies
    ens = build_model("unet_ensemble", **SMALL).eval()
    s = ens.sample(x, 5)
    assert torch.equal(s[:, 0], s[:, 2]) and torch.equal(s[:, 1], s[:, 3])  # member i mod K
    mh = build_model("mheads", **SMALL).eval()
    s = mh.sample(x, 7)
    assert torch.equal(s[:, 0], s[:, 3]) and torch.equal(s[:, 1], s[:, 4])  # head i mod M
    drop = build_model("dropout_unet", channels=(4, 8), convs_per_block=1, dropout=0.5).eval()
    torch.manual_seed(3)
    logits = [drop.net.train()(x) for _ in range(2)]
    assert not torch.equal(logits[0], logits[1])  # dropout really is on when sampling
    drop.eval()
    assert drop.sample(x, 3).shape == (3, 3, 16, 16) and not drop.training


def test_prob_unet_samples_depend_on_z_and_fast_path_matches():
    torch.manual_seed(0)
    model = ProbUNet(**{k: v for k, v in SMALL.items() if k in ("channels", "convs_per_block", "latent_dim")}).eval()
    x, _ = batch()
    with torch.no_grad():
        feats = model.unet(x)
        zs = torch.randn(3, 6, 3) * 3
        fast = model.f_comb.foreground_many(feats, zs, max_elements=100)  # forces chunking over samples
        slow = torch.stack([model.f_comb(feats, zs[:, i]).argmax(1) > 0 for i in range(6)], 1)
    assert torch.equal(fast, slow)
    g = torch.Generator().manual_seed(5)
    a = model.sample(x, 4, generator=g)
    b = model.sample(x, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)  # seeded sampling repeats


def test_bad_parameters_raise_config_errors():
    with pytest.raises(ConfigError, match="prob_unet, unet, dropout_unet, unet_ensemble, mheads"):
        build_model("vae")
    with pytest.raises(ConfigError, match="latent_dim"):
        ProbUNet(latent_dim=0)
    with pytest.raises(ConfigError, match="channels"):
        ProbUNet(channels=())
    model = ProbUNet(channels=(4, 8), convs_per_block=1)
    with pytest.raises(ConfigError, match="batch, 1, H, W"):
        model.sample(torch.zeros(2, 16, 16), 3)
    with pytest.raises(ConfigError, match="divisible"):
        model.sample(torch.zeros(1, 1, 15, 15), 3)
    with pytest.raises(ConfigError, match="grader_masks"):
        model.loss(torch.zeros(2, 1, 16, 16), torch.zeros(2, 16, 16, dtype=torch.bool))
    with pytest.raises(ConfigError):
        TrainSettings(iterations=0)


# ----------------------------------------------------------------------------- KL and numerical safety


def test_kl_analytic_matches_monte_carlo():
    torch.manual_seed(0)
    q = DiagonalGaussian(torch.randn(2, 6), 0.5 * torch.randn(2, 6))
    p = DiagonalGaussian(torch.randn(2, 6), 0.5 * torch.randn(2, 6))
    analytic = kl_diagonal(q, p)
    z = q.mu + torch.randn(200_000, 2, 6) * q.log_sigma.exp()
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    assert torch.allclose(analytic, mc, rtol=0.03, atol=0.03)
    assert torch.allclose(kl_diagonal(q, q), torch.zeros(2), atol=1e-6)


def test_no_nan_with_extreme_inputs_and_parameters():
    torch.manual_seed(0)
    model = ProbUNet(channels=(4, 8), convs_per_block=1, latent_dim=3)
    with torch.no_grad():  # drive mu and log sigma far beyond any sane range
        model.posterior.to_params.bias.fill_(1e6)
        model.prior.to_params.bias.fill_(-1e6)
    x, y = batch()
    for images in (x * 1e4, -x * 1e4, torch.zeros_like(x)):
        out = model.loss(images, y)
        assert torch.isfinite(out["loss"]), out
        model.zero_grad()
        out["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # bounded parameters keep the KL finite even at the bounds
    q = DiagonalGaussian(torch.full((1, 3), 1000.0), torch.full((1, 3), -8.0))
    p = DiagonalGaussian(torch.full((1, 3), -1000.0), torch.full((1, 3), -8.0))
    assert torch.isfinite(kl_diagonal(q, p)).all()
    # huge logits: the cross-entropy stays finite
    logits = torch.tensor([1e30, -1e30]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    assert torch.isfinite(pixel_ce_sum(logits, torch.ones(1, 4, 4, dtype=torch.long))).all()


def test_gradients_reach_every_part():
    torch.manual_seed(0)
    model = ProbUNet(channels=(4, 8), convs_per_block=1, latent_dim=3)
    x, y = batch()
    model.loss(x, y)["loss"].backward()
    for part in (model.unet, model.prior, model.posterior, model.f_comb):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


# ----------------------------------------------------------------------------- training loop


def settings(**kw):
    base = dict(iterations=4, batch_size=4, lr_values=(1e-3,), lr_boundaries=(), seed=3, val_slices=4, val_samples=2, log_every=1)
    base.update(kw)
    return TrainSettings(**base)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("name,precision", [("prob_unet", "fp32"), ("dropout_unet", "fp32"), ("prob_unet", "bf16")])
def test_training_is_deterministic_with_a_seed(name, precision):
    data = tiny_data()
    runs = []
    fast = dict(precision=precision, channels_last=precision == "bf16")
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(train(build_model(name, **SMALL), data, data, settings(**fast), progress=False))
    assert torch.equal(params(runs[0].model), params(runs[1].model))
    assert runs[0].history == [{**h, "seconds": runs[0].history[i]["seconds"]} for i, h in enumerate(runs[1].history)]


@pytest.mark.parametrize("name,precision", [("prob_unet", "fp32"), ("dropout_unet", "fp32"), ("prob_unet", "bf16")])
def test_resume_from_checkpoint_equals_uninterrupted(tmp_path, name, precision):
    data = tiny_data()
    fast = dict(precision=precision, channels_last=precision == "bf16")
    torch.manual_seed(0)
    train(build_model(name, **SMALL), data, data, settings(iterations=6, **fast), checkpoint_dir=tmp_path / "a", progress=False)
    # "interrupted" after 3 steps (checkpoint written), then a fresh process resumes to 6
    torch.manual_seed(0)
    train(build_model(name, **SMALL), data, data, settings(iterations=3, **fast), checkpoint_dir=tmp_path / "b", progress=False)
    torch.manual_seed(123)  # a new process has other random state and other initial weights
    resumed = train(build_model(name, **SMALL), data, data, settings(iterations=6, **fast), checkpoint_dir=tmp_path / "b",
                    progress=False)
    assert resumed.steps == 6
    # the final training state (last.pt), not the best-validation weights the function returns
    a, b = (torch.load(tmp_path / d / "last.pt", weights_only=False) for d in ("a", "b"))
    assert a["state"]["step"] == b["state"]["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [h["loss"] for h in a["state"]["history"]] == [h["loss"] for h in b["state"]["history"]]
    assert "val_ged" in b["state"]["best"]  # the selected weights travel in the checkpoint


def test_checkpoint_of_another_model_is_refused(tmp_path):
    data = tiny_data()
    train(build_model("unet", **SMALL), data, data, settings(iterations=1), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="other settings.*model: unet -> mheads"):
        train(build_model("mheads", **SMALL), data, data, settings(iterations=2), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="other settings.*data: "):
        train(build_model("unet", **SMALL), tiny_data(seed=9), data, settings(iterations=2), checkpoint_dir=tmp_path, progress=False)


def test_non_finite_loss_stops_training():
    class Broken(torch.nn.Module):
        kind = "broken"

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def loss(self, images, grader_masks, generator=None):
            return {"loss": self.w.sum() * float("nan")}

        def sample(self, images, n, generator=None):
            return torch.zeros((images.shape[0], n) + images.shape[-2:], dtype=torch.bool)

    data = tiny_data()
    with pytest.raises(NonFiniteLossError, match="non-finite at step 0"):
        train(Broken(), data, data, settings(), progress=False)


def test_validation_selects_best_weights_and_lr_schedule():
    s = TrainSettings(iterations=300, lr_values=(1e-4, 5e-5, 1e-5, 5e-7), lr_boundaries=(1 / 3, 2 / 3, 1.0))
    assert [s.lr_at(k) for k in (0, 99, 100, 199, 200, 299)] == [1e-4, 1e-4, 5e-5, 5e-5, 1e-5, 1e-5]
    data = tiny_data()
    res = train(build_model("unet", **SMALL), data, data, settings(iterations=4, val_every=2), progress=False)
    assert [v["step"] for v in res.validations] == [2, 4]
    assert res.best["val_ged"]["value"] == min(v["val_ged"] for v in res.validations)
    assert s.lr_at(150, iterations=600) == 1e-4  # the boundaries are fractions of the schedule's length


# ----------------------------------------------------------------------------- experiment driver (chapter + long run)


def tiny_config(**kw):
    from medad import profiles

    given = {"crop": 32, "train_slices": 8, "val_slices": 6, "test_slices": 6, "eval_subset": "slices",
             "channels": [4, 8], "convs_per_block": 1, "latent_dim": 2, "ensemble_members": 2, "heads": 2,
             "models": ["prob_unet", "unet"], "iterations": 2, "batch_size": 4, "lr_values": [1e-3], "lr_boundaries": [],
             "val_every": 0, "val_select_slices": 4, "val_samples": 2, "sample_counts": [1, 4], "max_samples": {},
             "table_samples": 4, "hm_iou_samples": 4, "n_boot": 20, "oracle_train_slices": 8, "oracle_val_slices": 4,
             "oracle_test_slices": 4, "oracle_iterations": 2, **kw}
    return profiles.resolve("prob_unet", "quick", **given)


def test_experiment_pipeline_on_tiny_synthetic_data(tmp_path):
    from medad.data.synthetic import synthetic_lidc
    from medad.train import prob_unet_experiment as exp

    cfg = tiny_config()
    ds = {s: synthetic_lidc(s, seed=0, n=8) for s in ("train", "val", "test")}
    data = exp.prepare_data(ds, cfg)
    assert data["train"]["images"].shape == (8, 32, 32) and len(data["test"]["images"]) == 6
    assert exp.iterations_for({**cfg, "epochs": 2}, 8) == 4
    with pytest.raises(ConfigError, match="epochs and iterations were both given"):
        tiny_config(epochs=2)
    trained = exp.train_models(cfg, data, "cpu", progress=False)
    evals = {m: exp.evaluate_model(r.model, data["test"], [1, 4], "cpu", 0, hm_iou_samples=4, keep_examples=[0])
             for m, r in trained.items()}
    assert evals["prob_unet"].ged.shape == (6, 2) and evals["prob_unet"].examples[0].shape[1:] == (32, 32)
    pick = {1: 0}
    exp.save_examples(tmp_path / "examples.npz", data["test"], pick, evals)
    back = exp.load_examples(tmp_path / "examples.npz")
    assert np.array_equal(back["grader_masks"][0], data["test"]["grader_masks"][0])
    assert np.array_equal(back["samples"]["prob_unet"][0], evals["prob_unet"].examples[0])
    curve, table, by_graders = exp.summarize(evals, data["test"], n_boot=20, table_samples=4)
    assert set(curve["samples"]) == {1, 4} and len(table) == 2 and not by_graders.empty
    # the deterministic U-Net's GED does not move with N; its diversity is 0
    assert np.allclose(evals["unet"].ged[:, 0], evals["unet"].ged[:, 1]) and (evals["unet"].diversity == 0).all()
    oracle = exp.oracle_check(trained["prob_unet"].model, ds["test"], data["test"], [1, 4], "cpu", 0)
    truth = oracle.query("sampler == 'oracle' and reference == 'vs true distribution'")["ged"]
    assert truth.iloc[-1] < truth.iloc[0]  # the oracle nears 0 as N grows
    with pytest.raises(ConfigError, match="'models'.*one of prob_unet, unet"):  # choices from the model registry
        tiny_config(models=["prob_unet", "vae"])


def test_one_entry_point_writes_a_committed_run_and_refuses_to_overwrite_another(tmp_path):
    """run_experiment (what the notebook and the command line call) -> RunRecord.write, on synthetic data."""
    from medad.experiment.record import RunRecord
    from medad.train import prob_unet_experiment as exp

    def record(name, **kw):
        return RunRecord("prob_unet", "long_cpu", name, resolved=tiny_config(**kw), state_root=tmp_path / "state",
                         results_root=tmp_path / "results", code_files=exp.CODE_FILES)

    rec = record("tiny-run")
    out = exp.run_experiment(rec.config, rec.opener, rec.state, "cpu", progress=False)
    folder = exp.write_committed(rec, out)
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["kind"] == "smoke"  # synthetic data is never a headline
    assert prov["run_id"] == rec.run_id and prov["precision"] == "float32"
    used = {d["split"]: d["n_used"] for d in prov["data"] if d["dataset"] == "lidc" and "n_used" in d}
    assert used["train"] == 8 and used["test"] == 6  # the subsets actually used, not the split sizes
    table = pd.read_csv(folder / "table.csv")
    assert {"GED", "HM-IoU"} <= set(table["metric"]) and (table["dataset"] == "synthetic LIDC").all()
    examples = exp.load_examples(folder / "examples.npz")
    assert set(examples["samples"]) == {"prob_unet", "unet"}
    # the same name resumes (finished models are restored, not retrained) ...
    again = record("tiny-run")
    assert again.run_id == rec.run_id
    # ... but not under other settings, and another run never writes into this run's folder
    with pytest.raises(ConfigError, match="other settings.*iterations: 2 -> 3"):
        record("tiny-run", iterations=3)
    import shutil
    shutil.rmtree(tmp_path / "state")
    with pytest.raises(ConfigError, match="already holds another run's results"):
        record("tiny-run")


def test_bf16_training_changes_the_numbers_but_not_the_loss_scale():
    """bf16 autocast is a different computation (results differ from float32) yet the same loss, within ~1%."""
    data = tiny_data()
    out = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        out[precision] = train(build_model("prob_unet", **SMALL), data, data, settings(precision=precision), progress=False)
    a, b = (out[p].history[0]["loss"] for p in ("fp32", "bf16"))
    assert a != b and abs(a - b) / abs(a) < 0.02
    with pytest.raises(ConfigError, match="precision"):
        settings(precision="fp16")


def test_paired_differences_are_slice_by_slice_on_the_same_slices_by_hand():
    from medad.train import prob_unet_experiment as exp

    ged = {"prob_unet": np.array([[0.9, 0.2], [0.8, 0.4], [0.7, 0.3]]),  # columns: 1 and 16 samples
           "unet": np.array([[0.5], [0.6], [0.9]]),  # evaluated at 16 samples only
           "mheads": np.array([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]])}
    counts = {"prob_unet": [1, 16], "unet": [16], "mheads": [1, 16]}
    rows = {r["model"]: r for r in exp.paired_differences(ged, counts, groups=np.array(["a", "a", "b"]), samples=16,
                                                          n_boot=200)}
    assert set(rows) == {"unet", "mheads"} and rows["unet"]["title"] == "Prob. U-Net minus U-Net (deterministic)"
    assert rows["unet"]["mean"] == pytest.approx(((0.2 - 0.5) + (0.4 - 0.6) + (0.3 - 0.9)) / 3)
    assert rows["mheads"]["mean"] == pytest.approx((0.1 + 0.2 + 0.0) / 3)
    assert rows["unet"]["low"] <= rows["unet"]["mean"] <= rows["unet"]["high"] and rows["unet"]["groups"] == 2
    assert exp.paired_differences(ged, counts, ["a", "a", "b"], samples=32) == []  # nobody has 32 samples
