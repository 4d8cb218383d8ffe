"""The evidence lower bound, term by term (SPEC §1).

All functions broadcast and return element-wise terms; callers sum over the axes
they mean. Nothing here knows about networks: :func:`elbo_terms` takes what the
sequential model's filter produced.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from indpred.model.vae import FactoredVAE

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, logvar: Tensor | float) -> Tensor:
    """Element-wise ``log N(x; mean, exp(logvar))``, Gaussian constant included."""
    # a number becomes a fill, not a copy from the host (which a CUDA graph cannot hold)
    logvar = (logvar.to(dtype=mean.dtype, device=mean.device) if torch.is_tensor(logvar)
              else torch.full((), logvar, dtype=mean.dtype, device=mean.device))
    return -0.5 * (LOG_2PI + logvar + (x - mean).square() * torch.exp(-logvar))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Element-wise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats."""
    return 0.5 * (
        logvar2 - logvar1 + (torch.exp(logvar1) + (mean1 - mean2).square()) * torch.exp(-logvar2) - 1.0
    )


@dataclass
class ElboTerms:
    """Per-sequence ELBO terms in nats **per frame** (sequence totals divided by T).

    ``elbo = log_likelihood - kl.sum(-1)``; ``kl`` keeps one column per factor.
    """

    log_likelihood: Tensor  # (B,)
    kl: Tensor  # (B, K)

    @property
    def elbo(self) -> Tensor:  # (B,)
        return self.log_likelihood - self.kl.sum(-1)

    def detach(self) -> ElboTerms:
        return ElboTerms(log_likelihood=self.log_likelihood.detach(), kl=self.kl.detach())


def elbo_terms(
    frames: Tensor,
    x_mean: Tensor,
    obs_logvar: float,
    post_mean: Tensor,
    post_logvar: Tensor,
    prior_mean: Tensor,
    prior_logvar: Tensor,
) -> ElboTerms:
    """ELBO terms of a batch of sequences, with single-sample expectations.

    frames, x_mean: (B, T, C, H, W); posterior and prior statistics: (B, T, K, d).
    The KL is analytic given the sampled ``z_{t-1}`` that the prior was computed from.
    """
    T = frames.shape[1]
    # Σ_pixels log N(x; μ, σ_x²) with the constant summed analytically: two passes over the
    # frames instead of six (the likelihood is the only term as large as the images).
    pixels = frames[0].numel()  # T·C·H·W per sequence
    sq = (frames.float() - x_mean.float()).square().flatten(1).sum(1)  # (B,)
    ll = -0.5 * (pixels * (LOG_2PI + obs_logvar) + sq * math.exp(-obs_logvar)) / T  # (B,)
    kl = normal_kl(post_mean.float(), post_logvar.float(), prior_mean.float(), prior_logvar.float())
    kl = kl.sum(dim=(1, 3)) / T  # (B, K)
    return ElboTerms(log_likelihood=ll, kl=kl)


def sequence_elbo(
    model: FactoredVAE,
    frames: Tensor,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> ElboTerms:
    """One-sample ELBO terms of a batch of videos (B, T, C, H, W) under ``model``."""
    f = model.filter(frames, noise=noise, generator=generator)
    x_mean = model.decode(f.z)  # (B, T, C, H, W)
    return elbo_terms(
        frames, x_mean, math.log(model.config.obs_var),
        f.post_mean, f.post_logvar, f.prior_mean, f.prior_logvar,
    )


def training_loss(terms: ElboTerms, *, kl_weight: float | Tensor = 1.0, free_bits: float = 0.0,
                  batch_mean: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The loss a step minimises: ``−(log-likelihood − kl_weight·KL)`` averaged over the batch.

    With ``free_bits`` > 0 ("free bits", Kingma et al. 2016) each factor's batch-mean KL
    enters as ``max(KL_k, free_bits)``, decided on ``batch_mean(KL_k)`` (K numbers): the
    mean over the *global* batch under torchrun, so R ranks train what one process trains on
    their R·B sequences. The ELBO reported is always the true one.
    """
    if free_bits <= 0:
        return -(terms.log_likelihood - kl_weight * terms.kl.sum(-1)).mean()
    kl_mean = terms.kl.mean(0)  # (K,) this batch's
    decided = kl_mean.detach().clone()
    if batch_mean is not None:
        decided = batch_mean(decided)
    penalised = torch.where(decided > free_bits, kl_mean, kl_mean.new_full((), free_bits))
    return -terms.log_likelihood.mean() + kl_weight * penalised.sum()
