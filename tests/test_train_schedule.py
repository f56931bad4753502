"""The time budget is the schedule (geors.train.schedule), with a fake clock: fast and deterministic."""

import pytest

from geors.train.schedule import BudgetSchedule, TrainingBar, lr_factor, plan_total_steps


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def run(schedule, clock, step_s, first_s=None, side_every=0, side_s=0.0, drift_at=None, drift_step_s=None):
    schedule.start()
    step, factors = 0, []
    while not schedule.finished(step):
        factors.append(schedule.lr_factor(step))
        s = step_s if drift_at is None or step < drift_at else drift_step_s
        clock.t += first_s if (step == 0 and first_s is not None) else s
        step += 1
        schedule.step_done(step)
        if side_every and step % side_every == 0:
            with schedule.side_work():
                clock.t += side_s
    return step, factors


def test_budget_plans_the_steps_that_fill_it():
    clock = FakeClock()
    sched = BudgetSchedule(600.0, warmup_steps=50, clock=clock)
    steps, factors = run(sched, clock, 1.0, first_s=5.0)
    # 600 s at 1 s per step (the first one slower, not timed): about 595 steps, not a cap on a shorter plan
    assert 580 <= steps <= 600 and steps == sched.total
    assert clock.t <= 600.0 + 1.0
    assert factors[0] < factors[49] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.05, abs=0.01)
    assert sched.summary(steps)["mode"] == "time budget" and sched.plans


def test_validation_time_is_accounted_and_the_plan_follows_a_drifting_step_time():
    clock = FakeClock()
    sched = BudgetSchedule(600.0, clock=clock)
    steps, factors = run(sched, clock, 0.5, side_every=100, side_s=20.0, drift_at=300, drift_step_s=1.0)
    assert clock.t <= 601.0 and clock.t >= 570.0  # the budget is used, validations included
    assert len(sched.plans) >= 2 and sched.plans[-1]["step_s"] > sched.plans[0]["step_s"]
    assert steps == sched.total and factors[-1] < 0.1  # the run still ends annealed after re-planning
    assert sched.side_s == pytest.approx(20.0 * (steps // 100))


def test_fixed_steps_with_a_budget_cap_anneal_by_time():
    clock = FakeClock()
    sched = BudgetSchedule(100.0, fixed_steps=1000, warmup_steps=10, clock=clock)
    steps, factors = run(sched, clock, 1.0)
    assert 99 <= steps <= 101 and sched.total == 1000 and "time budget" in sched.stop_reason(steps)
    assert factors[-1] < 0.1  # cut by the budget, annealed by the time fraction
    sched = BudgetSchedule(None, fixed_steps=30, clock=clock)
    assert run(sched, clock, 1.0)[0] == 30
    with pytest.raises(ValueError):
        BudgetSchedule(None, None)


def test_lr_factor_and_plan():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1) and lr_factor(9, 100, 10) == 1.0
    assert lr_factor(99, 100, 10) == pytest.approx(0.05) and lr_factor(0, 10, 50) == 0.5  # warm-up <= total / 5
    assert plan_total_steps(600, 2.0) == 300
    assert plan_total_steps(600, 2.0, done=100, elapsed_s=300, reserve_s=100) == 200
    assert plan_total_steps(600, 2.0, max_steps=50) == 50 and plan_total_steps(10, 20.0, done=5) == 6


def test_schedule_learning_rate_is_lr_factor():
    """BudgetSchedule.lr_factor is lr_factor over its plan; a fixed plan under a budget follows its time."""
    fixed = BudgetSchedule(None, 40, warmup_steps=5, floor=0.1)
    assert [fixed.lr_factor(s) for s in range(40)] == [lr_factor(s, 40, 5, 0.1) for s in range(40)]
    now = [0.0]
    cut = BudgetSchedule(100.0, 40, warmup_steps=5, clock=lambda: now[0])
    cut.start()
    now[0] = 75.0  # three quarters of the budget spent at step 10 of 40
    assert cut.lr_factor(10) == pytest.approx(lr_factor(10, 40, 5, 0.05, min_progress=0.75))
    assert cut.lr_factor(10) < lr_factor(10, 40, 5)


def test_training_bar_follows_the_plan(capsys):
    import io

    stream = io.StringIO()
    bar = TrainingBar(stream)
    bar.start(100, "train")
    bar.advance(1, steps=250, loss=0.5)
    assert bar._bar.total == 250
    bar.close()
    assert "250" in stream.getvalue()


def test_a_plan_at_its_end_stays_ended():
    """The last validation updates the reserve; re-planning then always added a step, and the run validated
    again at every added step (281/281, 285/285, 286/286 on the DOTA scene)."""
    clock = FakeClock()
    sched = BudgetSchedule(100.0, clock=clock)
    steps, _ = run(sched, clock, 1.0)
    assert sched.finished(steps)
    sched.set_reserve(0.0)
    sched.set_reserve(5.0)
    assert sched.total == steps and sched.finished(steps)
