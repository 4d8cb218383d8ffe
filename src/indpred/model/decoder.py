"""DCGAN generator g: the mean of the likelihood p(x_t | z_t) = N(g(z_t), σ_x² I).

Input (N, z_dim) latents, N = B·T (all frames of a batch at once); output (N, C, S, S),
S = 32, 64 (the paper's) or 128, pixel means in (0, 1) (a sigmoid, like the data).

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

import itertools

import torch
from torch import Tensor, nn

from indpred.sizes import channels, decoder_bases


class Decoder(nn.Module):
    """Linear, then transposed convs from 1x1 up to S x S (five at 64 px; batch norm and ReLU
    between), one stride-2 block per factor of two."""

    def __init__(self, *, z_dim: int, out_channels: int, width: float = 1.0, groups: int = 1,
                 image_size: int = 64) -> None:
        super().__init__()
        if z_dim % groups:
            raise ValueError(f"z_dim {z_dim} is not divisible into {groups} groups")
        G = groups
        widths = [G * channels(b, width / G) for b in decoder_bases(image_size)]  # 512 … 64 at 64 px
        # One Linear per factor (block-diagonal); the plain Linear when there is one group.
        fc = nn.Linear(z_dim, z_dim) if G == 1 else nn.Conv2d(z_dim, z_dim, 1, groups=G)
        self.fc = nn.Sequential(fc, nn.ReLU(inplace=True))
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, widths[0], 4, 1, 0, bias=False, groups=G),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]  # c x 4 x 4
        for c_in, c_out in itertools.pairwise(widths):  # each doubles the side: 8 … S/2
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False, groups=G),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        layers.append(nn.ConvTranspose2d(widths[-1], G * out_channels, 4, 2, 1, groups=G))  # G·C x S x S
        self.net = nn.Sequential(*layers)
        self.groups = G

    def layers(self, z: Tensor) -> Tensor:
        """Each group's image before the final activation: (N, z_dim) → (N, G, C, S, S) float32.

        With ``groups=K`` layer k depends on factor k's units alone; the frame's pixel means
        are ``sigmoid`` of the layers' sum (:meth:`forward`).
        """
        if self.groups == 1:
            h = self.fc(z)[:, :, None, None]  # (N, z_dim, 1, 1)
        else:
            h = self.fc(z[:, :, None, None])  # (N, z_dim, 1, 1), each factor's units on their own
        return self.net(h).float().unflatten(1, (self.groups, -1))  # (N, G, C, S, S) float32

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.layers(z).sum(1))  # (N, C, S, S): the factors' images added
