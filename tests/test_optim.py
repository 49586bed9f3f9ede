"""Optimizer, learning-rate schedule and weight EMA of a training stage (kaggle_utils.optim)."""

from __future__ import annotations

import pytest
import torch

from kaggle_utils.config import MemberConfig
from kaggle_utils.optim import (
    ModelEMA,
    _fused_optimizers_apply,
    build_optimizer,
    build_scheduler,
    lr_factor,
)


def member(**kw) -> MemberConfig:
    spec = {"name": "tiny", "model": {"arch": "unet", "encoder": "mobilenet_v2"}, "seed": 3}
    stages = [{"size": "64x96", "epochs": 2}, {"size": "96x128", "epochs": 3}]
    return MemberConfig.model_validate({**spec, "stages": stages, **kw})


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4))


def test_lr_schedule_shapes():
    cosine = member(schedule={"name": "cosine"})
    f = [lr_factor(s, 100, 10, cosine, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False)) and f[-1] < 0.05
    step = member(schedule={"name": "step", "step_epochs": 2, "gamma": 0.5})
    assert [lr_factor(s, 100, 0, step, 10) for s in (0, 19, 20, 40)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_factor(57, 100, 0, member(schedule={"name": "constant"}), 10) == 1.0


@pytest.mark.parametrize(("stage", "warmup"), [(0, 2 * 10), (1, 0)])
def test_scheduler_warms_up_from_the_stage_else_the_schedule(stage, warmup):
    """Stage 1 sets warmup_epochs 0 (it starts from stage 0's weights); stage 0 uses the
    schedule's 2 epochs. The cosine runs over steps_per_epoch * the stage's epochs."""
    m = member(schedule={"name": "cosine", "warmup_epochs": 2})
    m.stages[1].warmup_epochs = 0
    opt = torch.optim.SGD(tiny_net().parameters(), lr=0.1)
    sched = build_scheduler(opt, m, stage, steps_per_epoch=10)
    total = 10 * m.stages[stage].epochs
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1 * lr_factor(s, total, warmup, m, 10) for s in range(total)]
    assert lrs == pytest.approx(expected)
    assert (lrs[0] < 0.1) is (warmup > 0)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_optimizer_is_fused_and_steps_like_the_per_parameter_loop(name):
    """The fused kernel (one per step) against torch's reference per-parameter loop, over both
    groups: decayed weights and undecayed norms/biases.

    The gradients are fixed seeded tensors, not backward() of a loss: with a loss the kernels'
    rounding differences feed back into the next gradients, and this net's (conv -> BatchNorm)
    gradients are near-cancellations (BatchNorm's bias gets ~1e-9 of pure rounding noise, the conv
    ~1e-5) that Adam's normalisation blows up to O(lr) steps: the old loss-driven version differed
    by 4.4e-5 on an AMD EPYC, CPU-dependently. With fixed gradients only the kernels' arithmetic
    differs, and it can be bounded:

    each step both kernels evaluate the same formula in float32 (eps = 2**-23) with a different op
    order and FMA use: the update u (about ten ops on m, v, g, lr) differs by at most a few ulps of
    |u|, and `p - u` by an ulp of |p|; errors carried in m and v add a few more ulps per step. So
    after k steps |p_fused - p_ref| <= k * C * eps * (|p| + max|u|), with C = 32 ulps per step
    (ample: on an AMD EPYC all 5 steps together differ by under 1 ulp). With k = 5, lr = 0.01 and
    |p| <= ~1 that is ~2e-5, while a real bug stands far above it: weight decay on the wrong group,
    or L2 instead of decoupled decay, differs by lr * wd * |p| ~ 1e-3 per step on the norm weights
    (wd = 0.1; measured: ~250x the tolerance), a missing bias correction by ~0.9 * lr on step one.
    """
    steps, lr, wd = 5, 0.01, 0.1
    m = member(optimizer={"name": name, "weight_decay": wd})
    nets, max_update = [], 0.0
    for fused in (True, False):
        net = tiny_net()
        opt = build_optimizer(net, m, lr=lr)
        assert opt.defaults["fused"] is True  # on the CPU: one kernel per step
        assert [g["weight_decay"] for g in opt.param_groups] == [wd, 0.0]
        assert [len(g["params"]) for g in opt.param_groups] == [1, 2]  # conv | BN weight, bias
        for group in opt.param_groups:
            group["fused"] = fused  # False: torch's reference per-parameter loop
        for step in range(steps):
            gen = torch.Generator().manual_seed(step)
            before = [p.detach().clone() for p in net.parameters()]
            for p in net.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
            moved = [
                (p.detach() - b).abs().max() for p, b in zip(net.parameters(), before, strict=True)
            ]
            max_update = max(max_update, float(max(moved)))
        nets.append(net)
    ulps = steps * 32 * torch.finfo(torch.float32).eps
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=ulps, atol=ulps * max_update)
    assert max_update > 0.5 * lr  # the optimizers did move the weights


def test_fused_kernels_only_for_floating_point_parameters_on_one_device():
    assert _fused_optimizers_apply([torch.zeros(2), torch.zeros(3, 3)])
    assert not _fused_optimizers_apply([])
    assert not _fused_optimizers_apply([torch.zeros(2, dtype=torch.int64)])
    assert not _fused_optimizers_apply([torch.zeros(2), torch.zeros(2, device="meta")])


def test_ema_copies_during_warmup_then_averages_and_copies_buffers():
    net = tiny_net()
    ema = ModelEMA(net, decay=0.5, warmup_steps=1)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.fill_(3.0)
    ema.update(net)  # warm-up step: a plain copy
    torch.testing.assert_close(ema.module[0].weight, net[0].weight)
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        net[0].weight.add_(2.0)
    ema.update(net)  # then decay 0.5: half way to the current weights
    torch.testing.assert_close(ema.module[0].weight, 0.5 * before + 0.5 * net[0].weight)
    torch.testing.assert_close(ema.module[1].running_mean, net[1].running_mean)
    assert ema.steps == 2
