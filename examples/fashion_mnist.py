"""Super-convergence on Fashion-MNIST: a small ResNet, both callbacks, about 20 minutes on two CPU cores.

The model keeps the untuned starting values a user would write (SGD at 0.01, momentum 0.9, weight decay 5e-4); the
callbacks decide the rest: ``SuperConvergence`` runs the LR range test and installs the one cycle, and
``WeightDecayBalancer`` moves the weight decay, only as far as needed, so that decay acts on a timescale between one
epoch and the whole run. Nothing is chosen on the test set: the validation split (5,000 images) is carved from the
training images, and the test set is evaluated once, at the end.

    python examples/fashion_mnist.py                                # defaults: the README's main job
    python examples/fashion_mnist.py --epochs 2 --train-size 5000   # a quick look

The data is found offline first: ``--data-dir``, then Debian's package (``apt-get install dataset-fashion-mnist``),
then torchvision's download. TensorBoard logs go to the folder printed at the start.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from examples.fashion_mnist_data import FashionMNISTDataModule  # noqa: E402
from lightning_superconv import SuperConvergence, WeightDecayBalancer  # noqa: E402


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def resnet(width: int = 24) -> nn.Sequential:
    """A ResNet-9-style network for 28x28 images: prep, three stages (two with residual blocks), global max pool."""
    return nn.Sequential(
        conv_bn(1, width),
        conv_bn(width, 2 * width, pool=True),  # 14x14
        Residual(2 * width),
        conv_bn(2 * width, 4 * width, pool=True),  # 7x7
        conv_bn(4 * width, 8 * width, pool=True),  # 3x3
        Residual(8 * width),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(8 * width, 10),
    )


class FashionClassifier(L.LightningModule):
    """Cross-entropy with a little label smoothing; plain SGD at a conventional, untuned starting point.

    Args:
        width: channels of the first stage (the network has 8x that at the end).
        lr: SGD's LR as a user would configure it; ``SuperConvergence`` replaces the schedule.
        momentum: SGD's momentum (the cycle moves it between 0.85 and 0.95).
        weight_decay: SGD's weight decay; ``WeightDecayBalancer`` may change it.
        label_smoothing: of the training loss.
        flip_tta: evaluate on each image and its mirror image and average the logits.
    """

    def __init__(
        self,
        width: int = 24,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        label_smoothing: float = 0.1,
        flip_tta: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # channels-last is oneDNN's native layout: about 1.5x faster convolutions on CPU
        self.net = resnet(width).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y, label_smoothing=self.hparams.label_smoothing)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        if self.hparams.flip_tta:
            logits = (logits + self(x.flip(3))) / 2
        self.log(f"{stage}_loss", nn.functional.cross_entropy(logits, y), prog_bar=True)
        self.log(f"{stage}_acc", (logits.argmax(1) == y).float().mean() * 100, prog_bar=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)


def default_precision(accelerator: str = "cpu") -> str:
    """Mixed precision where the hardware multiplies low-precision numbers fast, else full precision.

    On a CPU with AMX (Intel Sapphire Rapids and later) bf16 autocast trains this network about 2x faster than fp32;
    on CPUs without it, bf16 is emulated and slower.
    """
    if accelerator != "cpu" and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return "bf16-mixed" if amx() else "32-true"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with the four *-ubyte.gz files")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=24, help="channels of the first stage")
    parser.add_argument("--train-size", type=int, default=None, help="train on a subset (default: all 55,000)")
    parser.add_argument("--val-size", type=int, default=5000, help="training images held out for validation")
    parser.add_argument("--log-dir", default="lightning_logs", help="TensorBoard logs go here")
    parser.add_argument("--log-every-n-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu, ... (default: a GPU if there is one)")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on GPUs and AMX CPUs, else 32-true")
    parser.add_argument("--range-test-steps", type=int, default=100, help="sweep steps to lr_range[1] (+ up to half)")
    parser.add_argument(
        "--trial-steps",
        type=int,
        default=None,
        help="steps of each peak trial (default: a third of the run, 100 to 300; 0: none)",
    )
    parser.add_argument("--no-balancer", action="store_true", help="leave the weight decay as configured")
    parser.add_argument("--no-test", action="store_true", help="skip the test set (when choosing settings)")
    parser.add_argument("--no-progress-bar", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, validate once and test once; returns the accuracies, the wall time and the trainer."""
    args = parse_args(argv)
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, verbose=False)
    dm = FashionMNISTDataModule(args.data_dir, args.batch_size, args.train_size, args.val_size, augment=True)
    model = FashionClassifier(width=args.width)
    logger = TensorBoardLogger(args.log_dir, name="fashion_mnist")
    print(f"TensorBoard logs: {logger.log_dir}  (view with: tensorboard --logdir {args.log_dir})")
    callbacks: list[L.Callback] = [SuperConvergence(num_steps=args.range_test_steps, trial_steps=args.trial_steps)]
    if not args.no_balancer:
        callbacks.append(WeightDecayBalancer())
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision or default_precision(args.accelerator),
        max_epochs=args.epochs,
        callbacks=callbacks,
        logger=logger,
        log_every_n_steps=args.log_every_n_steps,
        check_val_every_n_epoch=args.epochs,  # validate once, at the end: per-epoch validation would decide nothing
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=not args.no_progress_bar,
    )
    trainer.fit(model, datamodule=dm)
    weight_decay = trainer.optimizers[0].param_groups[0]["weight_decay"]
    out: dict[str, Any] = {"val_acc": float(trainer.callback_metrics["val_acc"]), "trainer": trainer}
    if not args.no_test:
        out["test_acc"] = float(trainer.test(model, datamodule=dm, verbose=False)[0]["test_acc"])
    out["seconds"] = seconds = time.perf_counter() - start
    sc = callbacks[0]
    acc = (
        f"test accuracy {out['test_acc']:.2f} %" if "test_acc" in out else f"validation accuracy {out['val_acc']:.2f} %"
    )
    print(
        f"Fashion-MNIST: {acc} after {args.epochs} epochs in {seconds / 60:.1f} min wall time, range test included "
        f"(max_lr {sc.max_lr:.3g}, weight decay {weight_decay:.3g})"
    )
    return out


if __name__ == "__main__":
    main()
