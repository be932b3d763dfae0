r"""The divergence guard: when the cycle blows up, roll back in memory, lower the peak, and go on.

A peak read from any range test can be wrong on some model; a peak given by hand can be too. Without a guard the run
is lost (a one-cycle too high for the model ends at chance accuracy). With it, a wrong peak costs a little time: the
weights, buffers, optimizer state and gradient scaler (and the average of a ``WeightAveraging`` callback, which
replaces the weights when training ends) come back from a snapshot taken before the blow-up, the rest of
the cycle runs lower, its highest LR ahead at a quarter of the LR the loss diverged at (that of its first blow-up
since the snapshot, where it blew up: a NaN/inf loss, or one half as high again as the first that also stands out of
the noise of the losses before it; else that of the check that saw it: :func:`lowering`), the same shape, lower (a
quarter because an LR that blew up once is likely several times too high, and too low costs little while too high
costs the run); the LR climbs back from where the restored weights were trained over as many steps as it took to get
there, and training goes on.

"Clearly diverged", chosen so that the noise of ordinary training does not trigger it: the training loss is NaN/inf; or
its moving average (an EMA over about ``window`` steps, debiased) has risen half as high again as where training started
(and beyond what the noise of the run's first batches can put between the two readings, unless it is twice as high:
:meth:`DivergenceGuard.start_margin`), or above ``threshold`` (4) times its best (for a negative loss: by three times
the best's magnitude; the rise is never measured in less than a tenth of the start, so a loss that nears or crosses
zero, a negative log-likelihood, is not judged by a best that is no scale), or back above where training started after
it had fallen by a tenth, and by more than that noise (a network collapsed to chance); or, once the LR has climbed to
the cycle's peak and the moving average spans a whole window (``window`` losses: in a run whose peak comes sooner, a
loss falling as it should has had no time to fall a tenth), the loss never fell a tenth below where it started and
stands at or above it, and none of the last ``window // 2`` losses fell a tenth below it either, in a run whose loss
moved since the snapshot, one loss a tenth below the first or half as high again (a network that too high an LR killed
spiked, or fell and came back, before it lay flat at the start; a slow starter whose average still carries an early
spike while its latest losses fall is left to train, and so is a plateau, a loss that lies flat for a while before it
falls and never left its first loss's neighbourhood: a GRU on a marked-sum task sits at ln 2 for some 40 steps); after a
rescue that check repeats at every step until the average has fallen a tenth below the start (the peak that blew up was
too high: a network that dips as the LR climbs back and then dies at the loss it started from is caught); or, from then
on, at a check, the last ``window`` losses lie within 5 % of their mean, no lower than half the first loss, while the
moving average once stood at twice that mean (a network that blew up and died, predicting the same for every input about
as badly as an untrained one: its flat loss can lie below a start that the blow-up inflated, where no other criterion
sees it; a network still learning differs more from batch to batch, one that trained has fallen further, and one flat at
its first loss never blew up). How often it fires in runs that end well without it, and what that costs them, is
measured on the pick zoo (the README's guard section).

One snapshot in memory at a time (a copy of the weights, buffers and optimizer state, and of a weight average where a
``WeightAveraging`` callback keeps one; none once no rescue is left): the weights training started
from, then refreshed every ``refresh_every`` steps while the model is healthy (its loss a tenth below where it started,
its average within 1.5 times its best, and never blown up to twice its first loss; its weights finite), so the
snapshot predates a blow-up by at least one check; a refresh copies into the snapshot's own tensors (no new memory).
It copies the weights after the check's step, whose update no loss has judged yet: an update that leaves them finite
but blown up in that very step is what a rescue rolls back to (rare: the step must be a refresh's; the rescues are
then spent on it, and the run ends in :class:`DivergenceError`). Nothing is read per
step: each step's loss is kept as it comes (on its device), and every ``check_every`` steps the kept losses are read
in one transfer and judged one by one, in order, exactly as if each had been judged at its own step (the flat line
after a blow-up is judged once per check, on the losses up to it); the guard acts at that check, at most
``check_every - 1`` steps after the loss that diverged. The same on every device, and no GPU-to-CPU synchronization
between checks.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_superconv import _compat
from lightning_superconv.curve import rise_over_best
from lightning_superconv.schedule import scale_peak
from lightning_superconv.snapshot import Snapshot, hidden_modules, lazy_modules, nothing, recapture

#: A rescue lowers the highest LR ahead to a quarter of the LR the loss diverged at (see :func:`lowering`).
LOWER_BY = 0.25
#: Losses this close together (their spread over their mean) over a whole window are a flat line.
FLAT = 0.05
#: A loss half as high again as the first is a blow-up only this many times the noise of the latest losses above
#: their mean: see :meth:`DivergenceGuard._read_blow_up`.
NOISE = 4.0
#: Losses needed to measure their noise; before them a high loss is a blow-up if the loss stays up over this many.
NOISE_MIN = 5
#: Standard errors of the batches' noise that a rise from, or a fall below, where training started must also exceed
#: (see :meth:`DivergenceGuard.start_margin`).
MARGIN = 2.0
#: The param-group entries torch's ``OneCycleLR`` sets (the LR and its bounds; the momentum, or Adam's ``betas``, and
#: theirs) and ``WeightDecayBalancer``'s weight decay: a rollback keeps their values, the rest of each group goes back.
SET_BY_THE_CYCLE = frozenset(
    {"lr", "initial_lr", "max_lr", "min_lr", "momentum", "betas", "base_momentum", "max_momentum", "weight_decay"}
)
#: Why the guard judged a NaN/inf loss diverged (a rescue's ``reason`` and ``DivergenceError``'s begin with it).
NONFINITE_REASON = "the loss became NaN/inf"
#: Why it judged the gradient scaler's skips a divergence where they came among healthy steps, at most one in two (a
#: NaN batch every few steps, which sinks the scale as surely as weights gone NaN): a cause in the data, more likely
#: than in the LR.
SPREAD_SKIPS_REASON = "the gradient scaler skipped steps among healthy ones"


class DivergenceError(RuntimeError):
    """The loss diverged once more after the guard had used all its rescues: training stops."""


@dataclass
class Rescue:
    """What one rescue did: the step it happened at, the step it rolled back to, the peak before and after, why."""

    step: int
    restored_step: int
    old_peak: float
    new_peak: float
    reason: str


class DivergenceGuard:
    r"""Watches the training loss step by step; says when to roll back, and does the rollback.

    Args:
        threshold: the moving average may rise to this many times its best before it counts as diverged (> 1); the
            rise is measured in the best's magnitude, never in less than a tenth of where training started.
        window: the moving average's span in steps (its EMA factor is ``1 - 1/window``).
        check_every: how often, in optimizer steps, the kept losses are read and judged.
        refresh_every: how often the snapshot is refreshed while the loss is healthy.
    """

    def __init__(
        self, threshold: float = 4.0, window: int = 20, check_every: int = 10, refresh_every: int = 50
    ) -> None:
        self.threshold = threshold
        self.beta = 1.0 - 1.0 / window
        self.check_every = check_every
        self.refresh_every = refresh_every
        self.snapshot: Snapshot | None = None
        self.snapshot_step = -1
        # average, count, best, start and latest losses at the snapshot: a rollback to the first snapshot forgets where
        # training "started" too (it is read again from the losses that follow), else the restored weights' own loss,
        # above the start the first steps fell to, counts as a divergence at once and every rescue is spent on it
        self._snapshot_stats: (
            tuple[float, int, float, float, float, float, tuple[float, ...], tuple[float, ...]] | None
        ) = None
        # losses kept since the last check, with their steps and LRs; a resumed run's come back as plain numbers
        self._kept: list[torch.Tensor | float] = []
        self._kept_steps: list[int] = []
        self._kept_lrs: list[float] = []
        self._kept_scales: list[int] = []  # what each kept loss is to be multiplied by (see `keep`)
        # the latest losses as they came (finite ones): a dead network's lie flat
        self.window = window
        self._recent: deque[float] = deque(maxlen=max(2, window))
        # the first `window` losses (finite ones): their noise is the batches' noise around where training started
        # (`start_margin`). A rollback to the first snapshot reads them again with the start: a blow-up among them
        # (the peak that was rolled back) would make the margin that of the blow-up
        self._early: list[float] = []
        self._reset_stats()

    def _reset_stats(self) -> None:
        self.average = 0.0  # the EMA's raw (biased) value; `smoothed` debiases it
        self.count = 0
        self.best = math.inf
        self.start = math.nan
        self.highest = -math.inf  # the highest the moving average stood, once `start` was read
        self.first = math.nan  # the first loss
        # the LR of the first loss since the snapshot that blew up: NaN/inf, or half as high again as the first loss and
        # out of the noise (`_read_blow_up`). Not kept in checkpoints: a resumed run takes a new snapshot, and only a
        # blow-up after it tells where the loss diverged
        self.blow_up_lr = math.nan
        # whether a loss since the snapshot left the first's neighbourhood: a tenth below it, half as high again, or
        # NaN/inf. A loss that never did is a plateau (or a slow start), not a network that died (see `GuardedCycle`)
        self.moved = False
        # a loss among the first few half as high again as the first, waiting to be judged (a blow-up if the loss
        # stays up; see `_read_blow_up`): its LR, and the losses from it on
        self._pending_lr = math.nan
        self._pending_losses: list[float] = []
        self._nonfinite = False
        self._recent.clear()

    # ------------------------------------------------------------------------------------------------ watching

    @property
    def smoothed(self) -> float:
        """The debiased moving average of the loss (NaN before the first step)."""
        return self.average / (1 - self.beta**self.count) if self.count else math.nan

    def keep(self, loss: torch.Tensor, step: int, lr: float = math.nan, scale: int = 1) -> None:
        """Keep one optimizer step's loss where it is (no transfer, no copy), with its LR, until :meth:`read_kept`.

        ``scale``: what the loss is read multiplied by. Lightning hands the hooks the loss divided by the
        ``accumulate_grad_batches`` of its step (which ``GradientAccumulationScheduler`` may change between epochs):
        multiplied back, every loss reads as ``training_step`` returned it, on one scale, and so does a rescue's
        message.
        """
        self._kept.append(loss.detach() if loss.requires_grad else loss)
        self._kept_steps.append(step)
        self._kept_lrs.append(lr)
        self._kept_scales.append(scale)

    def read_kept(self) -> list[tuple[int, float, float]]:
        """The kept losses as ``(step, value, lr)`` in the order they came, read in one transfer; the keep empties."""
        kept, steps, lrs, scales = self._kept, self._kept_steps, self._kept_lrs, self._kept_scales
        self._kept, self._kept_steps, self._kept_lrs, self._kept_scales = [], [], [], []
        if not kept:
            return []
        # one run's losses share a shape and a device: on an accelerator they come over in one transfer; on the host
        # each is read where it is (a stack of them cost tens of microseconds at every check on a CPU), and so is a
        # list that holds numbers (a resumed run's first check: numbers from the checkpoint, tensors since). A loss
        # of several elements is read one by one too, so that `float` names the problem
        on_accelerator = all(isinstance(loss, torch.Tensor) and not loss.is_cpu for loss in kept)
        stacked = torch.stack(kept) if on_accelerator else None  # type: ignore[arg-type]
        if stacked is not None and stacked.numel() == len(kept):
            values = stacked.reshape(-1).tolist()
        else:
            values = [float(loss) for loss in kept]
        if any(scale != 1 for scale in scales):
            values = [value * scale for value, scale in zip(values, scales, strict=True)]
        return list(zip(steps, values, lrs, strict=True))

    def add(self, value: float, forgive_nonfinite: bool = False, lr: float = math.nan) -> None:
        """Take one step's loss into the moving average, the start and the best (NaN/inf is flagged, not averaged).

        ``forgive_nonfinite``: a NaN/inf loss is not flagged either (the gradient scaler skipped that step).
        ``lr``: the LR of the step; the first blow-up's (a NaN/inf loss, or one half as high again as the first loss
        that stands out of the noise of the losses before it: :meth:`_read_blow_up`) is :attr:`blow_up_lr`, the LR a
        rescue reads the loss as diverged at.
        """
        if not math.isfinite(value):
            if not forgive_nonfinite:
                self._nonfinite = self.moved = True
                if math.isnan(self.blow_up_lr):  # at the LR of a high loss just before it still waiting to be judged
                    self.blow_up_lr = self._pending_lr if self._pending_losses else lr
                self._pending_losses.clear()
            return
        self.average = self.beta * self.average + (1 - self.beta) * value
        self.count += 1
        if len(self._early) < self.window:
            self._early.append(value)
        if self.count == 1:
            self.first = value
        high = self.count > 1 and value - self.first > 0.5 * abs(self.first if self.first != 0 else 1.0)
        if high or value < self.first - 0.1 * abs(self.first):
            self.moved = True
        if math.isnan(self.blow_up_lr):
            self._read_blow_up(value, lr, high)
        self._recent.append(value)
        self._update_marks()

    def _read_blow_up(self, value: float, lr: float, high: bool) -> None:
        r"""Note ``lr`` as :attr:`blow_up_lr` if this loss, half as high again as the first (``high``), blew up.

        One batch's loss against the first batch's is not enough: at batches of 4 a regression's single losses spread
        over several times their mean, and one such loss early in the warm-up, at an LR far below any that harms, was
        read as the blow-up and the rescue lowered the cycle a hundredfold (an RMSprop MLP on Friedman #3 ended 18
        points lower than without the guard; a batch-4 regression used up its rescues and stopped). So the loss must
        also stand :data:`NOISE` (4) times the noise of the latest losses above their mean, the noise measured from
        one loss to the next (a rise that builds over several steps is a trend, not noise, and still stands out).
        Among the first :data:`NOISE_MIN` losses there is no noise to measure yet: a high loss there is a blow-up if
        the loss stayed up, the mean of it and the ``NOISE_MIN - 1`` losses after it half as high again as the first
        too and :data:`NOISE` standard errors above it, in the noise of all the losses so far (a BatchNorm CNN at 25x
        its best peak climbs from its second loss on; a first loss that happened to be low, at batches of 4, makes
        every later one look high). Called only until a blow-up is noted: nothing is computed on most steps.
        """
        pending = self._pending_losses
        if pending:
            pending.append(value)
            if len(pending) == NOISE_MIN:
                # the mean of the waiting loss and the next ones against the first loss, in the noise of all so far
                rise = sum(pending) / NOISE_MIN - self.first
                noise = _step_noise([*self._recent, value]) / math.sqrt(NOISE_MIN)
                if rise > 0.5 * abs(self.first if self.first != 0 else 1.0) and rise > NOISE * noise:
                    self.blow_up_lr = self._pending_lr
                pending.clear()
            return
        if not high:
            return
        recent = self._recent
        if len(recent) < NOISE_MIN:
            self._pending_lr = lr
            pending.append(value)
            return
        if value - sum(recent) / len(recent) > NOISE * _step_noise(list(recent)):
            self.blow_up_lr = lr

    def _update_marks(self) -> None:
        if self.count == 0:
            return
        smoothed = self.smoothed
        if math.isnan(self.start) and self.count >= min(5, int(1 / (1 - self.beta))):
            self.start = smoothed
        if not math.isnan(self.start):
            self.highest = max(self.highest, smoothed)
        if self.count >= int(1 / (1 - self.beta)):
            self.best = min(self.best, smoothed)

    def diverged(self) -> str | None:
        """Why the loss counts as diverged now, or None."""
        if self._nonfinite:
            return NONFINITE_REASON
        smoothed, best, start = self.smoothed, self.best, self.start
        rise = smoothed - start
        # half as high again; beyond the batches' noise too, unless twice as high (see `start_margin`)
        half_again = not math.isnan(start) and rise > 0.5 * abs(start if start != 0 else 1.0)
        if half_again and (rise > abs(start) or rise > self.start_margin()):
            return f"its moving average rose to {smoothed:.4g}, half as high again as where it started ({start:.4g})"
        if not math.isfinite(best):
            return None
        # the rise is measured in the best's magnitude, but never in less than a tenth of where training started: a
        # loss that nears or crosses zero (a negative log-likelihood, a reconstruction error near 0) has a best that
        # is no scale at all, and its ordinary noise would be "four times the best"
        tenth = 0.1 * abs(start) if math.isfinite(start) else 0.0
        scale = max(abs(best), tenth)
        if smoothed - best > (self.threshold - 1) * (scale if scale > 0 else 1.0):
            if abs(best) >= tenth:
                over = rise_over_best(best, self.threshold)
                return f"its moving average rose to {smoothed:.4g}, over {over} ({best:.4g})"
            return (
                f"its moving average rose to {smoothed:.4g}, {self.threshold - 1:g} tenths of where training started "
                f"({start:.4g}) above its best ({best:.4g})"
            )
        fallen = start - 0.1 * abs(start)  # a tenth below the start; by more than the batches' noise too
        if smoothed > start and best < fallen and best < fallen - self.start_margin():
            return f"its moving average rose back above where training started ({smoothed:.4g} > {start:.4g})"
        return None

    def start_margin(self) -> float:
        r"""How far the moving average can lie from where training started by the batches' noise alone.

        Where training started is read from the first five losses, the moving average from about ``window``: both carry
        the noise of single batches, and where that noise is large against the loss, two readings of the same loss
        differ by a good part of it. Trained weights fine-tuned at a small peak scatter their batch losses over several
        times their mean (five batches read 0.046 where the mean was 0.081: "half as high again" at an LR that could not
        harm them); at batches of 4 a loss that lay within its noise of the start for its whole run read as having
        fallen a tenth and then "rose back above where it started". So "half as high again" (unless the average is twice
        as high: a blow-up is noisy too) and "fell a tenth" (for "rose back above where training started") also ask for
        :data:`MARGIN` (2) standard errors of the difference between the two readings. The noise is that of the run's
        first ``window`` losses, read from one loss to the next (:func:`_robust_step_noise`), at the LRs of the
        warm-up's start, before most blow-ups of a peak too high can inflate it; after a rollback to the weights
        training started from it is read again, with the start (the losses rolled back may hold the blow-up). A network
        killed early and lying at its start, the stall check's to catch, is judged without it. In a run from scratch
        those losses lie close together and the margin far inside the tenth and the half (the README's guard section
        measures what it changes).
        """
        if len(self._early) < 2:
            return 0.0
        started_over = min(5, int(1 / (1 - self.beta)))  # as `_update_marks` reads the start
        spread = math.sqrt(1 / started_over + (1 - self.beta) / (1 + self.beta))  # the EMA's: (1-β)/(1+β) of a loss
        return MARGIN * spread * _robust_step_noise(self._early)

    def fell(self) -> bool:
        """Whether the moving average has fallen a tenth below where training started (the model learned)."""
        if math.isnan(self.start) or not math.isfinite(self.best):
            return False
        return self.best < self.start - 0.1 * abs(self.start)

    def stalled(self) -> bool:
        """Whether the loss never fell a tenth below where training started and stands at or above it now.

        "Never fell" holds for the moving average's best and for each of the latest ``window // 2`` losses: an
        average that still carries an early spike says nothing about a loss that is falling now.
        """
        if self._nonfinite or math.isnan(self.start) or self.count == 0:
            return False
        start = self.start
        floor = start - 0.1 * abs(start)
        latest = list(self._recent)[-max(1, self.window // 2) :]
        return not self.fell() and self.smoothed >= start and all(loss >= floor for loss in latest)

    def flat(self, within: float = FLAT) -> float | None:
        """The mean of the last ``window`` losses if they lie within ``within`` of it (max - min), else None."""
        if len(self._recent) < (self._recent.maxlen or 0):
            return None
        mean = sum(self._recent) / len(self._recent)
        return mean if max(self._recent) - min(self._recent) <= within * abs(mean) else None

    def collapsed(self) -> bool:
        r"""Whether the loss lies flat after a blow-up: a network that died, predicting the same for every input.

        Its last ``window`` losses lie within :data:`FLAT` (5 %) of their mean, the moving average once stood at
        twice that mean's size or more, and the mean lies no more than half the first loss's size below it (for a
        positive loss, no lower than half the first loss: a dead network predicts about as badly as an untrained one;
        a trained one whose loss settled has fallen further). A network still learning has
        losses that differ from batch to batch by more; one that has not yet started (flat at its first loss, never
        blown up) is the stall check's to judge. A blow-up in the first few steps also raises where training
        "started", so a dead network's flat loss can lie below it: the other criteria do not see it.
        """
        mean = self.flat()
        if mean is None or self._nonfinite:
            return False
        # "no lower" read with signs: a loss that fell through zero (a negative log-likelihood) and settled below it
        # learned (found in a review: its magnitude was read, and a flat -0.85 from a first 1.6 read as dead)
        return self.highest >= 2 * abs(mean) and mean >= self.first - 0.5 * abs(self.first)

    def healthy(self) -> bool:
        r"""Whether the model is learning and clear of divergence, so a snapshot taken now is worth returning to.

        Its loss has fallen a tenth below where training started (a network that collapsed at once, its loss never
        below the start, is no state to return to), its moving average is within 1.5 times its best, and it never
        rose to twice the first loss (weights after such a blow-up may be dead; the snapshot stays from before it).
        """
        if self._nonfinite or self.count == 0 or not math.isfinite(self.best) or math.isnan(self.start):
            return False
        if self.smoothed > self.start - 0.1 * abs(self.start):
            return False
        if self.highest >= 2 * abs(self.first):
            # the loss blew up to twice its first value since: a network that died in the blow-up reads as healthy
            # otherwise (its flat loss can lie below a start that a blow-up in the first steps inflated)
            return False
        return self.smoothed - self.best <= 0.5 * abs(self.best if self.best != 0 else 1.0)

    # ------------------------------------------------------------------------------------------------ acting

    def refresh_due(self, step: int) -> bool:
        """Whether a snapshot is due at ``step``: none yet, or ``refresh_every`` steps since the last one."""
        return self.snapshot is None or step - self.snapshot_step >= self.refresh_every

    def refresh(
        self,
        step: int,
        module: torch.nn.Module,
        optimizer: Any,
        scaler: Any = None,
        also: Sequence[Any] = (),
        copy: bool = True,
    ) -> bool:
        """Take a new snapshot if one is due and the loss is healthy; return whether one was taken.

        ``also``: modules the training steps change beside ``module`` (a weight average), rolled back with it.
        ``copy=False``: no rollback can come (no rescue left): the statistics of now are kept, and no copy.
        """
        if not self.refresh_due(step) or (self.snapshot is not None and not self.healthy()):
            return False
        self.snapshot = recapture(self.snapshot, module, optimizer, scaler, also) if copy else nothing(optimizer)
        self.snapshot_step = step
        self.blow_up_lr = math.nan  # a rollback comes back here: only a blow-up after it tells where the loss diverged
        self._pending_losses.clear()
        # `moved` stays: it is read before any rescue only, where a refresh needs a loss that fell (not stalled), and
        # a resumed run's first snapshot must not forget that its loss moved before the checkpoint
        self._snapshot_stats = (
            self.average, self.count, self.best, self.start, self.highest, self.first, tuple(self._recent),
            tuple(self._early),
        )  # fmt: skip
        return True

    def roll_back(self, keep_in_groups: frozenset[str] = frozenset()) -> int:
        """Restore the snapshot and the statistics of its time; return the step it was taken at.

        ``keep_in_groups``: the param-group entries that keep their values (:data:`SET_BY_THE_CYCLE`).
        """
        assert self.snapshot is not None
        self.snapshot.restore(keep_in_groups)
        assert self._snapshot_stats is not None
        self.average, self.count, self.best, self.start, self.highest, self.first, recent, early = self._snapshot_stats
        self._early = list(early)
        self._recent.clear()
        self._recent.extend(recent)
        self._nonfinite = False
        self.blow_up_lr = math.nan
        self._pending_losses.clear()
        self.moved = False
        self._kept, self._kept_steps, self._kept_lrs, self._kept_scales = [], [], [], []
        return self.snapshot_step

    def state_dict(self) -> dict[str, Any]:
        """The loss statistics and the losses kept since the last check, as plain values.

        A resumed run judges divergence as the interrupted one would (under DDP, with rank 0's losses since the last
        check on every rank: Lightning saves rank 0's callback state).
        """
        kept = self._kept_steps, self._kept, self._kept_lrs, self._kept_scales
        return {
            "average": self.average, "count": float(self.count), "best": self.best, "start": self.start,
            "highest": self.highest, "first": self.first, "recent": list(self._recent), "early": list(self._early),
            "moved": float(self.moved),
            "kept": [[step, float(loss) * scale, lr] for step, loss, lr, scale in zip(*kept, strict=True)],
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the loss statistics of :meth:`state_dict` (a resume); those left out start afresh."""
        self.average = float(state.get("average", 0.0))
        self.count = int(state.get("count", 0))
        self.best = float(state.get("best", math.inf))
        self.start = float(state.get("start", math.nan))
        self.highest = float(state.get("highest", -math.inf))
        self.first = float(state.get("first", math.nan))
        self.moved = bool(state.get("moved", 0.0))
        self._recent.clear()
        self._recent.extend(float(loss) for loss in state.get("recent", []))
        # a checkpoint of an earlier release kept no first losses: the latest stand in for them (read at the LR of the
        # checkpoint's time, so the margin may be wider than the start's own noise until the start is read again)
        self._early = [float(loss) for loss in state.get("early", state.get("recent", []))][: self.window]
        # `[step, loss, lr]`; a development build before state version 3 kept `[step, loss]` (found in a review: its
        # checkpoint's resume crashed): their LR is unknown, and a rescue reads the LR at its check instead
        kept = [[*entry, math.nan][:3] for entry in state.get("kept", [])]
        self._kept_steps = [int(step) for step, _, _ in kept]
        self._kept = [float(value) for _, value, _ in kept]
        self._kept_lrs = [float(lr) for _, _, lr in kept]
        self._kept_scales = [1] * len(kept)


class GuardedCycle:
    r"""The guard at work inside a ``Trainer``: fed after every training batch, it rolls back and lowers the peak.

    Under DDP all ranks decide together: a rescue happens on every rank when any rank saw its loss diverge, and a
    snapshot is refreshed on every rank when all saw it healthy, so the ranks roll back to the same step and stay
    identical. A step the gradient scaler skipped (its loss overflowed in half precision) is not a divergence; thirty
    halvings of the scale, with no check between that found it grown back, are (no loss scale helps any more).

    Args:
        scheduler: the installed one-cycle; a rescue scales its remaining LRs by :func:`lowering`'s factor.
        max_rescues: rescues allowed; one more divergence stops training with an error.
        rescued: rescues already made in this run (a resume), counted against ``max_rescues``.
    """

    def __init__(self, guard: DivergenceGuard, scheduler: Any, max_rescues: int, rescued: int = 0) -> None:
        self.guard = guard
        self.scheduler = scheduler
        self.max_rescues = max_rescues
        self.rescued = rescued
        self._last_step = -1
        self._lr = math.nan  # the LR the next batch runs at (read at the end of the one before)
        self._scale: float | None = None
        # modules the model holds outside its module tree (a momentum encoder in a list), found at the first snapshot
        self._hidden: list[Any] | None = None
        self._halvings = 0
        # the step of the check before the first halving counted, where the skips' span starts (None: unknown)
        self._halvings_since: int | None = 0
        # once the LR has climbed to the peak (and after a rescue, once the re-warm-up is done), a loss that never fell
        # is a network that cannot learn at this LR: the step from which that is checked; once in a run not yet
        # rescued (a slow starter exempted by its latest losses is left to train), and after a rescue at every step
        # until the loss has fallen a tenth below where it started (a peak that blew up once was too high: a network
        # that dips as the LR climbs back and then dies at the loss it started from is caught)
        self._stall_check = int(_warmup_end(scheduler))
        # from the same step on, at every check: a loss lying flat after a blow-up (a network that died)
        self._collapse_from = self._stall_check
        # both count the cycle's own steps; the losses come with the Trainer's `global_step`, which a second `fit`
        # on a Trainer starts above 0: the difference, read at `start` (found in a review: a second fit's stall
        # check ran deep in the warm-up, where it said the LR had climbed to the peak)
        self._steps_before = 0
        # the gradient scaler's scale at the last check, and its halvings since it last grew back; a resume takes a
        # checkpoint's (found in a review: a resumed run read the scale its scaler came back with, already halved for
        # a skipped step, and counted that step's inf loss, which the run it resumed forgave, as a divergence)
        self._loaded_scale: float | None = None

    def state_dict(self) -> dict[str, Any]:
        """The guard's statistics and when it checks next (plain values, for checkpoints).

        With the gradient scaler's scale at its last check and the halvings since: a resume forgives a skipped step as
        the run it resumes would.
        """
        return {
            **self.guard.state_dict(), "stall_check": float(self._stall_check),
            "collapse_from": float(self._collapse_from), "halvings": float(self._halvings),
            **({} if self._halvings_since is None else {"halvings_since": float(self._halvings_since)}),
            **({} if self._scale is None else {"scale": float(self._scale)}),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take what :meth:`state_dict` gave (a resume)."""
        self.guard.load_state_dict(state)
        self._stall_check = int(state.get("stall_check", self._stall_check))
        self._collapse_from = int(state.get("collapse_from", self._collapse_from))
        self._halvings = int(state.get("halvings", 0))
        # unknown where a development build's state left it out: the span is then not measured (found in a review: read
        # from step 0, skips in a row were called spread among healthy steps, and the data blamed)
        since = state.get("halvings_since")
        self._halvings_since = int(since) if since is not None else None if self._halvings else 0
        scale = state.get("scale")
        self._loaded_scale = None if scale is None else float(scale)

    def release(self) -> None:
        """Drop the snapshot's copies: training has ended and nothing will be rolled back; the statistics stay.

        Found trying the package as a new user: the copy of the weights and optimizer state (twice the model's size
        with momentum) stayed on the device after ``fit``, through a ``trainer.test`` or ``predict`` after it.
        """
        self.guard.snapshot = None

    def start(self, trainer: _compat.Trainer, pl_module: Any, optimizer: Any) -> None:
        """Take the first snapshot: the weights training starts from (after the first step, for a lazy module).

        Raises:
            DivergenceError: if those weights are not finite (NaN/inf): no rescue could roll back to anything better.
        """
        step = int(trainer.global_step)
        self._last_step = step
        self._steps_before = step - int(self.scheduler.last_epoch)
        self._lr = float(self.scheduler.optimizer.param_groups[0]["lr"])
        scale = _scale_of(trainer)
        self._scale = self._loaded_scale if self._loaded_scale is not None and scale is not None else scale
        if lazy_modules(pl_module):
            return  # no weights to copy before the first forward: `after_batch` takes the first snapshot
        # found trying the package as a new user: a checkpoint written between a blow-up and the next check held NaN
        # weights, and the resumed run rolled back to them three times before an error that blamed the LR
        if trainer.strategy.reduce_boolean_decision(not _all_finite(pl_module), all=False):
            where = (
                "the checkpoint this run resumes from was written after the loss blew up, before the divergence "
                f"guard's next check (every {self.guard.check_every} steps): resume from an earlier checkpoint"
                if trainer.ckpt_path
                else "check how the model is built or loaded"
            )
            raise DivergenceError(
                "SuperConvergence: the weights this fit starts from are not finite (NaN/inf): a rescue rolls back to "
                f"them and could not help, so training stops before it starts; {where}."
            )
        self._refresh(trainer, step, pl_module, optimizer)

    def after_batch(
        self, trainer: _compat.Trainer, pl_module: Any, optimizer: Any, outputs: Any, step: int
    ) -> tuple[Rescue | None, str | None]:
        r"""Feed the batch's loss (at optimizer-step boundaries only); return a rescue made now, or why it gave up.

        ``step``: the trainer's ``global_step`` now (the caller has read it). Returns ``(rescue, None)`` after a
        rescue, ``(None, reason)`` when the loss diverged with no rescue left (the caller stops training),
        ``(None, None)`` otherwise.
        """
        if step == self._last_step:  # a micro-batch of gradient accumulation: no optimizer step yet
            return None, None
        self._last_step = step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # else `training_step` skipped this batch
            # the LR its batch ran at; Lightning divided the loss by the accumulation of this step: read multiplied back
            self.guard.keep(loss, step, self._lr, max(int(trainer.accumulate_grad_batches), 1))
        self._lr = float(self.scheduler.optimizer.param_groups[0]["lr"])  # stepped already: the next batch's
        if self.guard.snapshot is None:  # a lazy module's weights exist now
            if trainer.strategy.reduce_boolean_decision(not _all_finite(pl_module), all=False):
                # found in a review: snapshotted as they were, NaN weights were all three rescues rolled back to
                raise DivergenceError(
                    "SuperConvergence: the first training step left the weights not finite (NaN/inf). The module's "
                    "lazy layers made its weights in that step, so the divergence guard's first snapshot comes after "
                    "it, and a rescue could roll back to nothing better: training stops. Check the first batch and "
                    "the loss for NaN/inf, or make the lazy layers' weights before `fit` (a forward pass in `setup`)."
                )
            self._refresh(trainer, step, pl_module, optimizer)
        # the same steps on every rank and in a resumed run: the check is a collective under DDP. The cycle's last
        # step is judged too (found trying the package as a new user: a run ending between two checks ended with
        # blown-up weights, its last losses never read)
        if step % self.guard.check_every and not self.cycle_ended():
            return None, None
        reason = self._judge(trainer)
        if reason is None and self.cycle_ended() and self._scaling(trainer) and not _all_finite(pl_module):
            # the skipped steps' losses are not read, and thirty halvings may not come before the end (found in a
            # review: a fit under `16-mixed` whose weights overflowed near its end ended NaN, without an error)
            reason = "the weights are not finite (NaN/inf) at the cycle's last step"
        strategy = trainer.strategy
        if strategy.reduce_boolean_decision(reason is not None, all=False):
            # every rank records the same words: rank 0's (or, where its loss looked fine, that another's did not)
            reason = strategy.broadcast(reason or "another rank's loss diverged", src=0)
            if self.rescued >= self.max_rescues:
                return None, reason
            return self._rescue(trainer, step, reason), None
        if self.guard.refresh_due(step) and strategy.reduce_boolean_decision(self._healthy(pl_module), all=True):
            self._refresh(trainer, step, pl_module, optimizer)
        return None, None

    def cycle_ended(self) -> bool:
        """Whether the step just taken was the cycle's last (the run's, unless it goes on past its cycle)."""
        return bool(self.scheduler.last_epoch == self.scheduler.total_steps)

    def _refresh(self, trainer: _compat.Trainer, step: int, pl_module: Any, optimizer: Any) -> None:
        """Refresh the snapshot if due and healthy: the model, its optimizer and scaler, and any weight average.

        Lightning's ``WeightAveraging`` (``EMAWeightAveraging``) averages the weights of every step into a copy that
        replaces the model when training ends: rolled back with the model, or the blown-up weights stay in it (found
        trying the package as a new user: a rescued run ended at a validation loss of 1e9 against 0.11).
        """
        if self._hidden is None:
            # once per fit: a walk over every module's attributes at each refresh would cost the run more than it spares
            self._hidden = hidden_modules(pl_module)
        # a momentum encoder kept in a list blows up with the model, and is rolled back with it (found reviewing the
        # package: left out, its NaN weights survived the rollback and met the next rescue)
        also = [*_compat.weight_averages(trainer), *self._hidden]
        # with no rescue left the next divergence stops the run: nothing will be rolled back, so nothing is copied
        copy = self.rescued < self.max_rescues
        self.guard.refresh(step, pl_module, optimizer, _compat.grad_scaler(trainer), also, copy)

    def _judge(self, trainer: _compat.Trainer) -> str | None:
        """Read the kept losses and judge them one by one, in order: why the first that counts as diverged does."""
        reason, forgive = self._discount_scaler_skips(trainer)
        if reason is not None:
            return reason
        guard = self.guard
        last = -1
        for step, value, lr in guard.read_kept():
            last = step
            guard.add(value, forgive_nonfinite=forgive, lr=lr)
            reason = guard.diverged()
            # a stall shows only over a whole window of losses: before that, a loss falling as it should (a short
            # run whose peak comes within its first steps) has not had the time to fall a tenth below the start.
            # In a run not yet rescued it counts only where the loss moved since the snapshot, up or down (a network
            # that too high an LR killed spiked, or fell and came back, first; a task whose loss lies flat for a while
            # before it falls, a plateau, never left its first loss's neighbourhood)
            if reason is None and 0 <= self._stall_check <= step - self._steps_before and guard.count >= guard.window:
                if guard.stalled() and (self.rescued or guard.moved):
                    reason = (
                        f"its loss ({guard.smoothed:.4g}) never fell a tenth below where training started "
                        f"({guard.start:.4g}) by the time the LR had climbed to the cycle's peak, and stands above it"
                    )
                elif not self.rescued or guard.fell():
                    self._stall_check = -1  # once in a run not yet rescued; after a rescue, until the loss has fallen
            if reason is not None:
                return reason
        # judged once per check, on the losses up to its last: a flat line needs a whole window to show
        if 0 <= self._collapse_from <= last - self._steps_before and guard.collapsed():
            return (
                f"its last {guard.window} losses lie flat (within {FLAT:.0%} of {guard.flat():.4g}) after its moving "
                f"average had stood at {guard.highest:.4g}: a network that died, predicting the same for every input"
            )
        return None

    def _healthy(self, pl_module: Any) -> bool:
        """Whether a snapshot taken now is worth returning to (:meth:`DivergenceGuard.healthy`), its weights finite.

        The losses judged are those of the weights before this step's update, which no loss has judged yet: a step
        whose loss was finite can leave the weights NaN (a NaN gradient, as the ``sqrt`` of a zero distance gives).
        Their finiteness is checked too, one device sync per refresh (found in a review: snapshots of NaN weights,
        rolled back to three times, under a gradient scaler whose skipped losses go unread, and without one).
        """
        return self.guard.healthy() and _all_finite(pl_module)

    @staticmethod
    def _scaling(trainer: _compat.Trainer) -> bool:
        """Whether a gradient scaler that is on skips the steps whose gradients are NaN/inf."""
        scaler = _compat.grad_scaler(trainer)
        return scaler is not None and bool(scaler.is_enabled())

    def _discount_scaler_skips(self, trainer: _compat.Trainer) -> tuple[str | None, bool]:
        """Why the scaler's skips count as a divergence (thirty halvings of its scale), and whether to forgive.

        Under a gradient scaler that is on, every NaN/inf loss since the last check is forgiven: the scaler steps no
        weight with NaN/inf gradients, it skips the step and halves its scale. One that skips at every scale is a
        divergence: thirty halvings with no check between that found the scale grown back, whether the steps skipped
        came in a row (weights gone NaN, or an LR too high for half precision) or among others (a NaN batch every few
        steps, more often than the scaler grows its scale: it falls to nothing and training stops as surely; found in
        a review, where a scale unchanged between two checks had restarted the count, and one skip every 12 steps
        sank it to 5e-20 unseen). Forgiving only where the scale came out lower than at the last check read a skip as a
        divergence where the scale had also grown in the same window (found in a review).
        """
        if not self._scaling(trainer):
            return None, False
        scale = _scale_of(trainer)
        assert scale is not None
        previous, self._scale = self._scale, scale
        step = int(trainer.global_step)
        if previous is not None and scale < previous:
            if not self._halvings:
                self._halvings_since = step - self.guard.check_every
            self._halvings += round(math.log2(previous / scale))
        elif previous is not None and scale > previous:
            self._halvings = 0
        skipped = self._halvings
        if skipped < 30:
            return None, True
        fell = f"(it fell {2.0**skipped:.3g}-fold, no check between finding it grown back)"
        if self._halvings_since is None:
            return f"the gradient scaler skipped {skipped} steps for NaN/inf gradients {fell}", True
        span = max(step - self._halvings_since, 1)
        if skipped >= span:
            return f"the gradient scaler skipped {skipped} steps in a row (NaN/inf gradients at every scale)", True
        # found in a review: called "in a row", a NaN batch every fourth step read as weights gone bad
        skips = f"{skipped} of the last {span} steps, for NaN/inf gradients {fell}"
        if 2 * skipped <= span:
            return f"{SPREAD_SKIPS_REASON}: {skips}", True
        return f"the gradient scaler skipped {skips}", True

    def _rescue(self, trainer: _compat.Trainer, step: int, reason: str) -> Rescue:
        groups = self.scheduler.optimizer.param_groups
        # the cycle's own values stay as they are now (earlier rescues' lowered peaks included), and the balancer's
        # weight decay; the weights, buffers and optimizer state go back, with what else the groups hold (found trying
        # the package as a new user: pytorch_optimizer's optimizers count their steps in `group["step"]`, and
        # D-Adaptation keeps its step size `d` there, which the rollback left as the blow-up had made them)
        assert self.guard.snapshot is not None
        lr_then = float(self.guard.snapshot.param_groups[0]["lr"])
        lr_seen = float(groups[0]["lr"])
        # the loss diverged where it first blew up since the snapshot, if it did; else it is seen now (a slow rise).
        # Ranks see different batches: all take the lowest LR any rank saw a blow-up at, so their cycles stay alike
        blow_up_lr = _lowest_on_any_rank(trainer, self.guard.blow_up_lr)
        diverged_at = blow_up_lr if math.isfinite(blow_up_lr) and blow_up_lr > 0 else lr_seen
        restored = self.guard.roll_back(SET_BY_THE_CYCLE)
        old_peak = float(groups[0].get("max_lr", groups[0]["lr"]))
        before_peak = self.scheduler.last_epoch < _warmup_end(self.scheduler)
        # after the peak the highest LR ahead is the cycle's own LR now: above the LR seen while an earlier rescue's
        # re-warm-up is still climbing back, and that own LR is what the lowering scales
        rewarm = float(self.scheduler.rewarm_factor())
        factor = lowering(diverged_at, old_peak if before_peak else lr_seen / rewarm if rewarm > 0 else lr_seen)
        scale_peak(self.scheduler, factor)
        # the lowered cycle's own LR now (an earlier re-warm-up still climbing left out: this one replaces it)
        own_now = float(groups[0]["lr"]) / rewarm if rewarm > 0 else float(groups[0]["lr"])
        # the restored weights were trained at `lr_then`: climb back from there over as many steps as it took
        self.scheduler.rewarm(step - restored, lr_then / own_now if own_now > 0 else 1.0)
        self._stall_check = max(int(_warmup_end(self.scheduler)), step - self._steps_before + (step - restored))
        self._collapse_from = self._stall_check
        self.rescued += 1
        if self.rescued >= self.max_rescues:
            # the next divergence stops the run: nothing will be rolled back, so the copy goes (found in a review: it
            # was held until the next healthy refresh, which may never come)
            self.guard.snapshot = nothing(self.scheduler.optimizer)
        self._lr = float(groups[0]["lr"])
        self._scale, self._halvings = _scale_of(trainer), 0  # the restored scaler's
        return Rescue(step, restored, old_peak, old_peak * factor, reason)


def lowering(diverged_at: float, highest_ahead: float) -> float:
    r"""The factor a rescue scales the rest of the cycle by: the highest LR ahead becomes a quarter of ``diverged_at``.

    ``diverged_at`` is the LR the loss diverged at: that of the first blow-up since the snapshot (a NaN/inf loss or one
    half as high again as the first loss, above the noise of those before it) where there was one, else that of the
    check that saw it (a slow rise shows at the check; a spike shows when it happens, and a loss that died after a
    spike is seen only steps later, at a higher LR in the warm-up or at the peak). ``highest_ahead`` is the cycle's own
    peak in the warm-up, its own LR now (a re-warm-up left out) at or after it. A quarter because an LR that blew up
    once is likely several times too high, and too low costs little while too high costs the run: the reading of the
    range test without trials (``trial_steps=0``: a quarter of the LR where the loss rose back); never more than a
    quarter of the highest LR ahead. On a recurrent model whose best peak lies about at the LR where its loss rose, a
    quarter is too low (the README's guard section measures what that costs).

    Example::

        >>> lowering(1.0, 1.0), lowering(0.5, 1.0), lowering(2.0, 1.0)
        (0.25, 0.125, 0.25)
    """
    if highest_ahead <= 0 or not math.isfinite(diverged_at) or diverged_at <= 0:
        return LOWER_BY
    return LOWER_BY * min(1.0, diverged_at / highest_ahead)


def _step_noise(losses: list[float]) -> float:
    """The spread of one loss, read from its changes from one loss to the next (a trend is not noise).

    Half the mean squared difference of consecutive losses is the variance of white noise around any slowly moving
    level (von Neumann's estimator); the spread of the losses themselves would count a rise over several steps in.
    Changes whose square no float holds (a float64 loss past 1e154, found in a review: the fit stopped with Python's
    ``OverflowError`` instead of a rescue) have no spread to measure: infinite, so nothing stands out of it.
    """
    try:
        steps = sum((b - a) ** 2 for a, b in zip(losses, losses[1:], strict=False))
    except OverflowError:
        return math.inf
    return math.sqrt(steps / (2 * (len(losses) - 1)))


def _robust_step_noise(losses: list[float]) -> float:
    """The spread of one loss, read from the median change from one loss to the next (a spike among them is not noise).

    For white noise of spread σ the change from one loss to the next has spread σ·√2, and the median of its size is
    0.6745 of that. A spike moves two changes only, which the median passes over: a network that learned fast and spiked
    once in its first 20 steps, then died, had its noise read nine times too high by :func:`_step_noise`, and the
    margin hid the collapse (the pick zoo's LeNet at 1.4x its best peak ended at chance).
    """
    changes = [abs(b - a) for a, b in zip(losses, losses[1:], strict=False)]
    return statistics.median(changes) / (0.6745 * math.sqrt(2)) if changes else 0.0


def _lowest_on_any_rank(trainer: _compat.Trainer, value: float) -> float:
    """The lowest finite positive ``value`` over the ranks, NaN where no rank has one (a collective: call on all)."""
    if trainer.world_size <= 1:
        return value
    mine = value if math.isfinite(value) and value > 0 else math.inf
    strategy = trainer.strategy
    lowest = float(strategy.all_gather(torch.tensor(mine, dtype=torch.float64, device=strategy.root_device)).min())
    return lowest if math.isfinite(lowest) else math.nan


def _all_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter of ``module`` (each rank's own shard) is finite; one device sync.

    A frozen one (``requires_grad=False``) may be infinite, not NaN: no step moves it, and a model may keep a constant
    there (found in a review: an additive mask of ``-inf`` held as a frozen parameter, and a healthy model was refused
    before its first step); a NaN weight it uses makes every loss NaN (a frozen backbone loaded from a checkpoint
    written after a blow-up, found in a review of that change).
    """
    with torch.no_grad():
        # a lazy layer not made yet (one only validation uses) has no values to read
        made = [p for p in module.parameters() if not torch.nn.parameter.is_lazy(p)]
        locals_ = [(p.to_local() if hasattr(p, "to_local") else p, p.requires_grad) for p in made]
        flags = [torch.isfinite(t).all() if trains else ~torch.isnan(t).any() for t, trains in locals_ if t.numel()]
        return not flags or bool(torch.stack([flag.to(flags[0].device) for flag in flags]).all())


def _scale_of(trainer: _compat.Trainer) -> float | None:
    """The gradient scaler's scale now, or None without a scaler."""
    scaler = _compat.grad_scaler(trainer)
    return None if scaler is None else float(scaler.get_scale())


def _warmup_end(scheduler: Any) -> float:
    """The step at which the one-cycle reaches its peak (the end of its first phase)."""
    return float(getattr(scheduler, "peak_step", 0.0))
