"""DCGAN generator g: the mean of the likelihood p(x_t | z_t) = N(g(z_t), σ_x² I).

Input (N, z_dim) latents, N = B·T (all frames of a batch at once); output (N, C, 64, 64).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from indpred.model.layers import channels


class Decoder(nn.Module):
    """Linear, then five transposed convs from 1x1 to 64x64 (batch norm and ReLU between)."""

    def __init__(
        self, *, z_dim: int, out_channels: int, width: float = 1.0, output: str = "sigmoid"
    ) -> None:
        super().__init__()
        c1, c2, c3, c4 = (channels(b, width) for b in (512, 256, 128, 64))
        self.fc = nn.Sequential(nn.Linear(z_dim, z_dim), nn.ReLU(inplace=True))
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z_dim, c1, 4, 1, 0, bias=False),  # c1 x 4 x 4
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c1, c2, 4, 2, 1, bias=False),  # c2 x 8 x 8
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c2, c3, 4, 2, 1, bias=False),  # c3 x 16 x 16
            nn.BatchNorm2d(c3),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c3, c4, 4, 2, 1, bias=False),  # c4 x 32 x 32
            nn.BatchNorm2d(c4),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c4, out_channels, 4, 2, 1),  # C x 64 x 64
        )
        self.output = output

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z)[:, :, None, None]  # (N, z_dim, 1, 1)
        x = self.net(h).float()  # (N, C, 64, 64); float32 even under autocast
        return torch.sigmoid(x) if self.output == "sigmoid" else x
