"""Offline data for the zoo: Fashion-MNIST, scikit-learn's bundled and generated sets, Python's own source as text.

Every split is fixed by the task (the same for every seed); only the order in which training batches arrive and the
initial weights change with the seed.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from examples.fashion_mnist_data import load_fashion_mnist, normalize


@dataclass
class Splits:
    """Train, validation and test sets (validation chooses the oracle; test is what the table reports)."""

    train: Dataset
    val: Dataset
    test: Dataset


def _split(x: torch.Tensor, y: torch.Tensor, sizes: tuple[int, int, int], seed: int = 1234) -> Splits:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    a, b, c = sizes
    parts = [order[:a], order[a : a + b], order[a + b : a + b + c]]
    return Splits(*(TensorDataset(x[p], y[p]) for p in parts))


def fashion(train: int, val: int = 2000, test: int = 5000, rgb32: bool = False) -> Splits:
    """A fixed Fashion-MNIST subset; ``rgb32`` pads to 32x32 and repeats the channel (for torchvision models)."""
    arrays = load_fashion_mnist()
    x, y = normalize(arrays["train_images"]), arrays["train_labels"].long()
    xt, yt = normalize(arrays["test_images"]), arrays["test_labels"].long()
    if rgb32:
        x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=float(x.min())).expand(-1, 3, -1, -1).contiguous()
        xt = torch.nn.functional.pad(xt, (2, 2, 2, 2), value=float(xt.min())).expand(-1, 3, -1, -1).contiguous()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    keep = torch.randperm(len(xt), generator=torch.Generator().manual_seed(4321))[:test]
    return Splits(
        TensorDataset(x[order[:train]], y[order[:train]]),
        TensorDataset(x[order[train : train + val]], y[order[train : train + val]]),
        TensorDataset(xt[keep], yt[keep]),
    )


def _standardize(splits: Splits, targets: bool) -> Splits:
    """Scale features (and regression targets) by the training set's mean and deviation."""
    x, y = splits.train.tensors
    mx, sx = x.mean(0), x.std(0).clamp_min(1e-8)
    my, sy = (y.mean(0), y.std(0)) if targets else (0.0, 1.0)

    def scaled(d: TensorDataset) -> TensorDataset:
        features, labels = d.tensors
        return TensorDataset((features - mx) / sx, (labels - my) / sy if targets else labels)

    return Splits(scaled(splits.train), scaled(splits.val), scaled(splits.test))


def digits() -> Splits:
    """scikit-learn's 8x8 digits (1,797 images): 1,000 train, 300 validation, 497 test; pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    return _split(x, y, (1000, 300, 497))


def diabetes() -> Splits:
    """scikit-learn's diabetes regression (442 patients): 260 train, 80 validation, 102 test; standardized."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.float32).unsqueeze(1)
    return _standardize(_split(x, y, (260, 80, 102)), targets=True)


def friedman(n_train: int = 4000) -> Splits:
    """Friedman's regression problem #1 (generated, 10 features of which 5 matter, noise 1.0); standardized."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=n_train + 2000, n_features=10, noise=1.0, random_state=7)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32).unsqueeze(1)
    return _standardize(_split(xt, yt, (n_train, 1000, 1000)), targets=True)


def breast_cancer() -> Splits:
    """scikit-learn's breast cancer set (569 patients, 30 features, 2 classes): 300 train, 120 validation, 149 test."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    return _standardize(_split(x, y, (300, 120, 149)), targets=False)


def friedman_other(kind: int, n_train: int) -> Splits:
    """Friedman's regression problem #2 or #3 (generated, 4 features, no noise added: ``make_friedman2/3``)."""
    from sklearn import datasets

    make = {2: datasets.make_friedman2, 3: datasets.make_friedman3}[kind]
    x, y = make(n_samples=n_train + 2000, random_state=17 + kind)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32).unsqueeze(1)
    return _standardize(_split(xt, yt, (n_train, 1000, 1000)), targets=True)


def classification(n_train: int, features: int, classes: int, informative: int, sep: float, seed: int) -> Splits:
    """A generated classification problem (``make_classification``: clusters on a hypercube, 3 % label noise)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n_train + 4000,
        n_features=features,
        n_informative=informative,
        n_redundant=features - informative,
        n_classes=classes,
        n_clusters_per_class=2,
        class_sep=sep,
        flip_y=0.03,
        random_state=seed,
    )
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.long)
    return _standardize(_split(xt, yt, (n_train, 2000, 2000)), targets=False)


def hastie(n_train: int) -> Splits:
    """Hastie et al.'s binary problem (``make_hastie_10_2``: is the squared norm of 10 normal features above 9.34?)."""
    from sklearn.datasets import make_hastie_10_2

    x, y = make_hastie_10_2(n_samples=n_train + 4000, random_state=23)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor((y > 0).astype("int64"))
    return _split(xt, yt, (n_train, 2000, 2000))


def wine() -> Splits:
    """scikit-learn's wine recognition set (178 wines, 13 features, 3 cultivars): 100 train, 38 validation, 40 test."""
    from sklearn.datasets import load_wine

    data = load_wine()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    return _standardize(_split(x, y, (100, 38, 40)), targets=False)


def moons(n_train: int) -> Splits:
    """Two interleaving half circles (``make_moons``, noise 0.3): a 2-D problem no straight line separates."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n_train + 4000, noise=0.3, random_state=31)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.long)
    return _standardize(_split(xt, yt, (n_train, 2000, 2000)), targets=False)


def linear_regression(n_train: int) -> Splits:
    """A generated regression (``make_regression``: 20 features, 10 of them informative, noise 10); standardized."""
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=n_train + 2000, n_features=20, n_informative=10, noise=10.0, random_state=37)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32).unsqueeze(1)
    return _standardize(_split(xt, yt, (n_train, 1000, 1000)), targets=True)


# Python's own standard library as a text corpus: always on disk, no download. Fixed files, read in this order.
TEXT_FILES = ("argparse.py", "collections/__init__.py", "dataclasses.py", "inspect.py", "typing.py", "pathlib.py")
VOCAB = [chr(c) for c in range(32, 127)] + ["\n"]  # printable ASCII and newline; anything else reads as "?"


def python_source_text() -> str:
    """The fixed standard-library files, concatenated."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return "\n".join((root / name).read_text(encoding="utf8") for name in TEXT_FILES)


def encode(text: str) -> torch.Tensor:
    index = {ch: i for i, ch in enumerate(VOCAB)}
    unknown = index["?"]
    return torch.tensor([index.get(ch, unknown) for ch in text], dtype=torch.long)


@dataclass
class TextSplits:
    """Character ids of the training, validation and test text."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def text(train_chars: int, val_chars: int = 20_000, test_chars: int = 40_000) -> TextSplits:
    """The first ``train_chars`` characters for training, then validation and test text that follow them."""
    ids = encode(python_source_text())
    a, b, c = train_chars, val_chars, test_chars
    if a + b + c > len(ids):
        raise ValueError(f"the corpus has {len(ids)} characters, asked for {a + b + c}")
    return TextSplits(ids[:a], ids[a : a + b], ids[a + b : a + b + c])


class Blocks(Dataset):
    """Consecutive blocks of ``block`` tokens: item ``i`` is ``(ids[i*block : (i+1)*block], the same shifted by 1)``.

    ``offset`` shifts where the first block starts, so each seed reads the text in another order of blocks.
    """

    def __init__(self, ids: torch.Tensor, block: int, offset: int = 0) -> None:
        self.ids = torch.roll(ids, -offset) if offset else ids
        self.block = block

    def __len__(self) -> int:
        return (len(self.ids) - 1) // self.block

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.block
        return self.ids[start : start + self.block], self.ids[start + 1 : start + self.block + 1]


class ContextBlocks(Dataset):
    """Like :class:`Blocks`, with the preceding block as context: ``(context, inputs, targets)``."""

    def __init__(self, ids: torch.Tensor, block: int) -> None:
        self.ids = ids
        self.block = block

    def __len__(self) -> int:
        return (len(self.ids) - 1) // self.block - 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        start = (i + 1) * self.block
        ids = self.ids
        return ids[start - self.block : start], ids[start : start + self.block], ids[start + 1 : start + self.block + 1]
