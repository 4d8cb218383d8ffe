"""A naive implementation of the ELBO, kept as a reference for tests and benchmarks only.

It computes what :func:`indpred.objective.sequence_elbo` computes, with the parameters
of a :class:`~indpred.model.vae.FactoredVAE`, the obvious way: the image encoder and the
generator are called once per time step, and each factor's transition MLP is evaluated
in a Python loop over factors, from its own slice ``transition.weights[i][k]`` of the
stacked weights. Training never uses it.

* The tests compare it with the vectorised model on the same weights and the same
  noise: the ELBO terms and every gradient agree to float tolerance. In training mode
  batch norm normalises over the frames of one call, B here and B·T in the model, so
  the comparison is made in eval mode (running statistics), where both compute the
  same function.
* ``benchmarks/train_throughput.py`` times it beside the model, as the cost that
  vectorising over time and factors saves.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from indpred.model.layers import soft_clamp
from indpred.model.transition import FactoredTransition
from indpred.model.vae import FactoredVAE
from indpred.objective import ElboTerms, gaussian_log_likelihood, normal_kl


def naive_transition(
    transition: FactoredTransition, z_prev: Tensor, *, detach_params: bool = False
) -> tuple[Tensor, Tensor]:
    """p(z_t | z_{t-1}) factor by factor: mean and log-variance (B, K, d) from (B, K, order·d)."""
    n = len(transition.weights)
    means, logvars = [], []
    for k in range(transition.factors):
        h = z_prev[:, k]  # (B, d)
        for i, (w, b) in enumerate(zip(transition.weights, transition.biases)):
            wk, bk = w[k], b[k]  # (in, out), (out,)
            if detach_params:
                wk, bk = wk.detach(), bk.detach()
            h = h @ wk + bk  # (B, out)
            if i < n - 1:
                h = F.selu(h)
        mean, raw_logvar = h.chunk(2, dim=-1)  # (B, d) each
        means.append(mean)
        logvars.append(soft_clamp(raw_logvar, *transition.logvar_bounds))
    return torch.stack(means, dim=1), torch.stack(logvars, dim=1)  # (B, K, d) each


def naive_sequence_elbo(
    model: FactoredVAE,
    frames: Tensor,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> ElboTerms:
    """One-sample ELBO terms of videos (B, T, C, H, W), one time step and one factor at a time.

    ``noise`` (B, T, K, d) fixes the reparameterisation noise, as in ``sequence_elbo``.
    """
    model._check_frames(frames)
    B, T = frames.shape[:2]
    K, d = model.factors, model.factor_dim
    if noise is None:
        noise = torch.randn(B, T, K, d, device=frames.device, generator=generator)
    obs_logvar = math.log(model.config.obs_var)
    zeros = frames.new_zeros(B, K, d)
    ll = frames.new_zeros(B)
    kl = frames.new_zeros(B, K)
    order = model.config.transition_order
    z_prev: Tensor | None = None
    z_older = zeros  # z_{t-2}: the prior mean, zero, before the first frame
    for t in range(T):
        features = model.encoder(frames[:, t])  # (B, enc_dim)
        if z_prev is None:
            prior_mean, prior_logvar = zeros, zeros
            seen_mean, seen_std = zeros, zeros
        else:
            seen = z_prev if order == 1 else torch.cat([z_older, z_prev], dim=-1)  # (B, K, order·d)
            prior_mean, prior_logvar = naive_transition(model.transition, seen)  # (B, K, d)
            if model.config.posterior_prior_grad == "none":
                seen_mean, seen_logvar = prior_mean.detach(), prior_logvar.detach()
            else:
                seen_mean, seen_logvar = naive_transition(model.transition, seen, detach_params=True)
            seen_std = torch.exp(0.5 * seen_logvar)
        post_mean, post_logvar = model.posterior(features, seen_mean.flatten(1), seen_std.flatten(1))
        post_mean = post_mean.unflatten(1, (K, d))  # (B, K, d)
        post_logvar = post_logvar.unflatten(1, (K, d))  # (B, K, d)
        z = post_mean + torch.exp(0.5 * post_logvar) * noise[:, t]  # (B, K, d)
        x_mean = model.decoder(z.flatten(1))  # (B, C, H, W)
        ll = ll + gaussian_log_likelihood(frames[:, t], x_mean, obs_logvar).flatten(1).sum(1)
        kl = kl + normal_kl(post_mean, post_logvar, prior_mean, prior_logvar).sum(-1)  # (B, K)
        if z_prev is not None:
            z_older = z_prev
        z_prev = z
    return ElboTerms(log_likelihood=ll / T, kl=kl / T)
