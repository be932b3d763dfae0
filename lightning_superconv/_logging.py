r"""Writing the range-test curve, its figure and the per-step schedule values to the trainer's loggers.

Range-test values are written under their own names (``lr_range_test/...``) with the range-test step as the x-axis, so
no logger, dashboard or ``ModelCheckpoint(monitor=...)`` can mistake them for training metrics.
"""

from __future__ import annotations

from typing import Any, cast

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary

from lightning_superconv import _compat
from lightning_superconv.param_groups import read_momentum
from lightning_superconv.result import RangeTestResult

RANGE_TEST_PREFIX = "lr_range_test"
SCHEDULE_PREFIX = "superconv"
_LR, _MOMENTUM, _WEIGHT_DECAY = (f"{SCHEDULE_PREFIX}/{name}" for name in ("lr", "momentum", "weight_decay"))


def log_range_test(trainer: _compat.Trainer, result: RangeTestResult, first_step: int = 0) -> int:
    r"""Send the curve (raw and smoothed loss, LR per step), the trials, the pick and a figure to every logger.

    The curve is logged at steps ``first_step``, ``first_step + 1``, ...; the trials one step apart from ``first_step``
    in the order they were tried; the pick at the sweep step whose LR it is (the last that did not pass it); the figure
    at ``first_step``. One ``log_metrics`` call per step, in increasing steps: a logger that keeps one step for all
    its keys (W&B's own ``step``) drops a record whose step is below one it has seen (found trying the package as a new
    user: the pick and the trials, written after the curve, were lost). A second ``fit`` on the same Trainer runs a new
    range test into the same loggers: starting it where the first ended keeps the two curves apart (both sweeps were
    drawn as one line going back and forth). Returns the first step after those this test used.
    """
    if not trainer.loggers:
        return first_step
    records = range_test_records(result, first_step)
    for logger in trainer.loggers:
        for step, values in records.items():
            logger.log_metrics(values, step=step)
    if trainer.is_global_zero:
        _add_figure(trainer, result, first_step)
    for logger in trainer.loggers:
        if _compat.is_tensorboard_logger(logger):
            # its `save` writes `hparams.yaml` once, if absent: before Lightning logs the hyperparameters (after
            # `on_fit_start`) it wrote `{}` for good (found in a review)
            cast(Any, logger).experiment.flush()
        else:
            logger.save()
    return first_step + max(len(result.lrs), len(result.trials), 1)


def range_test_records(result: RangeTestResult, first_step: int = 0) -> dict[int, dict[str, float]]:
    """What :func:`log_range_test` writes, step by step in increasing order: the curve, the pick and the trials.

    >>> result = RangeTestResult([0.1, 0.2], [2.0, 1.5], [2.0, 1.8], 0.15, 1, "", "completed",
    ...                          trials=[{"peak": 0.15, "held_out_loss": 1.2}])
    >>> for step, values in range_test_records(result, first_step=5).items():
    ...     print(step, [key.split("/")[1] for key in values])
    5 ['lr', 'loss', 'loss_smoothed', 'max_lr', 'trial_peak', 'trial_loss']
    6 ['lr', 'loss', 'loss_smoothed']
    """
    records: dict[int, dict[str, float]] = {}
    for step, (lr, loss, smooth) in enumerate(zip(result.lrs, result.losses, result.smoothed, strict=True)):
        records[first_step + step] = {
            f"{RANGE_TEST_PREFIX}/lr": lr,
            f"{RANGE_TEST_PREFIX}/loss": loss,
            f"{RANGE_TEST_PREFIX}/loss_smoothed": smooth,
        }
    records.setdefault(first_step + swept_at(result), {})[f"{RANGE_TEST_PREFIX}/max_lr"] = result.max_lr
    for order, trial in enumerate(result.trials):  # one point per trial, in the order they were tried
        records.setdefault(first_step + order, {}).update(
            {
                f"{RANGE_TEST_PREFIX}/trial_peak": trial["peak"],
                f"{RANGE_TEST_PREFIX}/trial_loss": trial["held_out_loss"],
            }
        )
    return dict(sorted(records.items()))


def swept_at(result: RangeTestResult) -> int:
    """The sweep step whose LR is the pick: the last whose LR did not pass it (the first step if all did)."""
    at = 0
    for step, lr in enumerate(result.lrs):
        if lr <= result.max_lr:
            at = step
        else:
            break
    return at


def range_test_figure(result: RangeTestResult, figure: Any) -> Any:
    """The loss-vs-LR figure, drawn on a ``figure`` of its own (matplotlib's ``Figure`` class), outside pyplot.

    Outside pyplot, the user's matplotlib backend and pyplot's figures are left alone. Laid out to fit its labels
    (found trying the package as a new user: the x-axis label was cut off at the figure's bottom edge).
    """
    fig = figure(figsize=(6, 4), layout="constrained")
    result.plot(ax=fig.subplots())
    return fig


def _add_figure(trainer: _compat.Trainer, result: RangeTestResult, step: int) -> None:
    """Add the loss-vs-LR figure to loggers that take figures (TensorBoard), when matplotlib is installed."""
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        return
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        add_figure = getattr(experiment, "add_figure", None)
        if add_figure is None:
            continue
        fig = range_test_figure(result, Figure)
        # under the logger's prefix, as its scalars (found in a review: `TensorBoardLogger(prefix=...)`)
        prefix = getattr(logger, "_prefix", "")
        tag = f"{prefix}{getattr(logger, 'LOGGER_JOIN_CHAR', '-')}{RANGE_TEST_PREFIX}" if prefix else RANGE_TEST_PREFIX
        add_figure(f"{tag}/curve", fig, global_step=step, close=False)


def schedule_values(optimizer: Any, all_groups: bool = False) -> dict[str, float]:
    r"""LR, momentum (or Adam's ``beta1``) and weight decay of the first param group, as logged per training step.

    With ``all_groups``, the weight decay of every further group too (``superconv/weight_decay/pg1``...).
    """
    groups = optimizer.param_groups
    first = groups[0]
    values = {_LR: float(first["lr"])}
    momentum = read_momentum(first)
    if momentum is not None:
        values[_MOMENTUM] = momentum
    if "weight_decay" in first:
        values[_WEIGHT_DECAY] = float(first["weight_decay"])
    if all_groups:
        for index in range(1, len(groups)):
            values[f"{SCHEDULE_PREFIX}/weight_decay/pg{index}"] = float(groups[index].get("weight_decay", 0.0))
    return values


class ScheduleLogger:
    r"""Logs the schedule at the trainer's logging cadence (``log_every_n_steps``), as ``LearningRateMonitor`` does.

    On logging steps, one call per logger: ``log_metrics``, or for TensorBoard one event that holds all the step's
    scalars (the same tags and values ``log_metrics`` would write, in a third of the time for three). That event is
    built once and refilled at each logging step (building it costs more than writing it). On other steps it only
    asks whether this step logs. The loggers are looked up once, when the callback installs it at fit start. One row
    per step: under gradient accumulation the batch hooks run at each micro-batch, at one step (Lightning's
    ``LearningRateMonitor`` logs each step's values that many times).

    Args:
        all_groups: log the weight decay of every param group, not only the first.
    """

    def __init__(self, trainer: _compat.Trainer, optimizer: Any, all_groups: bool = False) -> None:
        self.optimizer = optimizer
        self.all_groups = all_groups
        loggers: list[Any] = list(trainer.loggers)
        # TensorBoard writes only on global rank 0 (its `log_metrics` is `rank_zero_only`); elsewhere it is skipped
        writers = [_compat.tensorboard_event_writer(lg) if trainer.is_global_zero else None for lg in loggers]
        self.event_writers = [w for w in writers if w is not None]
        self.loggers = [lg for lg, w in zip(loggers, writers, strict=True) if w is None]
        self._event = Event()
        self._tags: tuple[str, ...] = ()
        self._slots: list[Any] = []  # the event's summary values, one per tag
        # the step last logged: under gradient accumulation the batch hooks run once per micro-batch, at one step
        self._logged: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        """A copy writes nowhere: the callback holding it is copied by sweep libraries and ``ddp_spawn``.

        TensorBoard's writer holds a thread lock, which neither ``pickle`` nor ``deepcopy`` can take (found trying the
        package as a new user: after a fit with Lightning's default logger, the callbacks could not be copied, and a
        second fit under ``ddp_spawn`` failed). Each fit builds its own logger, so the copy's is never used.
        """
        state = self.__dict__.copy()
        state.update(optimizer=None, event_writers=[], loggers=[], _event=Event(), _tags=(), _slots=[])
        return state

    def log(self, trainer: _compat.Trainer) -> None:
        """Send the values to every logger if this step is a logging step."""
        if not (self.loggers or self.event_writers):
            return
        step = _compat.training_logging_step(trainer)
        if step is None or step == self._logged:
            return
        self._logged = step
        values = schedule_values(self.optimizer, self.all_groups or len(self.optimizer.param_groups) > 1)
        for logger in self.loggers:
            logger.log_metrics(values, step=step)
        if self.event_writers:
            event = self._event_of(values)
            for writer in self.event_writers:
                writer.add_event(event, step=step)  # stamps the step and the wall time, and writes it out now

    def _event_of(self, values: dict[str, float]) -> Event:
        """The one TensorBoard event of this step's scalars: the event built for these tags, holding these values."""
        tags = tuple(values)
        if tags != self._tags:  # the first logging step, or a param group was added
            self._event = Event(summary=Summary(value=[Summary.Value(tag=tag) for tag in tags]))
            self._tags = tags
            self._slots = list(self._event.summary.value)
        for slot, value in zip(self._slots, values.values(), strict=True):
            slot.simple_value = value
        return self._event
