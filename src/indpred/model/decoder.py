"""DCGAN generator g: the mean of the likelihood p(x_t | z_t) = N(g(z_t), σ_x² I).

Input (N, z_dim) latents, N = B·T (all frames of a batch at once); output (N, C, 64, 64),
pixel means in (0, 1) (a sigmoid, like the data).

Two layouts, one class (``groups``):
- ``groups=1`` is the paper's generator: one network over the whole state z_t.
- ``groups=K`` renders each factor on its own and adds the K images before the final
  activation (``model.decoder = "per-factor"``, beyond the paper): a factor can only
  draw what its own units determine, so a factor holding one object's full state (its
  shape and its position together) is cheaper than one holding, say, every object's
  horizontal position. The K generators are one network with grouped layers: the
  channel widths are split between the factors, so the cost stays that of ``groups=1``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from indpred.sizes import channels


class Decoder(nn.Module):
    """Linear, then five transposed convs from 1x1 to 64x64 (batch norm and ReLU between)."""

    def __init__(self, *, z_dim: int, out_channels: int, width: float = 1.0, groups: int = 1) -> None:
        super().__init__()
        if z_dim % groups:
            raise ValueError(f"z_dim {z_dim} is not divisible into {groups} groups")
        G = groups
        c1, c2, c3, c4 = (G * channels(b, width / G) for b in (512, 256, 128, 64))
        # One Linear per factor (block-diagonal); the plain Linear when there is one group.
        fc = nn.Linear(z_dim, z_dim) if G == 1 else nn.Conv2d(z_dim, z_dim, 1, groups=G)
        self.fc = nn.Sequential(fc, nn.ReLU(inplace=True))
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z_dim, c1, 4, 1, 0, bias=False, groups=G),  # c1 x 4 x 4
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c1, c2, 4, 2, 1, bias=False, groups=G),  # c2 x 8 x 8
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c2, c3, 4, 2, 1, bias=False, groups=G),  # c3 x 16 x 16
            nn.BatchNorm2d(c3),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c3, c4, 4, 2, 1, bias=False, groups=G),  # c4 x 32 x 32
            nn.BatchNorm2d(c4),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c4, G * out_channels, 4, 2, 1, groups=G),  # G·C x 64 x 64
        )
        self.groups = G

    def layers(self, z: Tensor) -> Tensor:
        """Each group's image before the final activation: (N, z_dim) → (N, G, C, 64, 64) float32.

        With ``groups=K`` layer k depends on factor k's units alone; the frame's pixel means
        are ``sigmoid`` of the layers' sum (:meth:`forward`).
        """
        if self.groups == 1:
            h = self.fc(z)[:, :, None, None]  # (N, z_dim, 1, 1)
        else:
            h = self.fc(z[:, :, None, None])  # (N, z_dim, 1, 1), each factor's units on their own
        return self.net(h).float().unflatten(1, (self.groups, -1))  # (N, G, C, 64, 64) float32

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.layers(z).sum(1))  # (N, C, 64, 64): the factors' images added
