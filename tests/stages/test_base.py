"""The shared stage recipe: weight-decay groups survive FSDP's flattening; adaptive clipping follows history."""

import torch
from torch import nn

from genrecon.stages.base import AdaptiveGradClipper, Stage, clean_name


class _Tiny(Stage):
    new_parameter_prefixes = ("head",)

    def __init__(self, **kw):
        super().__init__(**kw)
        self.body = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)


def test_decay_groups_use_names_recorded_before_wrapping():
    stage = _Tiny(lr=1e-3, lr_new=1e-2, weight_decay=0.1, weight_decay_new=0.2)
    stage.setup("fit")
    # FSDP flattens parameters to 1-D views and prefixes names: the recorded names still decide the groups
    stage.body.weight.data = stage.body.weight.data.reshape(-1)
    groups = {g["name"]: g for g in stage.parameter_groups()}
    assert {id(p) for p in groups["base"]["params"]} == {id(stage.body.weight)}
    assert groups["base"]["weight_decay"] == 0.1 and groups["new"]["weight_decay"] == 0.2
    assert groups["new"]["lr"] == 1e-2 and groups["base_no_decay"]["weight_decay"] == 0.0
    assert clean_name("_fsdp_wrapped_module.body._checkpoint_wrapped_module.weight") == "body.weight"


def test_adaptive_clip_uses_the_percentile_of_recent_norms():
    clipper = AdaptiveGradClipper(max_norm=1.0, percentile=50.0, window=4)
    p = nn.Parameter(torch.zeros(3))
    for norm in (0.2, 0.4, 0.6, 0.8):
        p.grad = torch.tensor([norm, 0.0, 0.0])
        clipper([p])
    assert abs(clipper.clip_value() - 0.5) < 1e-6  # median of the window, below max_norm
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    before, used = clipper([p])
    assert before == 5.0 and abs(used - 0.5) < 1e-6 and abs(p.grad.norm().item() - 0.5) < 1e-5
    # a sharded model computes the global norm itself
    assert clipper([p], clip_fn=lambda value: 7.0)[0] == 7.0


def test_lr_schedule_warms_up_then_stays_constant_or_decays_by_cosine():
    from genrecon.stages.base import lr_factor

    # published: linear warm-up, then constant
    assert lr_factor(0, warmup=10) == 0.1 and lr_factor(9, warmup=10) == 1.0 and lr_factor(10_000, warmup=10) == 1.0
    # cosine: 1 at the end of the warm-up, halfway between 1 and min_ratio at the middle, min_ratio after
    assert lr_factor(10, warmup=10, decay=110, min_ratio=0.1) == 1.0
    assert abs(lr_factor(60, warmup=10, decay=110, min_ratio=0.1) - 0.55) < 1e-12
    assert lr_factor(110, warmup=10, decay=110, min_ratio=0.1) == 0.1 == lr_factor(500, warmup=10, decay=110)
    values = [lr_factor(s, warmup=10, decay=110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_stage_scheduler_follows_the_configured_decay():
    stage = _Tiny(lr=1e-3, warmup_steps=2, decay_steps=6, min_lr_ratio=0.5)
    sched = stage.configure_optimizers()["lr_scheduler"]["scheduler"]
    opt = sched.optimizer
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.5e-3 and lrs[1] == 1e-3 and lrs[2] == 1e-3
    assert abs(lrs[6] - 0.5e-3) < 1e-12 and abs(lrs[7] - 0.5e-3) < 1e-12


def test_ema_callback_uses_one_fused_update_with_the_same_average():
    from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

    stage = _Tiny(ema_decay=0.9)
    (callback,) = stage.configure_callbacks()
    fused = AveragedModel(stage, use_buffers=True, **callback._kwargs)
    plain = AveragedModel(stage, use_buffers=True, avg_fn=get_ema_avg_fn(0.9))
    assert fused.multi_avg_fn is not None
    for _ in range(3):
        with torch.no_grad():
            for p in stage.parameters():
                p.add_(torch.randn_like(p))
        fused.update_parameters(stage)
        plain.update_parameters(stage)
    for a, b in zip(fused.module.parameters(), plain.module.parameters()):
        torch.testing.assert_close(a, b)


def test_warmed_up_ema_is_the_running_mean_at_first_then_the_plain_decay():
    from torch.optim.swa_utils import AveragedModel

    from genrecon.stages.base import ema_decay_at

    assert ema_decay_at(0.999, 5, warmup=False) == 0.999
    assert abs(ema_decay_at(0.999, 1, warmup=True) - 2 / 11) < 1e-12
    assert ema_decay_at(0.99, 10_000, warmup=True) == 0.99  # capped once (1 + n) / (10 + n) passes the decay
    stage = _Tiny(ema_decay=0.99, ema_warmup=True)
    (callback,) = stage.configure_callbacks()
    averaged = AveragedModel(stage, use_buffers=True, **callback._kwargs)
    history = []
    for _ in range(4):
        with torch.no_grad():
            for p in stage.parameters():
                p.add_(torch.randn_like(p))
        history.append(stage.body.weight.detach().clone())
        averaged.update_parameters(stage)
    # By hand: the first update copies; the n-th after it mixes with decay (1 + n) / (10 + n).
    expect = history[0]
    for n, w in enumerate(history[1:], start=1):
        d = (1 + n) / (10 + n)
        expect = d * expect + (1 - d) * w
    torch.testing.assert_close(averaged.module.body.weight, expect)


def test_warmed_up_ema_resumes_its_count_from_the_saved_average():
    from torch.optim.swa_utils import AveragedModel

    from genrecon.stages.base import ema_multi_avg_fn

    stage = _Tiny()
    one = AveragedModel(stage, use_buffers=True, multi_avg_fn=ema_multi_avg_fn(0.99, warmup=True))
    steps = [[torch.randn_like(p) for p in stage.parameters()] for _ in range(5)]

    def advance(model, moves):
        for move in moves:
            with torch.no_grad():
                for p, m in zip(stage.parameters(), move):
                    p.add_(m)
            model.update_parameters(stage)

    start = [p.detach().clone() for p in stage.parameters()]
    advance(one, steps)
    with torch.no_grad():
        for p, s in zip(stage.parameters(), start):
            p.copy_(s)
    first = AveragedModel(stage, use_buffers=True, multi_avg_fn=ema_multi_avg_fn(0.99, warmup=True))
    advance(first, steps[:3])
    # A restarted run: a new callback (a fresh closure) loads the saved average and its update count.
    resumed = AveragedModel(stage, use_buffers=True, multi_avg_fn=ema_multi_avg_fn(0.99, warmup=True))
    resumed.load_state_dict(first.state_dict())
    advance(resumed, steps[3:])
    for a, b in zip(one.module.parameters(), resumed.module.parameters()):
        torch.testing.assert_close(a, b)


def test_warmed_up_ema_gives_every_dtype_group_the_same_decays():
    """The average updates each (device, dtype) group of tensors in its own call: a float64 buffer beside the
    float32 weights must see the same decays, not a count advanced by the other group's call."""
    from torch.optim.swa_utils import AveragedModel

    from genrecon.stages.base import ema_multi_avg_fn

    stage = _Tiny()
    stage.register_buffer("scale", torch.zeros(3, dtype=torch.float64))
    averaged = AveragedModel(stage, use_buffers=True, multi_avg_fn=ema_multi_avg_fn(0.99, warmup=True))
    weights, scales = [], []
    for k in range(4):
        with torch.no_grad():
            stage.body.weight.add_(torch.randn_like(stage.body.weight))
            stage.scale.fill_(float(k + 1))
        weights.append(stage.body.weight.detach().clone())
        scales.append(stage.scale.clone())
        averaged.update_parameters(stage)
    expect_w, expect_s = weights[0], scales[0]
    for n in range(1, 4):
        d = (1 + n) / (10 + n)
        expect_w = d * expect_w + (1 - d) * weights[n]
        expect_s = d * expect_s + (1 - d) * scales[n]
    torch.testing.assert_close(averaged.module.body.weight, expect_w)
    torch.testing.assert_close(averaged.module.scale, expect_s)
