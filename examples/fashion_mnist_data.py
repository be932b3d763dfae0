"""Fashion-MNIST, found offline first: ``--data-dir``, then Debian's package, then torchvision's download.

The four ``*-ubyte.gz`` files are read directly (IDX format: a big-endian header, then raw bytes), so neither the
examples' tests nor the benchmarks need torchvision. ``apt-get install dataset-fashion-mnist`` puts the files in
``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# The dataset's own per-pixel statistics over the 60,000 training images (scaled to [0, 1]).
MEAN, STD = 0.2860, 0.3530


def _read_idx(path: Path) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(shape)


def _has_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in FILES.values())


def find_data_dir(data_dir: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """Where the four files are: ``data_dir``, Debian's package, or torchvision's download into ``data_dir``.

    Raises:
        FileNotFoundError: with what to do, if no source works.
    """
    candidates = [Path(data_dir)] if data_dir is not None else []
    candidates += [Path(data_dir) / "FashionMNIST" / "raw"] if data_dir is not None else []
    candidates.append(DEBIAN_DIR)
    for candidate in candidates:
        if _has_files(candidate):
            return candidate
    if download:
        target = Path(data_dir or "data")
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(target), train=True, download=True)
            FashionMNIST(str(target), train=False, download=True)
        except Exception as err:  # noqa: BLE001 - any failure means: tell the user what to do
            raise FileNotFoundError(_HELP.format(where=", ".join(map(str, candidates)), err=err)) from err
        if _has_files(target / "FashionMNIST" / "raw"):
            return target / "FashionMNIST" / "raw"
    raise FileNotFoundError(_HELP.format(where=", ".join(map(str, candidates)), err="download disabled"))


_HELP = (
    "Fashion-MNIST was not found (looked in: {where}) and could not be downloaded ({err}). Either install the Debian "
    "package (`apt-get install dataset-fashion-mnist`), or put the four *-ubyte.gz files in a folder and pass "
    "`--data-dir FOLDER`, or run once with a network so torchvision can download them."
)


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """The four arrays: ``train_images`` (60000x28x28 uint8), ``train_labels``, ``test_images``, ``test_labels``."""
    directory = find_data_dir(data_dir)
    return {key: _read_idx(directory / name) for key, name in FILES.items()}


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NxHxW -> float Nx1xHxW, standardized with the dataset's statistics."""
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)


class FashionMNISTDataModule(L.LightningDataModule):
    r"""Fashion-MNIST held in memory as tensors, with a validation split carved from the *training* set.

    Args:
        data_dir: where the ``.gz`` files are (see :func:`find_data_dir`).
        batch_size: training batch size.
        train_size: how many training images to train on (a seeded subset; None: all that remain after validation).
        val_size: how many training images to hold out for validation (model selection never sees the test set).
        augment: random crop (pad 2) and horizontal flip on each training batch.
        seed: fixes the subset and the split.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        train_size: int | None = None,
        val_size: int = 5000,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.train_size = train_size
        self.val_size = val_size
        self.augment = augment
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        arrays = load_fashion_mnist(self.data_dir)
        order = torch.randperm(len(arrays["train_labels"]), generator=torch.Generator().manual_seed(self.seed))
        val_idx = order[: self.val_size]
        train_idx = order[self.val_size :]
        if self.train_size is not None:
            train_idx = train_idx[: self.train_size]
        x, y = normalize(arrays["train_images"]), arrays["train_labels"].long()
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])
        self.test_set = TensorDataset(normalize(arrays["test_images"]), arrays["test_labels"].long())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=1000)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=1000)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int) -> tuple:
        if not (self.augment and self.trainer is not None and self.trainer.training):
            return batch
        x, y = batch
        return random_crop_flip(x), y


def random_crop_flip(x: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Batched augmentation on tensors: each image shifted by up to ``pad`` pixels and flipped with probability 1/2."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=float(x.min()))
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), device=x.device)
    out = torch.empty_like(x)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            idx = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero().flatten()
            if len(idx):
                out[idx] = padded[idx, :, dy : dy + h, dx : dx + w]
    flip = torch.rand(n, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)
