"""Training schedules: a time budget becomes a number of steps, a learning rate per step and an ETA.

Nothing here knows about a model: the detector loop (``geors.train.detector``)
uses it and the segmenter loop can. The API below is stable.

``lr_factor(step, total, warmup, floor=0.05, min_progress=0.0) -> float``
    Multiplier of the base learning rate: linear warm-up over ``warmup`` steps
    (capped at a fifth of ``total``), then half a cosine from 1 down to
    ``floor`` at step ``total - 1``. The one rule: ``BudgetSchedule.lr_factor``
    calls it with its current plan.

``plan_total_steps(budget_s, step_s, *, done=0, elapsed_s=0.0, reserve_s=0.0, min_steps=1, max_steps=None) -> int``
    Steps that fit a budget: the ``done`` steps already taken plus as many
    steps of ``step_s`` seconds as fit in ``budget_s - elapsed_s - reserve_s``.

``BudgetSchedule(budget_s, fixed_steps=None, *, warmup_steps=50, probe_steps=8, min_steps=20, max_steps=None,
floor=0.05, replan_tolerance=0.15, clock=time.monotonic)``
    The schedule of one training run. With a budget and no ``fixed_steps``
    the plan is measured: the first ``probe_steps`` steps time the step, then
    ``total`` is set so that the steps, the side work (validation) and the
    ``reserve_s`` fill the budget; the plan is re-made whenever the measured
    step time drifts more than ``replan_tolerance`` from the one planned
    with, or the reserve changes. With ``fixed_steps`` the plan is those
    steps; a budget then only caps the run, and the learning rate follows
    the larger of the step and the time fraction, so a run the budget cuts
    still ends annealed. With neither, ``fixed_steps`` is required.

    Use::

        sched = BudgetSchedule(600.0, warmup_steps=50)
        sched.start()
        step = 0
        while not sched.finished(step):
            lr = base_lr * sched.lr_factor(step)
            ...one optimisation step...
            step += 1
            sched.step_done(step)
            if time_to_validate:
                with sched.side_work():        # counted in the budget, not in the step time
                    validate()
                sched.set_reserve(seconds)     # side work still to come (validations, calibration)

    Attributes and methods: ``total`` (planned steps, int), ``budget_s``,
    ``elapsed_s()``, ``step_s()`` (measured seconds per step, None before the
    first timed step), ``side_s`` (seconds of side work so far), ``eta_s(step)``,
    ``time_fraction()``, ``finished(step)``, ``stop_reason(step)``,
    ``plans`` (list of ``{"step", "total", "step_s"}``: every plan made) and
    ``summary(step)`` (a dict for the model's training metadata).

``TrainingBar``
    A :class:`geors.progress.Progress` reporter for training: a tqdm bar on
    stderr counting steps whose total follows the plan (``advance(n, steps=total,
    **postfix)``).

Times are wall-clock seconds of ``clock`` (injectable for tests).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = ["lr_factor", "plan_total_steps", "BudgetSchedule", "TrainingBar"]


def lr_factor(step: int, total: int, warmup: int, floor: float = 0.05, min_progress: float = 0.0) -> float:
    """Learning-rate multiplier at ``step`` (0-based) of ``total``: linear warm-up, then cosine to ``floor``.

    The warm-up is capped at a fifth of the schedule so that a short plan still
    spends most of its steps past it. ``min_progress``: the cosine is at least
    this far along (a fixed plan that a time budget may cut follows the further
    of its steps and its time).
    """
    warm = _warm_steps(warmup, total)
    if step < warm:
        return (step + 1) / warm
    progress = max((step - warm) / max(max(int(total), 1) - 1 - warm, 1), min_progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _warm_steps(warmup: int, total: int) -> int:
    return min(max(int(warmup), 0), max(int(total) // 5, 1))


def plan_total_steps(budget_s: float, step_s: float, *, done: int = 0, elapsed_s: float = 0.0,
                     reserve_s: float = 0.0, min_steps: int = 1, max_steps: int | None = None) -> int:
    """Total steps that fit ``budget_s``: ``done`` plus the steps of ``step_s`` seconds that fit what is left.

    What is left is ``budget_s - elapsed_s - reserve_s`` (``reserve_s``: side
    work still to come, such as validation and calibration). The result is at
    least ``max(min_steps, done + 1)`` and at most ``max_steps``.
    """
    left = budget_s - elapsed_s - reserve_s
    more = int(left / step_s) if step_s > 0 and left > 0 else 0
    total = max(done + more, min_steps, done + 1)
    if max_steps is not None:
        total = min(total, max(int(max_steps), done + 1))
    return int(total)


class BudgetSchedule:
    """Steps, learning rate and ETA of one training run (see the module docstring)."""

    def __init__(self, budget_s: float | None, fixed_steps: int | None = None, *, warmup_steps: int = 50,
                 probe_steps: int = 8, min_steps: int = 20, max_steps: int | None = None, floor: float = 0.05,
                 replan_tolerance: float = 0.15, clock: Callable[[], float] = time.monotonic):
        if budget_s is None and fixed_steps is None:
            raise ValueError("give a time budget or a fixed number of steps")
        if budget_s is not None and budget_s <= 0:
            raise ValueError(f"the time budget must be positive, got {budget_s}")
        if fixed_steps is not None and fixed_steps < 1:
            raise ValueError(f"fixed_steps must be >= 1, got {fixed_steps}")
        self.budget_s = None if budget_s is None else float(budget_s)
        self.fixed = fixed_steps is not None
        self.warmup_steps = int(warmup_steps)
        self.probe_steps = max(int(probe_steps), 1)
        self.min_steps = max(int(min_steps), 1)
        self.max_steps = max_steps
        self.floor = float(floor)
        self.replan_tolerance = float(replan_tolerance)
        self.clock = clock
        # before the probe has timed a step, plan as if the run were long; the warm-up covers the probe anyway
        self.total = int(fixed_steps) if fixed_steps is not None else max(self.min_steps, self.probe_steps + 1,
                                                                           self.warmup_steps * 5)
        if max_steps is not None and not self.fixed:
            self.total = min(self.total, int(max_steps))
        self.side_s = 0.0
        self.reserve_s = 0.0
        self.plans: list[dict[str, Any]] = []
        self._t0: float | None = None
        self._step_time = 0.0  # seconds of timed steps (the first step, with its one-off set-up, is not timed)
        self._timed = 0
        self._last: float | None = None
        self._planned_step_s: float | None = None
        self._done = 0

    # -- clock -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the clock (call right before the first step)."""
        self._t0 = self._last = self.clock()

    def elapsed_s(self) -> float:
        return 0.0 if self._t0 is None else self.clock() - self._t0

    def step_s(self) -> float | None:
        """Measured seconds per optimisation step (side work excluded); None before a step was timed."""
        return self._step_time / self._timed if self._timed else None

    def time_fraction(self) -> float:
        return 0.0 if self.budget_s is None else min(self.elapsed_s() / self.budget_s, 1.0)

    @contextlib.contextmanager
    def side_work(self) -> Iterator[None]:
        """Time spent inside counts against the budget but not in the step time (validation, checkpoints)."""
        t = self.clock()
        try:
            yield
        finally:
            dt = self.clock() - t
            self.side_s += dt
            if self._last is not None:
                self._last += dt

    def set_reserve(self, seconds: float) -> None:
        """Seconds of side work still to come (kept out of the steps); re-plans when it changes."""
        seconds = max(float(seconds), 0.0)
        changed = abs(seconds - self.reserve_s) > 1e-9
        self.reserve_s = seconds
        if changed and not self.fixed and self.budget_s is not None and self._timed >= self.probe_steps:
            self._plan(self._done)

    # -- steps -------------------------------------------------------------------------------------------
    def step_done(self, done: int) -> None:
        """``done`` steps are finished: time the last one and (budget mode) plan or re-plan the total."""
        now = self.clock()
        if self._last is not None and done > 1:  # the first step pays one-off set-up: not timed
            self._step_time += now - self._last
            self._timed += 1
        self._last = now
        self._done = done
        if self.fixed or self.budget_s is None or self._timed < self.probe_steps:
            return
        rate = self.step_s()
        if (self._planned_step_s is None
                or abs(rate / self._planned_step_s - 1.0) > self.replan_tolerance):
            self._plan(done)

    def _plan(self, done: int) -> None:
        rate = self.step_s()
        if rate is None or self.budget_s is None or done >= self.total:
            return  # a plan that has reached its end stays ended (re-planning would always add a step)
        self.total = plan_total_steps(self.budget_s, rate, done=done, elapsed_s=self.elapsed_s(),
                                      reserve_s=self.reserve_s, min_steps=self.min_steps, max_steps=self.max_steps)
        self._planned_step_s = rate
        self.plans.append({"step": done, "total": self.total, "step_s": round(rate, 4),
                           "elapsed_s": round(self.elapsed_s(), 1), "reserve_s": round(self.reserve_s, 1)})

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base learning rate for 0-based ``step`` of the current plan (:func:`lr_factor`)."""
        cut_by_time = self.fixed and self.budget_s is not None  # a fixed plan the budget may cut
        return lr_factor(step, self.total, self.warmup_steps, self.floor,
                         self.time_fraction() if cut_by_time else 0.0)

    def out_of_time(self) -> bool:
        return self.budget_s is not None and self.elapsed_s() >= self.budget_s

    def finished(self, step: int) -> bool:
        """True when ``step`` steps complete the plan or the budget is spent."""
        return step >= self.total or (step > 0 and self.out_of_time())

    def stop_reason(self, step: int) -> str:
        if step >= self.total:
            return (f"planned steps done ({step} steps"
                    + (f" planned for a budget of {self.budget_s:.0f} s)" if not self.fixed else ")"))
        if self.out_of_time():
            return f"time budget of {self.budget_s:.0f} s reached after {step} of {self.total} planned steps"
        return f"stopped after {step} of {self.total} planned steps"

    def eta_s(self, step: int) -> float:
        """Seconds to the end of the plan: remaining steps at the measured rate plus the reserve (budget-capped)."""
        rate = self.step_s()
        if rate is None:
            return float("nan") if self.budget_s is None else max(self.budget_s - self.elapsed_s(), 0.0)
        side_per_step = self.side_s / max(self._done, 1) if self.fixed else 0.0
        eta = (self.total - step) * (rate + side_per_step) + self.reserve_s
        if self.budget_s is not None:
            eta = min(eta, max(self.budget_s - self.elapsed_s(), 0.0) + self.reserve_s)
        return max(eta, 0.0)

    def summary(self, step: int) -> dict[str, Any]:
        """What the schedule did, for the model's training metadata."""
        return {"mode": "fixed steps" if self.fixed else "time budget", "budget_s": self.budget_s,
                "planned_steps": self.total, "steps": step, "step_s": None if self.step_s() is None
                else round(self.step_s(), 4), "side_s": round(self.side_s, 1),
                "elapsed_s": round(self.elapsed_s(), 1), "warmup_steps": _warm_steps(self.warmup_steps, self.total),
                "lr_floor": self.floor, "plans": self.plans}


class TrainingBar:
    """A tqdm bar on stderr for training steps; ``advance(n, steps=total, **postfix)`` follows a changing plan.

    Satisfies :class:`geors.progress.Progress`.
    """

    cancelled = False

    def __init__(self, stream: IO[str] | None = None, unit: str = "step"):
        self._bar = None
        self._stream = stream or sys.stderr
        self._unit = unit

    def start(self, total: int, desc: str = "") -> None:
        from tqdm import tqdm

        self.close()
        self._bar = tqdm(total=int(total), desc=desc, unit=self._unit, file=self._stream, dynamic_ncols=True)

    def advance(self, n: int = 1, **info: Any) -> None:
        if self._bar is None:
            return
        steps = info.pop("steps", None)
        if steps is not None and int(steps) != self._bar.total:
            self._bar.total = int(steps)
            self._bar.refresh()
        shown = {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in info.items()
                 if k in ("loss", "val_AP50", "best")}
        if shown:
            self._bar.set_postfix(shown, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
