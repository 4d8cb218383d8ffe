"""Datasets: MNIST digit sources, the on-the-fly Moving MNIST generator, prepared real video."""

from indpred.data.mnist import download_mnist, load_digits
from indpred.data.moving_mnist import MovingMNIST
from indpred.data.video import VideoFrames, iter_frames, load_manifest, prepare_videos

__all__ = ["MovingMNIST", "VideoFrames", "download_mnist", "iter_frames", "load_digits",
           "load_manifest", "prepare_videos"]
