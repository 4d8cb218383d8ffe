"""Test-set lower bound: ELBO per frame and its terms over a fixed set of sequences."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from indpred.model import FactoredVAE
from indpred.objective import gaussian_log_likelihood, sequence_elbo


@torch.no_grad()
def dataset_elbo(
    model: FactoredVAE,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float | list[float] | int]:
    """Mean ELBO per frame over every sequence of ``dataset`` (with its standard error).

    Runs in eval mode (batch-norm running statistics) with reparameterisation noise
    from a generator seeded by ``seed``, so repeated calls give the same figure.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    elbos, lls, kls = [], [], []
    n = len(dataset)
    for start in range(0, n, batch_size):
        indices = list(range(start, min(n, start + batch_size)))
        frames = dataset.get_batch(indices)["frames"].to(device)  # (b, T, C, H, W)
        terms = sequence_elbo(model, frames, generator=generator)
        elbos.append(terms.elbo.cpu())
        lls.append(terms.log_likelihood.cpu())
        kls.append(terms.kl.cpu())
    model.train(was_training)
    elbo = torch.cat(elbos).double()
    return {
        "elbo": elbo.mean().item(),
        "elbo_stderr": (elbo.std().item() / math.sqrt(len(elbo))) if len(elbo) > 1 else 0.0,
        "log_likelihood": torch.cat(lls).double().mean().item(),
        "kl": torch.cat(kls).double().mean(0).tolist(),
        "sequences": len(elbo),
    }


@torch.no_grad()
def importance_weighted_bound(
    model: FactoredVAE,
    frames: torch.Tensor,
    *,
    samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Importance-weighted bound on log p(x_{1:T}) per frame, one value per sequence (B,).

    Draws ``samples`` trajectories from the filtering posterior and averages the
    weights p(x, z) / q(z | x) inside the log (Burda et al. 2016); with one sample
    it is the ELBO, and it tightens towards log p(x) as ``samples`` grows.
    frames: (B, T, C, H, W).
    """
    B, T = frames.shape[:2]
    repeated = frames.repeat_interleave(samples, dim=0)  # (B·S, T, C, H, W)
    f = model.filter(repeated, generator=generator)
    x_mean = model.decode(f.z)  # (B·S, T, C, H, W)
    log_px = gaussian_log_likelihood(repeated, x_mean, math.log(model.config.obs_var))
    log_px = log_px.flatten(1).sum(1)  # (B·S,)
    log_prior = gaussian_log_likelihood(f.z, f.prior_mean, f.prior_logvar).flatten(1).sum(1)
    log_post = gaussian_log_likelihood(f.z, f.post_mean, f.post_logvar).flatten(1).sum(1)
    log_w = (log_px + log_prior - log_post).view(B, samples)  # (B, S)
    return (torch.logsumexp(log_w.double(), dim=1) - math.log(samples)).float() / T  # (B,)
