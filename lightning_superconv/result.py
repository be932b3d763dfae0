r"""The record of one LR range test: what was swept, what the loss did, what was picked and why the test stopped."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RangeTestResult:
    r"""The outcome of a range test, in plain values (it goes into checkpoints as it is).

    Attributes:
        lrs: the LR of the first param group at each recorded step.
        losses: the raw training loss of each recorded step (mean over accumulated micro-batches and over ranks).
        smoothed: the zero-lag smoothed loss the pick was read from.
        max_lr: the picked maximum LR of the cycle (first param group).
        pick_index: the step the reading anchors at: where the smoothed loss rose back above its start (the
            candidate peaks are fractions of the LR there).
        pick_reason: the rule's explanation of the pick.
        stop_reason: why the sweep ended: ``"completed"`` (it reached its last LR), ``"rose"`` (past ``lr_range[1]``,
            the loss rose back above its start), ``"diverged"`` (the smoothed loss rose past the divergence
            threshold), ``"non-finite"`` (a NaN/inf loss), ``"scaler-skips"`` (mixed precision skipped too many steps
            in a row) or ``"data-exhausted"`` (the train dataloader yielded nothing more, even after a restart).
        skipped_steps: steps the gradient scaler skipped (overflow); they were retried at the same LR.
        skipped_batches: batches for which ``training_step`` returned None; the next batch took their LR.
        trials: the candidate peaks tried, each with its trial's held-out loss (``inf``: it diverged).
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    max_lr: float
    pick_index: int
    pick_reason: str
    stop_reason: str
    skipped_steps: int = 0
    skipped_batches: int = 0
    trials: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, so checkpoints load with ``torch.load(weights_only=True)``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> RangeTestResult:
        """Rebuild from :meth:`to_dict`, tolerating keys another version wrote (0.1.0 wrote an unused ``extra``)."""
        known = {name: state[name] for name in cls.__dataclass_fields__ if name in state}
        return cls(**known)

    def plot(self, ax: Any = None, show_pick: bool = True) -> Any:
        r"""Draw loss against LR (log axis) with the reading marked; returns the matplotlib ``Figure``.

        Args:
            ax: an existing matplotlib ``Axes`` to draw on; a new figure is made when None.
            show_pick: mark where the loss rose back, the peaks tried (their held-out losses are in ``pick_reason``)
                and the picked maximum LR.

        Raises:
            ModuleNotFoundError: if matplotlib is not installed (``pip install lightning-superconv[examples]``).
        """
        try:
            # pyplot at the user's own backend (found trying the package as a new user: switching it to Agg here left
            # `plt.show()` showing nothing); the callback's TensorBoard figure is drawn outside pyplot
            import matplotlib.pyplot as plt
        except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
            raise ModuleNotFoundError("`RangeTestResult.plot()` needs matplotlib: `pip install matplotlib`") from err
        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
        else:
            fig = ax.figure
        ax.plot(self.lrs, self.losses, color="0.75", linewidth=1, label="loss")
        ax.plot(self.lrs, self.smoothed, color="C0", linewidth=2, label="smoothed")
        if show_pick:
            if 0 <= self.pick_index < len(self.lrs):
                rise = self.lrs[self.pick_index]
                ax.axvline(rise, color="0.45", linestyle="-.", linewidth=1, label=f"loss rose back: {rise:.3g}")
            for order, trial in enumerate(sorted(self.trials, key=lambda t: t["peak"])):
                label = "peaks tried" if order == 0 else None
                ax.axvline(trial["peak"], color="C2", linestyle=":", linewidth=1.5, label=label)
            ax.axvline(self.max_lr, color="C3", linestyle="--", label=f"max_lr = {self.max_lr:.3g}")
        ax.set_xscale("log")
        finite = [loss for loss in self.smoothed if math.isfinite(loss)]
        if finite:
            low, high = min(finite), max(finite[: max(self.pick_index + 1, 1)] + finite[:1])
            pad = 0.1 * (high - low) if high > low else 1.0
            ax.set_ylim(low - pad, high + 3 * pad)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(f"LR range test (stopped: {self.stop_reason})")
        ax.legend()
        return fig
