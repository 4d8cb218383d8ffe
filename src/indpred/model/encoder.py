"""DCGAN image encoder: one frame to a feature vector (paper, Appendix A).

Input (N, C, 64, 64) frames, N = B·T (all frames of a batch at once); output (N, enc_dim).
"""

from __future__ import annotations

from torch import Tensor, nn

from indpred.sizes import channels


class Encoder(nn.Module):
    """DCGAN discriminator body: four stride-2 convs with batch norm, then a 4x4 conv to enc_dim."""

    def __init__(self, *, in_channels: int, width: float = 1.0, out_dim: int = 32) -> None:
        super().__init__()
        c1, c2, c3, c4 = (channels(b, width) for b in (64, 128, 256, 512))
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c1, 4, 2, 1, bias=False),  # c1 x 32 x 32
            nn.BatchNorm2d(c1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c1, c2, 4, 2, 1, bias=False),  # c2 x 16 x 16
            nn.BatchNorm2d(c2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c2, c3, 4, 2, 1, bias=False),  # c3 x 8 x 8
            nn.BatchNorm2d(c3),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c3, c4, 4, 2, 1, bias=False),  # c4 x 4 x 4
            nn.BatchNorm2d(c4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c4, out_dim, 4, 1, 0),  # out_dim x 1 x 1
            nn.LeakyReLU(0.2, inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)  # (N, out_dim)
