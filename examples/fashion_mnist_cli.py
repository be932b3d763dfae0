"""The Fashion-MNIST example through ``LightningCLI``: model, data, Trainer and both callbacks from a YAML file.

    python examples/fashion_mnist_cli.py fit --config examples/fashion_mnist_cli.yaml
    python examples/fashion_mnist_cli.py fit --config examples/fashion_mnist_cli.yaml --trainer.max_epochs 3 \
        --trainer.check_val_every_n_epoch 3   # the YAML validates once, at its epoch 9
    python examples/fashion_mnist_cli.py fit --config examples/fashion_mnist_cli.yaml --print_config   # every option

The callbacks go into ``trainer.callbacks`` as ``class_path`` / ``init_args`` entries (see the YAML file); every
constructor argument of ``SuperConvergence`` and ``WeightDecayBalancer`` can be set there. After ``fit`` the CLI tests
the trained model on the test set once (the model was chosen on nothing but the validation split).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from examples.fashion_mnist import FashionClassifier  # noqa: E402
from examples.fashion_mnist_data import FashionMNISTDataModule  # noqa: E402


class FashionCLI(LightningCLI):
    """``LightningCLI`` that tests the model it has just fitted, on the test set, once."""

    def after_fit(self) -> None:
        if self.trainer.interrupted:
            return
        self.trainer.test(self.model, datamodule=self.datamodule)


def main(args: list[str] | None = None) -> LightningCLI:
    """Build and run the CLI (``args`` as on the command line; None reads ``sys.argv``)."""
    return FashionCLI(
        FashionClassifier,
        FashionMNISTDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
