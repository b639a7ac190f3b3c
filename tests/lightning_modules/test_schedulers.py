"""WarmupCosineLR: linear warm-up then cosine, per epoch, from plain numbers."""

import functools
import math

import pytest
import torch

from lightning_modules.schedulers import WarmupCosineLR


def _lrs(epochs: int, **kwargs) -> list[float]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = WarmupCosineLR(opt, max_epochs=epochs, **kwargs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine() -> None:
    lrs = _lrs(10, warmup_epochs=3, warmup_start_factor=0.1, eta_min=0.0)
    assert lrs[:4] == pytest.approx([1e-4, 4e-4, 7e-4, 1e-3])
    for e in range(3, 10):
        assert lrs[e] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * (e - 3) / 7)))


def test_no_warmup_and_bad_args() -> None:
    assert _lrs(4, warmup_epochs=0, eta_min=0.0)[0] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="WarmupCosineLR"):
        _lrs(3, warmup_epochs=3)


def test_max_epochs_none_needs_a_trainer_and_follow_trainer_epochs_fills_it() -> None:
    from lightning_modules.schedulers import follow_trainer_epochs

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ValueError, match="max_epochs is None"):
        WarmupCosineLR(opt)
    import functools

    left_open = functools.partial(WarmupCosineLR, warmup_epochs=1, max_epochs=None)  # what LightningCLI builds
    assert follow_trainer_epochs(left_open, 3)(opt).max_epochs == 3
    explicit = functools.partial(WarmupCosineLR, warmup_epochs=1, max_epochs=7)
    assert follow_trainer_epochs(explicit, 3)(opt).max_epochs == 7  # an explicit value wins
    plateau = functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="min")
    assert follow_trainer_epochs(plateau, 3) is plateau
    with pytest.raises(ValueError, match="warmup_epochs"):
        follow_trainer_epochs(functools.partial(WarmupCosineLR), 3)(opt)  # 5 warm-up epochs of 3: says the flag


def test_shrinking_trainer_max_epochs_shrinks_the_shipped_schedule(tmp_path, monkeypatch) -> None:
    """``--trainer.max_epochs 3`` on configs/fer/swin2b_ckplus48.yaml: the cosine ends at epoch 3 (it kept the
    config's 40 before), with no scheduler flag."""
    from pathlib import Path

    from cli import cli_main
    from tests.fakes_images import CK_CLASSES, make_class_folders

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setattr("sys.argv", ["cli.py"])
    root = tmp_path / "ck"
    make_class_folders(root, classes=CK_CLASSES, subjects=7, frames=1, size=32)
    cli = cli_main([
        "--config", str(repo / "configs/fer/swin2b_ckplus48.yaml"),
        "--data.init_args.root", str(root), "--data.init_args.cache_dir", str(tmp_path / "cache"),
        "--data.init_args.num_workers", "0", "--data.init_args.progress", "none",
        "--trainer.max_epochs", "3", "--model.init_args.scheduler.init_args.warmup_epochs", "1",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--checkpoint.dirpath", str(tmp_path / "ckpt"),
    ], run=False)
    cli.model.trainer = cli.trainer
    sched = cli.model.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert isinstance(sched, WarmupCosineLR) and sched.max_epochs == 3


def test_a_fast_dev_run_shortens_a_warm_up_longer_than_the_run() -> None:
    """fast_dev_run (max_epochs 1) smoke-tests any config; a shortened real run keeps the error naming the flag."""
    from lightning_modules.schedulers import follow_trainer_epochs

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    factory = functools.partial(WarmupCosineLR, warmup_epochs=5)
    sched = follow_trainer_epochs(factory, 1, debug_run=True)(opt)
    assert sched.max_epochs == 1
    with pytest.raises(ValueError, match="warmup_epochs"):
        follow_trainer_epochs(factory, 3)(opt)
    assert follow_trainer_epochs(functools.partial(WarmupCosineLR), 10, debug_run=True)(opt).max_epochs == 10


class _Clock:
    """A stand-in for ``time.monotonic`` that the test advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _budget(monkeypatch, **kwargs):
    from lightning_modules import schedulers

    clock = _Clock()
    monkeypatch.setattr(schedulers.time, "monotonic", clock)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    return opt, schedulers.BudgetCosineLR(opt, **kwargs), clock


def test_budget_schedule_follows_the_clock_warm_up_then_cosine_to_eta_min(monkeypatch) -> None:
    opt, sched, clock = _budget(monkeypatch, budget_minutes=10, warmup_fraction=0.1, warmup_start_factor=0.1,
                                eta_min=0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)  # before the first step
    opt.step()
    sched.step()  # the clock starts at the first optimizer step
    seen = []
    for seconds in (30, 60, 330, 600, 900):  # 5 %, 10 %, 55 %, 100 %, past the budget
        clock.now = 100.0 + seconds
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen[0] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert seen[1] == pytest.approx(1e-3)
    assert seen[2] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 0.5)))
    assert seen[3] == pytest.approx(0.0, abs=1e-12) and seen[4] == pytest.approx(0.0, abs=1e-12)


def test_budget_schedule_ends_at_total_steps_when_they_come_first(monkeypatch) -> None:
    opt, sched, _ = _budget(monkeypatch, budget_minutes=60, total_steps=4, warmup_fraction=0.0, eta_min=1e-6)
    lrs = []
    for _ in range(4):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[1] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)  # step 2 of 4, no time has passed
    assert lrs[-1] == pytest.approx(1e-6)


def test_budget_schedule_resumes_where_the_budget_stood(monkeypatch) -> None:
    opt, sched, clock = _budget(monkeypatch, budget_minutes=10, warmup_fraction=0.0, eta_min=0.0)
    opt.step()
    sched.step()
    clock.now += 300  # half the budget
    opt.step()
    sched.step()
    state = sched.state_dict()
    assert state["elapsed"] == pytest.approx(300.0)
    opt2, sched2, clock2 = _budget(monkeypatch, budget_minutes=10, warmup_fraction=0.0, eta_min=0.0)
    sched2.load_state_dict(state)
    assert sched2.progress() == pytest.approx(0.5)
    opt2.step()
    sched2.step()
    clock2.now += 150
    opt2.step()
    sched2.step()
    assert sched2.progress() == pytest.approx(0.75)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 0.75)))


@pytest.mark.parametrize("kwargs", [{"budget_minutes": 0}, {"budget_minutes": 1, "total_steps": 0},
                                    {"budget_minutes": 1, "warmup_fraction": 1.0},
                                    {"budget_minutes": 1, "warmup_start_factor": 0.0}])
def test_budget_schedule_bad_args(kwargs) -> None:
    from lightning_modules.schedulers import BudgetCosineLR

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ValueError, match="BudgetCosineLR"):
        BudgetCosineLR(opt, **kwargs)


def test_build_optimization_steps_the_budget_schedule_per_step_and_the_epoch_schedule_per_epoch() -> None:
    from lightning_modules.optim import build_optimization
    from lightning_modules.schedulers import BudgetCosineLR

    net = torch.nn.Linear(3, 2)
    opt = functools.partial(torch.optim.AdamW, lr=1e-3)
    budget = build_optimization(net, opt, functools.partial(BudgetCosineLR, budget_minutes=1), None, "val/loss")
    epochs = build_optimization(net, opt, functools.partial(WarmupCosineLR, max_epochs=3, warmup_epochs=1), None,
                                "val/loss")
    assert budget["lr_scheduler"]["interval"] == "step"
    assert epochs["lr_scheduler"]["interval"] == "epoch"
