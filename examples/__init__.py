"""Runnable examples: Fashion-MNIST (the main job), CIFAR-10 (the paper's setting), and their data."""
