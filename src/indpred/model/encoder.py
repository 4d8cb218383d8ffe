"""DCGAN image encoder: one frame to a feature vector (paper, Appendix A).

Input (N, C, S, S) frames, N = B·T (all frames of a batch at once), S = 32, 64 (the paper's)
or 128; output (N, enc_dim). One stride-2 block per factor of two from S down to 4 x 4.
"""

from __future__ import annotations

from torch import Tensor, nn

from indpred.sizes import channels, encoder_bases


class Encoder(nn.Module):
    """DCGAN discriminator body: stride-2 convs with batch norm down to 4x4 (four at 64 px),
    then a 4x4 conv to enc_dim."""

    def __init__(self, *, in_channels: int, width: float = 1.0, out_dim: int = 32,
                 image_size: int = 64) -> None:
        super().__init__()
        widths = [channels(b, width) for b in encoder_bases(image_size)]  # 64, 128, 256, 512 at 64 px
        layers: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *widths[:-1]], widths):  # each halves the side: S/2 … 4
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(widths[-1], out_dim, 4, 1, 0),  # out_dim x 1 x 1
                   nn.LeakyReLU(0.2, inplace=True)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)  # (N, out_dim)
