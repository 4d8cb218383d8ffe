"""A model's parameter sizes in closed form, from its config alone, and the check that they fit.

``config.validate`` refuses, in one line naming the keys to lower, a model whose parameters
could not be allocated, before anything is built.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from indpred.errors import UserError

if TYPE_CHECKING:
    from indpred.config import ModelConfig

__all__ = ["IMAGE_SIZES", "MAX_PARAMETERS", "MAX_TENSOR", "channels", "check_sizes", "decoder_bases",
           "encoder_bases", "parameter_sizes", "stride2_blocks"]


def channels(base: int, width: float) -> int:
    """Conv channel count ``base`` scaled by the width multiplier ``model.width`` (at least 1)."""
    return max(1, round(base * width))


IMAGE_SIZES = (32, 64, 128)  # frame sides the DCGAN networks are built for


def stride2_blocks(image_size: int) -> int:
    """The image networks' stride-2 blocks: one per factor of two between 4 and ``image_size``
    (3 at 32 px, 4 at the paper's 64, 5 at 128)."""
    return image_size.bit_length() - 3


def encoder_bases(image_size: int) -> list[int]:
    """The encoder's channel bases, first block first: 64 at the first, doubling per block, as in
    DCGAN and the authors' small-image networks (64, 128, 256, 512 at the paper's 64 px; 64, 128,
    256 at 32 px, where the work per frame drops about fivefold; up to 1024 at 128 px)."""
    return [64 << i for i in range(stride2_blocks(image_size))]


def decoder_bases(image_size: int) -> list[int]:
    """The generator's channel bases before its last layer: the encoder's, widest (at 4 x 4)
    first (512, 256, 128, 64 at 64 px, the paper's)."""
    return encoder_bases(image_size)[::-1]


MAX_TENSOR = 2**31  # numbers in one parameter tensor
# Numbers in all parameters: 32 GiB of float32, 128 GiB with their gradients and Adam's two moments.
MAX_PARAMETERS = 2**33
# The keys that each network's sizes follow (model.channels comes from the data).
SIZE_KEYS = {
    "encoder": ("width", "enc_dim", "image_size"),
    "posterior": ("factors", "factor_dim", "enc_dim"),
    "transition": ("factors", "factor_dim", "transition_hidden", "transition_layers", "transition_order"),
    "decoder": ("factors", "factor_dim", "width", "image_size"),
}


def parameter_sizes(m: ModelConfig) -> dict[str, list[tuple[int, int]]]:
    """The parameter tensors of the model ``m`` describes, in closed form, without building it.

    ``{network: [(numbers in one tensor, how many such tensors), ...]}`` for the encoder,
    posterior, transition and decoder of :class:`~indpred.model.FactoredVAE` (tested against
    the model); exact integers however large the sizes are.
    """
    K, d, C, E = m.factors, m.factor_dim, m.channels, m.enc_dim
    z, h, L = K * d, m.transition_hidden, m.transition_layers
    e = [channels(b, m.width) for b in encoder_bases(m.image_size)]
    G = K if m.decoder == "per-factor" else 1
    g = [G * channels(b, m.width / G) for b in decoder_bases(m.image_size)]
    return {
        # The stride-2 4 x 4 convs, the 4 x 4 conv to enc_dim and its bias, batch norms' scales
        # and shifts.
        "encoder": [(16 * a * b, 1) for a, b in zip([C, *e[:-1]], e)]
                   + [(16 * e[-1] * E, 1), (E, 1), *((c, 2) for c in e)],
        # from_x; from_mean, from_std and the two heads; joint; the six biases.
        "posterior": [(E * z, 1), (z * z, 4), (3 * z * z, 1), (z, 6)],
        # K stacked MLPs order·d → h (L hidden layers) → 2d: weights, then biases.
        "transition": [(K * m.transition_order * d * h, 1), (K * h * h, L - 1), (K * h * 2 * d, 1),
                       (K * h, L), (K * 2 * d, 1)],
        # The linear layer (block-diagonal when G > 1) and its bias; five grouped 4 x 4 transposed
        # convs, the last with a bias; batch norms' scales and shifts.
        "decoder": [(z * z // G, 1), (z, 1), (16 * z * g[0] // G, 1)]
                   + [(16 * a * b // G, 1) for a, b in itertools.pairwise(g)]
                   + [(16 * g[-1] * C, 1), (G * C, 1), *((c, 2) for c in g)],
    }


def check_sizes(m: ModelConfig) -> None:
    """Refuse a model whose parameters cannot be allocated, with the keys to lower."""

    def lower(network: str) -> str:
        keys = SIZE_KEYS[network]
        grown = [k for k in keys if getattr(m, k) > getattr(type(m), k)] or keys
        return "lower " + " or ".join(f"model.{k} ({getattr(m, k)})" for k in grown)

    def count(n: int) -> str:
        return f"{n:.3g}" if n < 10**300 else "more than 1e300"

    if m.width >= MAX_TENSOR:  # no conv could be built; also keeps the channel counts finite
        raise UserError(f"model sizes too large: model.width={m.width} would make every conv "
                        "too large to allocate; lower model.width")
    sizes = parameter_sizes(m)
    for network, tensors in sizes.items():
        largest = max(n for n, _ in tensors)
        if largest > MAX_TENSOR:
            raise UserError(f"model sizes too large: the {network} would have a tensor of "
                            f"{count(largest)} numbers (at most 2**31 = {MAX_TENSOR:.3g}); {lower(network)}")
    totals = {network: sum(n * k for n, k in tensors) for network, tensors in sizes.items()}
    if sum(totals.values()) > MAX_PARAMETERS:
        network = max(totals, key=lambda name: totals[name])
        raise UserError(f"model sizes too large: the model would have {count(sum(totals.values()))} "
                        f"parameters (at most 2**33 = {MAX_PARAMETERS:.3g}: 128 GiB to train with "
                        f"Adam), most of them in the {network}; {lower(network)}")
