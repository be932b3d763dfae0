"""The paper's setting: a CIFAR-10 ResNet trained with one cycle of a very large LR (Smith & Topin, arXiv 1708.07120).

For users with a GPU and a network. ResNet-9 (the fast-training record network, 94 % in 24 epochs) or ResNet-56 (the
paper's), torchvision's CIFAR-10 download with random-crop and flip augmentation, mixed precision and DDP by flags:

    python examples/cifar10_resnet.py --arch resnet9 --epochs 24 --precision 16-mixed
    python examples/cifar10_resnet.py --arch resnet56 --epochs 50 --devices 4 --strategy ddp --precision 16-mixed
    python examples/cifar10_resnet.py --fake-data --epochs 1 --accelerator cpu   # the code path, no download

The model is configured the way the paper's baseline is (SGD with Nesterov momentum 0.9, weight decay 5e-4, LR 0.1);
``SuperConvergence`` replaces the LR schedule with one cycle whose peak its range test picks, and
``WeightDecayBalancer`` moves the weight decay, only as far as needed, so that decay acts on a timescale between one
epoch and the whole run of that cycle. 5,000 images held out of the training set are the validation split; the test
set is evaluated once, at the end.

``--fake-data`` swaps CIFAR-10 for a small generated stand-in of the same shape, so the whole path (model, both
callbacks, augmentation, precision, strategy) runs in CI, which has no network and no GPU.
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
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from lightning_superconv import SuperConvergence, WeightDecayBalancer  # noqa: E402

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body, self.shortcut = body, shortcut or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(x)


def resnet9(num_classes: int = 10, width: int = 64) -> nn.Module:
    """The DAWNBench ResNet-9 (prep, three stages with max-pooling, two residual blocks); the original has width 64."""
    w = width
    return nn.Sequential(
        conv_bn(3, w),
        conv_bn(w, 2 * w), nn.MaxPool2d(2), Residual(nn.Sequential(conv_bn(2 * w, 2 * w), conv_bn(2 * w, 2 * w))),
        conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),
        conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), Residual(nn.Sequential(conv_bn(8 * w, 8 * w), conv_bn(8 * w, 8 * w))),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8 * w, num_classes),
    )  # fmt: skip


def resnet56(num_classes: int = 10, width: int = 16) -> nn.Module:
    """He et al.'s CIFAR ResNet-56: three stages of nine basic blocks (``width`` = 16, then 32 and 64 channels)."""

    def block(c_in: int, c_out: int, stride: int) -> nn.Module:
        body = nn.Sequential(
            conv_bn(c_in, c_out, stride), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        )
        shortcut = None
        if stride != 1 or c_in != c_out:
            shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        return nn.Sequential(Residual(body, shortcut), nn.ReLU(inplace=True))

    layers: list[nn.Module] = [conv_bn(3, width)]
    c_in = width
    for c_out, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
        for i in range(9):
            layers.append(block(c_in, c_out, stride if i == 0 else 1))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes)]
    return nn.Sequential(*layers)


ARCHS = {"resnet9": (resnet9, 64), "resnet56": (resnet56, 16)}


class CIFARClassifier(L.LightningModule):
    """SGD at the paper's momentum and weight decay; the LR schedule and the final weight decay are the callbacks'."""

    def __init__(
        self, arch: str = "resnet9", width: int | None = None, lr: float = 0.1, weight_decay: float = 5e-4
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        build, default_width = ARCHS[arch]
        self.net = build(width=width or default_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y, label_smoothing=0.1)
        self.log("train_loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}_loss", nn.functional.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log(f"{stage}_acc", (logits.argmax(1) == y).float().mean() * 100, prog_bar=True, sync_dist=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay, nesterov=True)


class Augmented(Dataset):
    """Random crop (padding 4) and horizontal flip on normalized image tensors (training only)."""

    def __init__(self, base: Dataset, train: bool) -> None:
        self.base, self.train = base, train

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.base[index]
        if self.train:
            dy, dx = torch.randint(0, 9, (2,)).tolist()
            x = nn.functional.pad(x, (4, 4, 4, 4))[:, dy : dy + 32, dx : dx + 32]
            if torch.rand(()) < 0.5:
                x = x.flip(2)
        return x, int(y)


def fake_cifar(n_train: int = 1024, n_test: int = 256) -> tuple[Dataset, Dataset]:
    """A generated stand-in of CIFAR-10's shape; learnable (class-dependent means), so the range test's loss falls."""
    gen = torch.Generator().manual_seed(0)
    n = n_train + n_test
    y = torch.randint(0, 10, (n,), generator=gen)
    x = torch.randn(n, 3, 32, 32, generator=gen) + y[:, None, None, None].float() / 5
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


def cifar10(data_dir: str) -> tuple[Dataset, Dataset]:
    from torchvision import datasets as tv
    from torchvision import transforms as T

    to_tensor = T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    train = tv.CIFAR10(data_dir, train=True, download=True, transform=to_tensor)
    test = tv.CIFAR10(data_dir, train=False, download=True, transform=to_tensor)
    return train, test


def split(train: Dataset, val_size: int, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Hold ``val_size`` training images out for validation (the weight-decay choice), seeded."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()  # type: ignore[arg-type]
    return Subset(train, order[val_size:]), Subset(train, order[:val_size])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=list(ARCHS), default="resnet9")
    parser.add_argument(
        "--width", type=int, default=None, help="first-stage channels (resnet9: 64, resnet56: 16; --fake-data: 16, 4)"
    )
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=None, help="per device (512; with --fake-data: 64)")
    parser.add_argument("--data-dir", default="data", help="where torchvision downloads CIFAR-10")
    parser.add_argument("--fake-data", action="store_true", help="a generated stand-in instead of CIFAR-10")
    parser.add_argument("--val-size", type=int, default=5000, help="training images held out for validation")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default="auto", help="e.g. 4 for four GPUs (with --strategy ddp)")
    parser.add_argument("--strategy", default="auto", help="e.g. ddp for several GPUs")
    parser.add_argument("--precision", default="32-true", help="e.g. 16-mixed (GPU) or bf16-mixed")
    parser.add_argument("--workers", type=int, default=4, help="dataloader workers per device")
    parser.add_argument("--log-dir", default="lightning_logs", help="TensorBoard logs go here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--range-test-steps", type=int, default=100, help="sweep steps to lr_range[1] (+ up to half)")
    parser.add_argument(
        "--trial-steps",
        type=int,
        default=None,
        help="steps of each peak trial (default: a third of the run, 100 to 300; 0: none)",
    )
    parser.add_argument("--lr-range", type=float, nargs=2, default=(1e-5, 10.0), metavar=("FIRST", "LAST"))
    parser.add_argument("--limit-batches", type=float, default=1.0, help="fraction (<= 1) or number of batches")
    parser.add_argument("--no-balancer", action="store_true", help="leave the weight decay as configured")
    return parser.parse_args(argv)


# The stand-in's defaults: a quarter of the width and a batch that fits its 896 training images fourteen times, so the
# README's `--fake-data` command runs its whole path on two CPU cores in a minute or two.
FAKE_WIDTH = {"resnet9": 16, "resnet56": 4}
FAKE_BATCH = 64


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train and test; returns the test accuracy, the wall time and the trainer (whose callbacks hold the choices)."""
    args = parse_args(argv)
    if args.batch_size is None:
        args.batch_size = FAKE_BATCH if args.fake_data else 512
    if args.width is None and args.fake_data:
        args.width = FAKE_WIDTH[args.arch]
    start = time.perf_counter()
    L.seed_everything(args.seed, verbose=False)
    if args.fake_data:
        train, test = fake_cifar()
        val_size = min(args.val_size, 128)
    else:
        train, test = cifar10(args.data_dir)
        val_size = args.val_size
    train, val = split(train, val_size, args.seed)
    workers = 0 if args.fake_data else args.workers
    loader_kwargs: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0}
    if not args.fake_data and args.accelerator != "cpu":
        loader_kwargs["pin_memory"] = True
    train_loader = DataLoader(
        Augmented(train, train=True), args.batch_size, shuffle=True, drop_last=True, **loader_kwargs
    )
    val_loader = DataLoader(Augmented(val, train=False), 1000, **loader_kwargs)
    test_loader = DataLoader(Augmented(test, train=False), 1000, **loader_kwargs)

    callbacks: list[L.Callback] = [
        SuperConvergence(lr_range=tuple(args.lr_range), num_steps=args.range_test_steps, trial_steps=args.trial_steps)
    ]
    if not args.no_balancer:
        callbacks.append(WeightDecayBalancer())
    limit = args.limit_batches if args.limit_batches <= 1 else int(args.limit_batches)
    logger = TensorBoardLogger(args.log_dir, name="cifar10")
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        precision=args.precision,
        max_epochs=args.epochs,
        callbacks=callbacks,
        limit_train_batches=limit,
        limit_val_batches=limit,
        limit_test_batches=limit,
        num_sanity_val_steps=0,
        logger=logger,
        enable_checkpointing=False,
    )
    if trainer.is_global_zero:
        print(f"TensorBoard logs: {logger.log_dir}  (view with: tensorboard --logdir {args.log_dir})")
    model = CIFARClassifier(args.arch, args.width)
    trainer.fit(model, train_loader, val_loader)
    acc = float(trainer.test(model, test_loader, verbose=False)[0]["test_acc"])
    seconds = time.perf_counter() - start
    if trainer.is_global_zero:
        epochs = f"{args.epochs} epoch" + ("s" if args.epochs != 1 else "")
        print(
            f"CIFAR-10 {args.arch}: test accuracy {acc:.2f} % after {epochs} in {seconds / 60:.1f} min "
            f"(max_lr {callbacks[0].max_lr:.3g}; range test included)"
        )
    return {"test_acc": acc, "seconds": seconds, "trainer": trainer}


if __name__ == "__main__":
    main()
