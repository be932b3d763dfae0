r"""Writing the range-test curve, its figure and the per-step schedule values to the trainer's loggers.

Range-test values are written under their own names (``lr_range_test/...``) with the range-test step as the x-axis, so
no logger, dashboard or ``ModelCheckpoint(monitor=...)`` can mistake them for training metrics.
"""

from __future__ import annotations

from typing import Any

from lightning_superconv.result import RangeTestResult

RANGE_TEST_PREFIX = "lr_range_test"
SCHEDULE_PREFIX = "superconv"


def log_range_test(trainer: Any, result: RangeTestResult) -> None:
    """Send the curve (raw and smoothed loss, LR per step), the pick and, where possible, a figure to every logger."""
    if not trainer.loggers:
        return
    for logger in trainer.loggers:
        for step, (lr, loss, smooth) in enumerate(zip(result.lrs, result.losses, result.smoothed, strict=True)):
            logger.log_metrics(
                {
                    f"{RANGE_TEST_PREFIX}/lr": lr,
                    f"{RANGE_TEST_PREFIX}/loss": loss,
                    f"{RANGE_TEST_PREFIX}/loss_smoothed": smooth,
                },
                step=step,
            )
        logger.log_metrics({f"{RANGE_TEST_PREFIX}/max_lr": result.max_lr}, step=result.pick_index)
    if trainer.is_global_zero:
        _add_figure(trainer, result)
    for logger in trainer.loggers:
        logger.save()


def _add_figure(trainer: Any, result: RangeTestResult) -> None:
    """Add the loss-vs-LR figure to loggers that take figures (TensorBoard), when matplotlib is installed."""
    try:
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        add_figure = getattr(experiment, "add_figure", None)
        if add_figure is None:
            continue
        fig = result.plot()
        add_figure(f"{RANGE_TEST_PREFIX}/curve", fig, global_step=0, close=True)
        plt.close(fig)


def schedule_values(optimizer: Any) -> dict[str, float]:
    """LR, momentum (or Adam's ``beta1``) and weight decay of the first param group, as logged per training step."""
    group = optimizer.param_groups[0]
    values = {f"{SCHEDULE_PREFIX}/lr": float(group["lr"])}
    if "momentum" in group:
        values[f"{SCHEDULE_PREFIX}/momentum"] = float(group["momentum"])
    elif "betas" in group:
        values[f"{SCHEDULE_PREFIX}/momentum"] = float(group["betas"][0])
    if "weight_decay" in group:
        values[f"{SCHEDULE_PREFIX}/weight_decay"] = float(group["weight_decay"])
    return values


def log_schedule(trainer: Any, optimizer: Any) -> None:
    """Log the schedule at the trainer's logging cadence (``log_every_n_steps``), as ``LearningRateMonitor`` does."""
    if not trainer.loggers or not trainer._logger_connector.should_update_logs:
        return
    step = trainer.fit_loop.epoch_loop._batches_that_stepped
    values = schedule_values(optimizer)
    for logger in trainer.loggers:
        logger.log_metrics(values, step=step)
