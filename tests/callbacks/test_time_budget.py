"""The time-budget callback fits the cosine decay to ``max_time``: the learning rate reaches its floor near the
end of the budget, the estimate survives a checkpoint, and runs without ``max_time`` are untouched."""

from datetime import timedelta

import lightning as L
import pytest
import torch
from torch import nn

from callbacks.time_budget import TimeBudgetDecay
from genrecon.stages.base import Stage


class _Regression(Stage):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.net = nn.Linear(4, 1)
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
        return torch.utils.data.DataLoader(data, batch_size=8)


def _trainer(callbacks, **kw):
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=callbacks, **kw)


def _fake_trainer(time_remaining):
    """A stand-in trainer at step 1 with a ``Timer`` whose ``time_remaining`` calls ``time_remaining()`` and a
    one-rank broadcast (the callback needs nothing else)."""
    from types import SimpleNamespace

    import callbacks.time_budget as tb

    class _Timer(tb.Timer):
        def time_remaining(self, stage):
            return time_remaining()

    strategy = SimpleNamespace(broadcast=lambda obj, src=0: obj)
    return SimpleNamespace(callbacks=[_Timer(duration="00:00:10:00")], strategy=strategy, global_step=1)


def test_decay_is_fitted_to_the_time_budget():
    torch.manual_seed(0)
    module = _Regression(lr=1e-2, warmup_steps=5, min_lr_ratio=0.1, grad_clip_max=None)
    budget = TimeBudgetDecay(measure_steps=20, margin=0.9)
    _trainer([budget], max_time=timedelta(seconds=2), max_steps=10**7).fit(module)
    assert budget.decay_steps is not None and module.decay_steps == budget.decay_steps
    assert budget.decay_steps > 21  # set after the measured steps, never before
    # the learning rates the run used follow the fitted cosine (timing on a loaded machine decides where the
    # run stops, so this asserts the schedule, not the stopping point)
    from genrecon.stages.base import lr_factor

    late = range(budget.decay_steps // 2, len(module.lrs))
    assert all(abs(module.lrs[s] - 1e-2 * lr_factor(s, 5, budget.decay_steps, 0.1)) < 1e-12 for s in late)


def test_estimate_is_the_measured_rate_times_the_time_left(monkeypatch):
    """Fake clock: 10 steps in 2 s, 100 s left, margin 0.5 -> decay 250 steps after step 11."""
    import callbacks.time_budget as tb

    trainer = _fake_trainer(lambda: 100.0)
    clock = iter([0.0, 2.0])
    monkeypatch.setattr(tb.time, "monotonic", lambda: next(clock))
    module = _Regression(lr=1e-2, grad_clip_max=None)
    budget = TimeBudgetDecay(measure_steps=10, margin=0.5)
    budget.on_train_batch_end(trainer, module, None, None, 0)  # step 1 starts the clock
    trainer.global_step = 5
    budget.on_train_batch_end(trainer, module, None, None, 0)  # too early: nothing
    assert budget.decay_steps is None
    trainer.global_step = 11
    budget.on_train_batch_end(trainer, module, None, None, 0)
    assert budget.decay_steps == module.decay_steps == 11 + int(10 / 2 * 100 * 0.5)


def test_without_max_time_the_schedule_stays_constant():
    module = _Regression(lr=1e-2, warmup_steps=2, grad_clip_max=None)
    budget = TimeBudgetDecay(measure_steps=3)
    _trainer([budget], max_steps=40).fit(module)
    assert budget.decay_steps is None and module.decay_steps is None
    assert module.lrs[-1] == 1e-2


def test_a_restored_estimate_is_applied_on_resume():
    module = _Regression(lr=1e-2, grad_clip_max=None)
    budget = TimeBudgetDecay()
    budget.load_state_dict({"decay_steps": 7})
    budget.on_train_start(None, module)
    assert module.decay_steps == 7


def test_refit_on_resume_measures_again_and_extends_the_decay():
    module = _Regression(lr=1e-2, warmup_steps=5, min_lr_ratio=0.1, grad_clip_max=None)
    budget = TimeBudgetDecay(measure_steps=10, refit_on_resume=True)
    budget.load_state_dict({"decay_steps": 30})
    budget.on_train_start(None, module)
    assert module.decay_steps == 30 and budget.decay_steps is None  # old floor until the new fit
    # A resumed run past its old decay end: the refit decays over the extended budget (the timer's 2 s).
    _trainer([budget], max_time=timedelta(seconds=2), max_steps=10**7).fit(module)
    assert budget.decay_steps is not None and budget.decay_steps > 30 and module.decay_steps == budget.decay_steps


def test_the_final_step_is_checkpointed_when_the_budget_ends(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    module = _Regression(lr=1e-2, grad_clip_max=None)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=10**6, save_last=True)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TimeBudgetDecay(measure_steps=5), ckpt], max_time=timedelta(seconds=1),
                        max_steps=10**7)
    trainer.fit(module)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == trainer.global_step > 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # not again as last-v1.ckpt


def test_a_resumed_budget_keeps_one_last_checkpoint_with_the_final_step(tmp_path):
    """A run resumed to extend its budget overwrites last.ckpt (the file the pipeline resumes from) instead of
    leaving the final state in a versioned last-v1.ckpt beside a stale one."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(seconds: float, ckpt_path: str | None) -> L.Trainer:
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[TimeBudgetDecay(measure_steps=5, refit_on_resume=True),
                                       ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=10**6, save_last=True)],
                            max_time=timedelta(seconds=seconds), max_steps=10**7)
        trainer.fit(_Regression(lr=1e-2, grad_clip_max=None), ckpt_path=ckpt_path)
        return trainer

    first = fit(1, None).global_step
    second = fit(2, str(tmp_path / "last.ckpt")).global_step
    assert second > first > 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == second


def test_a_changed_rate_moves_the_end_and_keeps_the_rate_continuous(monkeypatch):
    """Fake clock: 10 steps in 10 s (1 step/s) fit the end at step 11 + 90 and a refit every 20 steps. Then 29 steps
    in 5 s: the refit at step 40 moves the end to 40 + 5.8 × 50 × 0.9, anchored at step 40, with no jump in the
    rate."""
    import callbacks.time_budget as tb
    from genrecon.stages.base import lr_factor

    trainer = _fake_trainer(iter([100.0, 50.0]).__next__)
    clock = iter([0.0, 10.0, 15.0])
    monkeypatch.setattr(tb.time, "monotonic", lambda: next(clock))
    module = _Regression(lr=1e-2, warmup_steps=2, min_lr_ratio=0.1, grad_clip_max=None)
    budget = TimeBudgetDecay(measure_steps=10, margin=0.9, refit_seconds=20.0)
    budget.on_train_batch_end(trainer, module, None, None, 0)  # step 1 starts the clock
    trainer.global_step = 11
    budget.on_train_batch_end(trainer, module, None, None, 0)
    assert budget.decay_steps == 11 + 90 and budget.refit_every == 20 and budget.anchor is None
    trainer.global_step = 25  # not a refit step: nothing happens (no clock read)
    budget.on_train_batch_end(trainer, module, None, None, 0)
    assert budget.decay_steps == 101
    trainer.global_step = 40  # refit step: 29 steps in 5 s
    before = lr_factor(40, 2, 101, 0.1)
    budget.on_train_batch_end(trainer, module, None, None, 0)
    rate = (40 - 11) / 5.0
    assert budget.decay_steps == module.decay_steps == int(40 + rate * 50.0 * 0.9)
    assert module.decay_anchor == budget.anchor and budget.anchor[0] == 40
    after = lr_factor(40, 2, budget.decay_steps, 0.1, budget.anchor)
    assert abs(after - before) < 1e-12  # continuous at the refit
    assert lr_factor(budget.decay_steps, 2, budget.decay_steps, 0.1, budget.anchor) == 0.1  # floor at the new end
    # the state survives a checkpoint
    restored = TimeBudgetDecay()
    restored.load_state_dict(budget.state_dict())
    fresh = _Regression(lr=1e-2, grad_clip_max=None)
    restored.on_train_start(None, fresh)
    assert fresh.decay_steps == budget.decay_steps and fresh.decay_anchor == budget.anchor


def test_a_horizon_spreads_the_decay_over_resumed_runs(monkeypatch):
    """``horizon_minutes``: the decay ends when the training time of all runs reaches the horizon, not when this
    run's ``max_time`` does. 10 steps in 10 s, 110 s of training in all (100 before this resumed run), a 400-s
    horizon: 290 s left -> the end at step 11 + 290 x 0.9, whatever this run's own budget."""
    import callbacks.time_budget as tb

    trainer = _fake_trainer(lambda: 50.0)  # this call's own budget: 50 s left
    trainer.callbacks[0].time_elapsed = lambda stage: 110.0
    clock = iter([0.0, 10.0])
    monkeypatch.setattr(tb.time, "monotonic", lambda: next(clock))
    module = _Regression(lr=1e-2, warmup_steps=2, min_lr_ratio=0.1, grad_clip_max=None)
    budget = TimeBudgetDecay(measure_steps=10, margin=0.9, refit_seconds=None, horizon_minutes=400 / 60)
    budget.on_train_batch_end(trainer, module, None, None, 0)
    trainer.global_step = 11
    budget.on_train_batch_end(trainer, module, None, None, 0)
    assert budget.decay_steps == module.decay_steps == int(11 + 1.0 * 290.0 * 0.9)
    with pytest.raises(ValueError, match="horizon_minutes"):
        TimeBudgetDecay(horizon_minutes=0)


def test_a_resumed_run_with_its_horizon_keeps_its_anchored_schedule():
    """Resumed with the horizon its schedule was fitted to, the saved end and anchor stay, even with
    ``refit_on_resume`` (which full_pipeline passes to every resumed flow): the learning rate goes on where it was.
    A schedule fitted without that horizon (or to another) is fitted afresh."""
    saved = TimeBudgetDecay(horizon_minutes=15)
    saved.load_state_dict({"decay_steps": 3000, "anchor": (800, 0.3), "refit_every": 200})
    state = saved.state_dict()
    budget = TimeBudgetDecay(refit_on_resume=True, horizon_minutes=15)
    budget.load_state_dict(state)
    module = _Regression(lr=1e-2, grad_clip_max=None)
    budget.on_train_start(None, module)
    assert budget.decay_steps == module.decay_steps == 3000 and budget.anchor == module.decay_anchor == (800, 0.3)
    for horizon in (None, 20):
        other = TimeBudgetDecay(refit_on_resume=True, horizon_minutes=15)
        other.load_state_dict({**state, "horizon_minutes": horizon})
        other.on_train_start(None, _Regression(lr=1e-2, grad_clip_max=None))
        assert other.decay_steps is None and other.anchor is None
