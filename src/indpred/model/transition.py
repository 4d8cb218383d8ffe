"""Factored prior p(z_t | z_{t-1}) = Π_k N(μ_k(z_{t-1}^k), diag σ_k²(z_{t-1}^k)).

One MLP per factor k (separate parameters, shared across time), all K evaluated at
once with stacked weights and batched matrix products: no loop over factors.
Input (B, K, d); outputs mean and log-variance (B, K, d). Factor k's output depends
on factor k's input alone, by construction.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from indpred.model.layers import soft_clamp


class FactoredTransition(nn.Module):
    """K independent MLPs d → hidden (x layers, SELU) → 2·d, stored as (K, in, out) stacks."""

    def __init__(
        self,
        *,
        factors: int,
        factor_dim: int,
        hidden: int = 128,
        layers: int = 4,
        logvar_bounds: tuple[float, float] = (-10.0, 5.0),
    ) -> None:
        super().__init__()
        sizes = [factor_dim] + [hidden] * layers + [2 * factor_dim]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(factors, n_in, n_out)) for n_in, n_out in itertools.pairwise(sizes)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(factors, n_out)) for n_out in sizes[1:]
        )
        self.factors, self.factor_dim = factors, factor_dim
        self.logvar_bounds = logvar_bounds
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LeCun-normal weights (the initialisation SELU networks are designed for), zero biases."""
        for w in self.weights:
            nn.init.normal_(w, std=1.0 / math.sqrt(w.shape[1]))
        for b in self.biases:
            nn.init.zeros_(b)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Prior statistics for the next step from the state ``z`` (B, K, d)."""
        return self._mlp(z, list(self.weights), list(self.biases))

    def frozen(self) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """This transition with its weights detached once, to apply at many steps: gradients
        still flow to the state ``z`` but never reach the transition parameters."""
        weights = [w.detach() for w in self.weights]
        biases = [b.detach() for b in self.biases]
        return lambda z: self._mlp(z, weights, biases)

    def _mlp(self, z: Tensor, weights: list[Tensor], biases: list[Tensor]) -> tuple[Tensor, Tensor]:
        h = z.transpose(0, 1)  # (K, B, d)
        n = len(weights)
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w)  # (K, B, out_i)
            if i < n - 1:
                h = F.selu(h)
        h = h.transpose(0, 1)  # (B, K, 2d)
        mean, raw_logvar = h.chunk(2, dim=-1)  # (B, K, d) each
        return mean, soft_clamp(raw_logvar, *self.logvar_bounds)
