"""The paper's setting: a CIFAR-10 ResNet trained with one cycle of a very large LR (Smith & Topin, arXiv 1708.07120).

For users with a GPU and a network. ResNet-9 (the fast-training record network, 94 % in 24 epochs) or ResNet-56 (the
paper's), torchvision's CIFAR-10 download with random-crop and flip augmentation, mixed precision and DDP by flags:

    python examples/cifar10_resnet.py --arch resnet9 --epochs 24 --precision 16-mixed
    python examples/cifar10_resnet.py --arch resnet56 --epochs 50 --devices 4 --strategy ddp
    python examples/cifar10_resnet.py --fake-data --epochs 1 --accelerator cpu   # the code path, no download

``--fake-data`` swaps CIFAR-10 for a small generated stand-in of the same shape, so the whole path (model, callbacks,
augmentation, precision, strategy) runs in CI, which has no network.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

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


def resnet9(num_classes: int = 10) -> nn.Module:
    """The DAWNBench ResNet-9 (prep, three stages with max-pooling, two residual blocks)."""
    return nn.Sequential(
        conv_bn(3, 64),
        conv_bn(64, 128), nn.MaxPool2d(2), Residual(nn.Sequential(conv_bn(128, 128), conv_bn(128, 128))),
        conv_bn(128, 256), nn.MaxPool2d(2),
        conv_bn(256, 512), nn.MaxPool2d(2), Residual(nn.Sequential(conv_bn(512, 512), conv_bn(512, 512))),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(512, num_classes),
    )  # fmt: skip


def resnet56(num_classes: int = 10) -> nn.Module:
    """He et al.'s CIFAR ResNet-56: three stages of nine basic blocks (16, 32, 64 channels)."""

    def block(c_in: int, c_out: int, stride: int) -> nn.Module:
        body = nn.Sequential(
            conv_bn(c_in, c_out, stride), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        )
        shortcut = None
        if stride != 1 or c_in != c_out:
            shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        return nn.Sequential(Residual(body, shortcut), nn.ReLU(inplace=True))

    layers: list[nn.Module] = [conv_bn(3, 16)]
    c_in = 16
    for c_out, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(9):
            layers.append(block(c_in, c_out, stride if i == 0 else 1))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


class CIFARClassifier(L.LightningModule):
    """SGD at the paper's momentum and weight decay; the LR schedule is the callbacks' business."""

    def __init__(self, arch: str = "resnet9", lr: float = 0.1, weight_decay: float = 5e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = {"resnet9": resnet9, "resnet56": resnet56}[arch]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y, label_smoothing=0.1)
        self.log("train_loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean() * 100, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay, nesterov=True)


class Augmented(Dataset):
    """Random crop (padding 4) and horizontal flip on normalized image tensors."""

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


def datasets(data_dir: str, fake: bool) -> tuple[Dataset, Dataset]:
    if fake:
        # class-dependent means, so the stand-in is learnable and the range test sees a falling loss
        gen = torch.Generator().manual_seed(0)
        y = torch.randint(0, 10, (640,), generator=gen)
        x = torch.randn(640, 3, 32, 32, generator=gen) + y[:, None, None, None].float() / 5
        return TensorDataset(x[:512], y[:512]), TensorDataset(x[512:], y[512:])
    from torchvision import datasets as tv
    from torchvision import transforms as T

    to_tensor = T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    train = tv.CIFAR10(data_dir, train=True, download=True, transform=to_tensor)
    test = tv.CIFAR10(data_dir, train=False, download=True, transform=to_tensor)
    return train, test


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=["resnet9", "resnet56"], default="resnet9")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=512, help="per device")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--fake-data", action="store_true", help="a generated stand-in instead of CIFAR-10")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--strategy", default="auto", help="e.g. ddp for several GPUs")
    parser.add_argument("--precision", default="32-true", help="e.g. 16-mixed or bf16-mixed")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--log-dir", default="lightning_logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--range-test-steps", type=int, default=100, help="range-test steps at most")
    parser.add_argument("--limit-batches", type=float, default=1.0, help="fraction (or number) of batches per epoch")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    L.seed_everything(args.seed, verbose=False)
    train, test = datasets(args.data_dir, args.fake_data)
    workers = 0 if args.fake_data else args.workers
    train_loader = DataLoader(
        Augmented(train, True), args.batch_size, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0,
    )  # fmt: skip
    test_loader = DataLoader(Augmented(test, False), 1000, num_workers=workers)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        precision=args.precision,
        max_epochs=args.epochs,
        callbacks=[SuperConvergence(num_steps=args.range_test_steps), WeightDecayBalancer()],
        limit_train_batches=args.limit_batches if args.limit_batches <= 1 else int(args.limit_batches),
        limit_test_batches=args.limit_batches if args.limit_batches <= 1 else int(args.limit_batches),
        logger=L.pytorch.loggers.TensorBoardLogger(args.log_dir, name="cifar10"),
        enable_checkpointing=False,
    )
    model = CIFARClassifier(args.arch)
    trainer.fit(model, train_loader)
    acc = float(trainer.test(model, test_loader, verbose=False)[0]["test_acc"])
    seconds = time.perf_counter() - start
    if trainer.is_global_zero:
        print(f"CIFAR-10 {args.arch}: test accuracy {acc:.2f} % after {args.epochs} epochs in {seconds / 60:.1f} min")
    return {"test_acc": acc, "seconds": seconds}


if __name__ == "__main__":
    main()
