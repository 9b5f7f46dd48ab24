"""One training loop for every chapter: a chapter supplies a small :class:`Task`, :func:`fit` does the rest.

The shape follows d2l's ``Module``/``Trainer`` and detectron2's "the model returns a dict of
losses": the task says *what* is trained (its optimisers, the batches of an epoch, the loss
terms of a batch, the learning rate of a step, how to validate); the loop owns *how*:

- the device, the arithmetic (``precision`` fp32 | bf16 autocast, channels-last: :mod:`medad.experiment.precision`);
- the steps: ``settings.steps`` optimisation steps, in epochs of ``task.steps_per_epoch()`` steps
  whose batches the task draws at the start of the epoch (``task.epoch_batches``) from the run's
  NumPy generator; a non-finite loss stops the run with :class:`NonFiniteLossError`;
- validation every ``validate_every`` steps (0: at the end of every epoch; None: only after the last
  step) and always after the last step;
  ``task.validate()`` returns named scores, ``select``/``mode`` name the one that picks the weights
  returned (``track`` keeps the best weights of other scores too, e.g. a test-set selection that a
  chapter shows only to measure its leak); ties keep the earlier weights, NaN never wins;
- checkpoints (``last.pt``, through :mod:`medad.experiment.checkpoint`): weights, optimisers, every random
  state, the epoch's remaining batches, histories, best weights, seconds so far, and the settings
  they were made under. A rerun resumes and, on the CPU, repeats the uninterrupted run exactly; a
  rerun under other settings is refused with each difference named. A finished checkpoint is not
  trained again: the rerun only restores the selected weights (an evaluation-only pass);
- a progress bar, per-epoch (or ``log_every``-step) loss history, and an optional time cap
  (``max_minutes``) whose triggering is reported in :attr:`FitResult.stopped_by`, never silent.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from medad.errors import ConfigError, MedadError
from medad.experiment.checkpoint import (
    RandomState, atomic_save, jsonable, load_checkpoint, refuse_resume, remove_stale_temporaries, settings_differences,
)
from medad.experiment.precision import autocast, check_precision, memory_format


class NonFiniteLossError(MedadError, FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class LoopSettings:
    """How :func:`fit` runs a task (what is trained is the task's business)."""

    steps: int
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    validate_every: int | None = 0  # steps; 0 = at the end of every epoch; None = only after the last step
    checkpoint_every: int | None = 0  # steps; 0 = at the end of every epoch; None = only after the last step
    log_every: int = 0  # steps; 0 = once per epoch
    max_minutes: float | None = None  # stop early (and say so) when this wall-clock budget is spent
    grad_clip: float | None = None
    select: str | None = None  # validation score that picks the returned weights; None = the last weights
    mode: str = "max"  # "max" or "min" for ``select``
    track: Sequence[str] = ()  # more scores whose best weights are kept (same mode)

    def __post_init__(self):
        if not isinstance(self.steps, (int, np.integer)) or self.steps < 1:
            raise ConfigError(f"a training run needs at least one step, got steps={self.steps!r}")
        for name in ("validate_every", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if (value is None and name == "log_every") or (value is not None and value < 0):
                raise ConfigError(f"{name} must be >= 0 (0 = once per epoch), got {value}")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0 or None, got {self.max_minutes!r}")
        check_precision(self.precision)
        self.track = tuple(self.track)


# Settings a run may change between an interruption and its resumption: they do not change what is trained.
# (``steps`` may change too, when the learning rates of the steps already done stay the same.)
RESUMABLE = {"device", "checkpoint_every", "log_every", "max_minutes", "steps"}


class Task:
    """What one training run trains. Subclasses set ``model`` and ``name`` and override the methods below."""

    model: torch.nn.Module
    name: str = "train"
    device: str = "cpu"
    channels_last: bool = False

    def bind(self, device: str, channels_last: bool) -> None:
        """Called by :func:`fit` before training: where batches must go and in which memory order."""
        self.device, self.channels_last = device, channels_last

    def optimizers(self) -> list[torch.optim.Optimizer]:
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def epoch_batches(self, epoch: int, rng: np.random.Generator) -> list:
        """The batches of one epoch (``steps_per_epoch()`` of them): index arrays or other small, picklable keys."""
        raise NotImplementedError

    def loss(self, batch, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Loss terms of one batch; ``"loss"`` is the one minimised (the others are logged)."""
        raise NotImplementedError

    def lr(self, step: int, total_steps: int) -> float | None:
        """Learning rate of ``step`` (set on every parameter group), or None to leave the optimisers' own."""
        return None

    def validate(self) -> dict[str, Any] | None:
        """Named validation scores (numbers, or tuples compared in order: later entries break ties)."""
        return None

    def settings(self) -> dict:
        """Everything besides :class:`LoopSettings` that decides what is trained (model options, data
        fingerprint, hyperparameters): stored in checkpoints, a resume under other values is refused."""
        return {}

    def generators(self) -> dict:
        """Named random generators (``torch.Generator`` / NumPy ``Generator``) the task draws from."""
        return {}

    def parameters_to_clip(self):
        return [p for p in self.model.parameters() if p.requires_grad]


@dataclass
class FitResult:
    model: torch.nn.Module
    steps: int
    epochs: float
    seconds: float
    stopped_by: str  # "steps" or "time budget"
    history: list = field(default_factory=list)  # {"step", "epoch", "lr", "seconds", <loss terms>}
    validations: list = field(default_factory=list)  # {"step", "epoch", <scores>}
    best: dict = field(default_factory=dict)  # score name -> {"step", "epoch", "value"} of the weights kept
    best_states: dict = field(default_factory=dict)  # score name -> state dict (CPU) of ``track``ed scores
    settings: dict = field(default_factory=dict)
    name: str = ""
    steps_now: int = 0  # steps trained by this call (0 when a finished checkpoint was only restored)
    step_seconds: float = math.nan  # wall seconds per training step in this call (forward, backward, update)

    @property
    def best_step(self) -> int:
        return next(iter(self.best.values()), {}).get("step", self.steps)

    def summary(self) -> dict:
        return {"steps": self.steps, "epochs": round(self.epochs, 3), "seconds": round(self.seconds, 1),
                "stopped_by": self.stopped_by, "best": {k: {kk: _plain(vv) for kk, vv in v.items()} for k, v in self.best.items()},
                "parameters": sum(p.numel() for p in self.model.parameters())}


_observers: list[list] = []


@contextlib.contextmanager
def observe():
    """Collect the :class:`FitResult` of every :func:`fit` call inside the block (the rehearsal times steps this way)."""
    seen: list[FitResult] = []
    _observers.append(seen)
    try:
        yield seen
    finally:
        _observers.remove(seen)


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [float(v) for v in value]
    return float(value) if isinstance(value, (int, float, np.floating, np.integer)) else value


def _key(value, mode: str) -> tuple:
    """A comparable key where larger is better; NaN (or a NaN first entry) is worst."""
    values = tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else (float(value),)
    sign = 1.0 if mode == "max" else -1.0
    return tuple(-math.inf if not math.isfinite(v) else sign * v for v in values)


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _check_lengths(task: Task, saved: dict, now: LoopSettings, done: int, path: Path) -> None:
    if saved.get("steps") == now.steps:
        return
    if now.steps < done:
        raise refuse_resume(path, [f"steps: {saved.get('steps')} -> {now.steps}, fewer than the {done} already done"])
    changed = [k for k in range(done) if task.lr(k, int(saved["steps"])) != task.lr(k, now.steps)]
    if changed:
        raise refuse_resume(path, [f"steps: {saved.get('steps')} -> {now.steps}, which changes the learning rate of "
                                   f"{len(changed)} of the {done} steps already done"])


def fit(task: Task, settings: LoopSettings, checkpoint: str | Path | None = None, progress: bool = True) -> FitResult:
    """Train ``task`` under ``settings``; resume from ``checkpoint`` (a ``.pt`` path) when it exists.

    Returns the model with the ``select``ed validation weights loaded (the last weights when there is
    no selection) and everything needed to report the run.
    """
    from tqdm.auto import tqdm

    s = settings
    device = s.device
    task.bind(device, s.channels_last)
    model = memory_format(task.model.to(device), s.channels_last)
    optimizers = task.optimizers()
    if not optimizers:
        raise ConfigError(f"{task.name}: the task has nothing to train (no optimiser)")
    spe = int(task.steps_per_epoch())
    if spe < 1:
        raise ConfigError(f"{task.name}: an epoch needs at least one batch; got {spe} (too few training items?)")
    rng = np.random.default_rng(s.seed)
    randomness = RandomState(loop=rng, **task.generators())
    stored = {"loop": jsonable({k: v for k, v in asdict(s).items()}), "task": jsonable(task.settings())}

    state = {"step": 0, "epoch": 0, "plan": None, "pos": 0, "seconds": 0.0, "history": [], "validations": [],
             "best": {}, "best_states": {}}
    path = Path(checkpoint) if checkpoint else None
    if path is not None:
        remove_stale_temporaries(path.parent)
        if path.is_file():
            ck = load_checkpoint(path, device)
            differences = settings_differences(ck["settings"]["loop"], stored["loop"], RESUMABLE)
            differences += settings_differences(ck["settings"]["task"], stored["task"])
            if differences:
                raise refuse_resume(path, differences)
            _check_lengths(task, ck["settings"]["loop"], s, ck["state"]["step"], path)
            model.load_state_dict(ck["model"])
            for opt, saved in zip(optimizers, ck["optimizers"]):
                opt.load_state_dict(saved)
            randomness.restore(ck["random"])
            state = ck["state"]

    def save() -> None:
        if path is not None:
            atomic_save({"settings": stored, "model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                         "random": randomness.capture(), "state": state}, path)

    keys = ([s.select] if s.select else []) + [k for k in s.track if k != s.select]

    def validate() -> None:
        was_training = model.training
        model.eval()
        scores = task.validate() or {}
        model.train(was_training)
        entry = {"step": state["step"], "epoch": round(state["step"] / spe, 4),
                 **{k: _plain(v) for k, v in scores.items()}}
        state["validations"].append(entry)
        for k in keys:
            if k not in scores:
                raise ConfigError(f"{task.name}: validate() returned {sorted(scores)}, without the selection score {k!r}")
            best = state["best"].get(k)
            if best is None or _key(scores[k], s.mode) > _key(best["value"], s.mode):
                state["best"][k] = {"step": state["step"], "epoch": entry["epoch"], "value": _plain(scores[k])}
                state["best_states"][k] = _cpu_state(model)

    t0 = time.perf_counter() - state["seconds"]
    first_step, step_time = state["step"], 0.0
    stopped_by = "steps"
    log_every = s.log_every or spe
    never = s.steps + 1  # None: only after the last step, which always validates and saves
    val_every = never if s.validate_every is None else (s.validate_every or spe)
    ckpt_every = never if s.checkpoint_every is None else (s.checkpoint_every or spe)
    running: dict[str, float] = {}
    bar = tqdm(total=s.steps, initial=state["step"], desc=task.name, disable=not progress, leave=False, mininterval=5)
    model.train()
    while state["step"] < s.steps:
        if s.max_minutes is not None and time.perf_counter() - t0 > 60 * s.max_minutes:
            stopped_by = "time budget"
            break
        if state["plan"] is None or state["pos"] >= len(state["plan"]):
            state["plan"], state["pos"] = list(task.epoch_batches(state["epoch"], rng)), 0
            if len(state["plan"]) != spe:
                raise ConfigError(f"{task.name}: epoch_batches gave {len(state['plan'])} batches, steps_per_epoch {spe}")
        step = state["step"]
        lr = task.lr(step, s.steps)
        if lr is not None:
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr
        batch = state["plan"][state["pos"]]
        tick = time.perf_counter()
        with autocast(device, s.precision):
            terms = task.loss(batch, rng)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            shown = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            raise NonFiniteLossError(f"{task.name}: the loss became non-finite at step {step} ({shown}); lower the "
                                     f"learning rate (now {lr if lr is not None else optimizers[0].param_groups[0]['lr']:g}) "
                                     "or check the inputs")
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_(task.parameters_to_clip(), s.grad_clip)
        for opt in optimizers:
            opt.step()
        step_time += time.perf_counter() - tick
        state["step"] += 1
        state["pos"] += 1
        if state["pos"] >= len(state["plan"]):
            state["epoch"] += 1
        for k, v in terms.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        running["n"] = running.get("n", 0) + 1
        done = state["step"]
        if done % log_every == 0 or done == s.steps:
            n = running.pop("n")
            state["history"].append({"step": done, "epoch": round(done / spe, 4),
                                     "lr": lr if lr is not None else optimizers[0].param_groups[0]["lr"],
                                     "seconds": round(time.perf_counter() - t0, 2),
                                     **{k: round(v / n, 6) for k, v in running.items()}})
            running = {}
            bar.set_postfix(loss=state["history"][-1]["loss"], refresh=False)
        if done % val_every == 0:
            validate()
        state["seconds"] = time.perf_counter() - t0
        if done % ckpt_every == 0 and done < s.steps:
            save()
        bar.update(1)
    bar.close()
    if not state["validations"] or state["validations"][-1]["step"] != state["step"]:
        validate()
    state["seconds"] = time.perf_counter() - t0
    save()
    if s.select and s.select in state["best_states"]:
        model.load_state_dict(state["best_states"][s.select])
    model.eval()
    done_now = state["step"] - first_step
    result = FitResult(model=model, steps=state["step"], epochs=state["step"] / spe, seconds=state["seconds"],
                       stopped_by=stopped_by, history=state["history"], validations=state["validations"],
                       best=state["best"], best_states={k: v for k, v in state["best_states"].items() if k != s.select},
                       settings=stored, name=task.name, steps_now=done_now,
                       step_seconds=step_time / done_now if done_now else math.nan)
    for seen in _observers:
        seen.append(result)
    return result
