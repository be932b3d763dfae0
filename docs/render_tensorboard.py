"""Render what TensorBoard shows for a run of the Fashion-MNIST example into one PNG (the README's picture).

Reads the event files directly (no TensorBoard server, no browser): the range-test figure the callback logged
(``lr_range_test/curve``), the range-test loss per range-test step (``lr_range_test/loss``) and the per-step
scalars ``superconv/lr``, ``superconv/momentum``, ``superconv/weight_decay`` and ``train_loss``::

    python docs/render_tensorboard.py lightning_logs/fashion_mnist/version_0 docs/tensorboard.png
"""

from __future__ import annotations

import argparse
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

PANELS = [
    (1, "superconv/lr", "superconv/lr (one cycle)", "log"),
    (2, "superconv/momentum", "superconv/momentum", "linear"),
    (3, "lr_range_test/loss", "lr_range_test/loss (x: range-test step)", "linear"),
    (4, "superconv/weight_decay", "superconv/weight_decay (balanced)", "linear"),
    (5, "train_loss", "train_loss", "linear"),
]


def render(log_dir: str, out: str) -> None:
    """Write the range-test figure and the per-step schedule of the run in ``log_dir`` to the PNG ``out``."""
    events = EventAccumulator(log_dir, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    fig, axes = plt.subplots(2, 3, figsize=(14, 7), layout="constrained")
    axes = axes.flatten()
    image = events.Images("lr_range_test/curve")[-1]
    axes[0].imshow(mpimg.imread(io.BytesIO(image.encoded_image_string), format="png"))
    axes[0].set_axis_off()
    axes[0].set_title("IMAGES: lr_range_test/curve", fontsize=10, loc="left")
    tags = set(events.Tags()["scalars"])
    for index, tag, title, scale in PANELS:
        ax = axes[index]
        if tag in tags:
            scalars = events.Scalars(tag)
            ax.plot([s.step for s in scalars], [s.value for s in scalars], color="#ff7043", linewidth=1.2)
        ax.set_yscale(scale)
        ax.set_title(f"SCALARS: {title}", fontsize=10, loc="left")
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> None:
    """Command line: a run's folder and the PNG to write."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log_dir", help="a run's folder, e.g. lightning_logs/fashion_mnist/version_0")
    parser.add_argument("out", help="the PNG to write")
    args = parser.parse_args()
    render(args.log_dir, args.out)


if __name__ == "__main__":
    main()
