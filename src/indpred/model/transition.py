"""Factored prior p(z_t | z_{t-1}) = Π_k N(μ_k(z_{t-1}^k), diag σ_k²(z_{t-1}^k)).

With ``order`` 2 (the authors' code) each factor's MLP reads its two previous states,
``p(z_t^k | z_{t-2}^k, z_{t-1}^k)``: its input is ``[z_{t-2}^k, z_{t-1}^k]`` (2d units,
oldest first; :func:`prior_input` builds it, with zeros, the prior mean, for a state
before the first frame). Order 1 is the paper's text.

One MLP per factor k (separate parameters, shared across time), all K evaluated at
once with stacked weights and batched matrix products: no loop over factors.
Input (B, K, order·d); outputs mean and log-variance (B, K, d). Factor k's output depends
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
    """K independent MLPs order·d → hidden (x layers, SELU) → 2·d, stored as (K, in, out) stacks."""

    def __init__(
        self,
        *,
        factors: int,
        factor_dim: int,
        hidden: int = 128,
        layers: int = 4,
        order: int = 1,
        logvar_bounds: tuple[float, float] = (-10.0, 5.0),
    ) -> None:
        super().__init__()
        sizes = [order * factor_dim] + [hidden] * layers + [2 * factor_dim]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(factors, n_in, n_out)) for n_in, n_out in itertools.pairwise(sizes)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(factors, n_out)) for n_out in sizes[1:]
        )
        self.factors, self.factor_dim, self.order = factors, factor_dim, order
        self.logvar_bounds = logvar_bounds
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LeCun-normal weights (the initialisation SELU networks are designed for), zero biases."""
        for w in self.weights:
            nn.init.normal_(w, std=1.0 / math.sqrt(w.shape[1]))
        for b in self.biases:
            nn.init.zeros_(b)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Prior statistics for the next step from the state ``z`` (B, K, order·d): see
        :func:`prior_input`."""
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


def prior_input(states: list[Tensor], order: int) -> Tensor:
    """The transition's input from the states so far (each (B, K, d), oldest first, at least
    one): the last ``order`` of them side by side per factor, (B, K, order·d), oldest first;
    a state before the first frame is zero (the prior mean)."""
    last = states[-order:]
    if len(last) < order:
        last = [torch.zeros_like(last[0])] * (order - len(last)) + last
    return last[0] if order == 1 else torch.cat(last, dim=-1)


def prior_windows(states: Tensor, first: int, order: int) -> Tensor:
    """The transition's inputs of many steps at once: (B, P + T, K, d) states, oldest first,
    → (B, S, K, order·d) for the steps whose previous state is ``states[:, first + i]``
    (i = 0 … S − 1, S = P + T − 1 − first); states before the first are zero."""
    n = states.shape[1] - 1 - first  # S
    if order == 1:
        return states[:, first:first + n]
    padded = torch.cat([states.new_zeros(states.shape[0], order - 1, *states.shape[2:]), states], dim=1)
    return torch.cat([padded[:, first + i:first + i + n] for i in range(order)], dim=-1)
