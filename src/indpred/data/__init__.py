"""Datasets: MNIST digit sources and the on-the-fly Moving MNIST generator."""

from indpred.data.mnist import download_mnist, load_digits
from indpred.data.moving_mnist import MovingMNIST

__all__ = ["MovingMNIST", "download_mnist", "load_digits"]
