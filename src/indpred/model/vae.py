"""The factored temporal VAE: filter a video through the posterior, decode, roll the prior out.

Shapes: frames (B, T, C, H, W); latents and their statistics (B, T, K, d).
The image networks run once over all B·T frames (the encoder before the loop over
time, the decoder after it), and so do the frame's share of the posterior combiner
and the prior with trainable weights (after the loop, from the sampled states).
Inside the loop over time, the only sequential part, run just what must: the prior's
prediction as the posterior sees it, the combiner's remaining layers and the sample.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from indpred.config import ModelConfig
from indpred.errors import UserError
from indpred.model.decoder import Decoder
from indpred.model.encoder import Encoder
from indpred.model.layers import restore_buffers, snapshot_buffers
from indpred.model.posterior import Posterior
from indpred.model.transition import FactoredTransition, prior_input, prior_windows


@dataclass
class Filtered:
    """What one pass of the posterior over a video produced; every field is (B, T, K, d).

    ``prior_*`` at t holds p(z_t | z_{t-1}) evaluated at the sampled z_{t-1}
    (N(0, I) at the first step), so that KL(q_t || p_t) is the ELBO's KL term.
    """

    z: Tensor
    post_mean: Tensor
    post_logvar: Tensor
    prior_mean: Tensor
    prior_logvar: Tensor


PRECISIONS = ("fp32", "bf16")


@contextlib.contextmanager
def _running_stats_kept(net: nn.Module) -> Iterator[None]:
    """Whatever runs inside leaves the batch-norm running statistics of ``net`` as they were.

    Activation checkpointing runs a network's forward a second time during backward;
    this keeps that recomputation from updating the running statistics twice.
    """
    saved = snapshot_buffers(net)
    try:
        yield
    finally:
        restore_buffers(net, saved)


def _recompute_contexts(net: nn.Module) -> tuple[contextlib.AbstractContextManager, ...]:
    """Checkpointing's contexts: none for the forward, running statistics kept for the recompute."""
    return contextlib.nullcontext(), _running_stats_kept(net)


class FactoredVAE(nn.Module):
    """K parallel Markov chains of d units, a shared image encoder and a shared generator.

    How the two image networks execute is set by :meth:`configure` (float32 or bf16,
    memory layout, activation checkpointing): options for speed and memory that leave
    what the model computes unchanged up to float rounding.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        bounds = (c.logvar_min, c.logvar_max)
        self.encoder = Encoder(in_channels=c.channels, width=c.width, out_dim=c.enc_dim,
                               image_size=c.image_size)
        self.posterior = Posterior(enc_dim=c.enc_dim, z_dim=c.z_dim, logvar_bounds=bounds)
        self.transition = FactoredTransition(
            factors=c.factors, factor_dim=c.factor_dim, hidden=c.transition_hidden,
            layers=c.transition_layers, order=c.transition_order, logvar_bounds=bounds,
        )
        self.decoder = Decoder(
            z_dim=c.z_dim, out_channels=c.channels, width=c.width,
            groups=c.factors if c.decoder == "per-factor" else 1, image_size=c.image_size,
        )
        self.precision = "fp32"
        self.channels_last = False
        self.activation_checkpointing = False

    def configure(
        self, *, precision: str = "fp32", channels_last: bool = False,
        activation_checkpointing: bool = False,
    ) -> FactoredVAE:
        """Set how the image networks run in training; returns ``self``.

        ``precision="bf16"``: the encoder and generator run under bf16 autocast in
        training mode (their outputs are cast back to float32, so the combiner, the
        transitions and every ELBO term stay float32; eval mode always runs float32).
        ``channels_last``: convolution weights and frames in NHWC layout (faster with
        cuDNN on tensor cores). ``activation_checkpointing``: keep only each image
        network's input and output for backward and recompute the rest there, trading
        one more forward pass of both networks for their activation memory.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.channels_last = channels_last
        self.activation_checkpointing = activation_checkpointing
        if channels_last:
            for net in (self.encoder, self.decoder):
                net.to(memory_format=torch.channels_last)
        return self

    def _image_net(self, net: nn.Module, x: Tensor, call=None) -> Tensor:
        """Run an image network (or ``call``, one of its methods) on a batch of frames or
        latents, as configured; float32 out."""
        call = net if call is None else call
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        bf16 = self.precision == "bf16" and self.training
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                out = checkpoint(call, x, use_reentrant=False, preserve_rng_state=False,
                                 context_fn=functools.partial(_recompute_contexts, net))
            else:
                out = call(x)
        return out.float()

    @property
    def factors(self) -> int:
        return self.config.factors

    @property
    def factor_dim(self) -> int:
        return self.config.factor_dim

    def _check_frames(self, frames: Tensor) -> None:
        c = self.config
        if frames.dim() != 5 or tuple(frames.shape[2:]) != (c.channels, c.image_size, c.image_size):
            raise ValueError(
                f"expected frames of shape (B, T, {c.channels}, {c.image_size}, {c.image_size}), "
                f"got {tuple(frames.shape)}"
            )

    def encode_frames(self, frames: Tensor) -> Tensor:
        """Image features of every frame at once: (B, T, C, H, W) → (B, T, enc_dim)."""
        self._check_frames(frames)
        B, T = frames.shape[:2]
        features = self._image_net(self.encoder, frames.flatten(0, 1))  # (B·T, enc_dim)
        return features.unflatten(0, (B, T))

    def history(self, initial: Tensor | None) -> list[Tensor]:
        """The states before a video's first frame as a list of (B, K, d), oldest first: none,
        or ``initial`` (B, K, d) (one state) or (B, P, K, d) (its last ``transition_order``
        states are kept)."""
        if initial is None:
            return []
        states = initial[:, None] if initial.dim() == 3 else initial  # (B, P, K, d)
        return list(states[:, -self.config.transition_order:].unbind(1))

    def carry(self, initial: Tensor | None, z: Tensor) -> Tensor:
        """What a chunk hands the next as its ``initial``: the last states the prior reads,
        (B, P, K, d) with P ≤ ``transition_order``, from its own ``initial`` and its states z
        (B, T, K, d). Continuing from it gives the same result as one piece."""
        past = self.history(initial)
        return torch.stack([*past, *z.unbind(1)][-self.config.transition_order:], dim=1)

    def filter(
        self,
        frames: Tensor,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        sample: bool = True,
        initial: Tensor | None = None,
    ) -> Filtered:
        """Run q(z_t | z_{t-1}, x_t) along the video, t = 1..T.

        ``noise`` (B, T, K, d) fixes the reparameterisation noise; otherwise it is drawn
        from ``generator``. With ``sample=False`` each state is the posterior mean.
        ``initial`` holds the states before the first frame (see :meth:`history`; to continue
        a video in chunks pass the previous chunk's :meth:`carry`); without it the first
        step uses the N(0, I) prior.
        """
        features = self.encode_frames(frames)  # (B, T, enc_dim)
        B, T = features.shape[:2]
        K, d, order = self.factors, self.factor_dim, self.config.transition_order
        if noise is None and sample:
            noise = torch.randn(B, T, K, d, device=frames.device, generator=generator)
        frame_part = self.posterior.frame_part(features)  # (B, T, z_dim), every frame at once
        zeros = features.new_zeros(B, K, d)
        # The prior's prediction as the posterior sees it: transition weights frozen
        # ("state": the gradient reaches the previous states) or no gradient at all ("none").
        view = self.transition.frozen() if self.config.posterior_prior_grad == "state" else None
        past = self.history(initial)
        states = list(past)
        out: dict[str, list[Tensor]] = {k: [] for k in ("z", "qm", "qv")}
        for t in range(T):
            if not states:  # t = 1: N(0, I) prior, zero vectors as the posterior's view of it
                seen_mean, seen_std = zeros, zeros
            else:
                previous = prior_input(states, order)  # (B, K, order·d)
                if view is not None:
                    seen_mean, seen_logvar = view(previous)  # (B, K, d)
                else:
                    with torch.no_grad():
                        seen_mean, seen_logvar = self.transition(previous)  # (B, K, d)
                seen_std = torch.exp(0.5 * seen_logvar)
            post_mean, post_logvar = self.posterior.step(
                frame_part[:, t], seen_mean.flatten(1), seen_std.flatten(1)
            )  # (B, K·d) each
            post_mean = post_mean.unflatten(1, (K, d))  # (B, K, d)
            post_logvar = post_logvar.unflatten(1, (K, d))  # (B, K, d)
            z = post_mean + torch.exp(0.5 * post_logvar) * noise[:, t] if sample else post_mean  # (B, K, d)
            for key, value in zip(out, (z, post_mean, post_logvar)):
                out[key].append(value)
            states = [*states, z][-order:]  # the states the next step's prior reads
        z, qm, qv = (torch.stack(out[k], dim=1) for k in out)  # (B, T, K, d) each
        pm, pv = self._prior(z, past)
        return Filtered(z=z, post_mean=qm, post_logvar=qv, prior_mean=pm, prior_logvar=pv)

    def _prior(self, z: Tensor, past: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The prior's statistics (B, T, K, d) for states z (B, T, K, d) after the states
        ``past``, with trainable weights, every step at once; N(0, I) where nothing came before."""
        B, _, K, d = z.shape
        P = len(past)
        states = torch.cat([torch.stack(past, dim=1), z], dim=1) if P else z  # (B, P + T, K, d)
        # The steps with a previous state (T, or T − 1 when nothing came before): their inputs
        # (B, S, K, order·d), the first step's previous state being states[:, P − 1] (or the first).
        inputs = prior_windows(states, max(P - 1, 0), self.config.transition_order)
        S = inputs.shape[1]
        if S:
            pm, pv = self.transition(inputs.flatten(0, 1))  # (B·S, K, d) each
            pm, pv = pm.unflatten(0, (B, S)), pv.unflatten(0, (B, S))  # (B, S, K, d)
        else:
            pm = pv = z.new_zeros(B, 0, K, d)
        if not P:
            zeros = z.new_zeros(B, 1, K, d)
            pm, pv = torch.cat([zeros, pm], dim=1), torch.cat([zeros, pv], dim=1)  # (B, T, K, d)
        return pm, pv

    def decode(self, z: Tensor) -> Tensor:
        """Pixel means g(z) of every frame at once: (B, T, K, d) → (B, T, C, H, W)."""
        B, T = z.shape[:2]
        return self._image_net(self.decoder, z.flatten(0, 1).flatten(1)).unflatten(0, (B, T))

    def layers(self, z: Tensor) -> Tensor:
        """What each factor draws, before the final activation: (B, T, K, d) → (B, T, K, C, H, W).

        Only the per-factor generator has layers: there ``decode(z) = sigmoid(layers(z).sum(2))``
        and layer k depends on factor k's state alone. The paper's shared generator mixes the
        factors from its first layer, so no image belongs to one factor.
        """
        if self.config.decoder != "per-factor":
            raise UserError("this model has the shared generator (model.decoder=shared), which mixes the "
                            "factors from its first layer: only a per-factor generator has layers")
        B, T = z.shape[:2]
        flat = z.flatten(0, 1).flatten(1)  # (B·T, K·d)
        return self._image_net(self.decoder, flat, self.decoder.layers).unflatten(0, (B, T))

    @torch.no_grad()
    def encode(self, frames: Tensor, *, sample: bool = False,
               generator: torch.Generator | None = None,
               initial: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The inference network alone: posterior means and variances (B, T, K, d).

        Each step's estimate uses the frames up to it (filtering). With ``sample=False``
        the state carried forward is the posterior mean, so the result is deterministic;
        a long video can be encoded in chunks, passing ``carry(initial, mean)`` of the previous
        chunk as ``initial`` (its last mean, or last two with ``transition_order`` 2), with the
        same result as in one piece.
        """
        f = self.filter(frames, sample=sample, generator=generator, initial=initial)
        return f.post_mean, torch.exp(f.post_logvar)

    @torch.no_grad()
    def rollout(
        self, z_last: Tensor, steps: int, *, sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Roll the learned prior forward from a state (B, K, d), or from the states so far
        (B, P, K, d), oldest first, of which it reads the last ``transition_order``: returns
        (B, steps, K, d)."""
        states = self.history(z_last)
        order = self.config.transition_order
        zs = []
        for _ in range(steps):
            mean, logvar = self.transition(prior_input(states, order))  # (B, K, d)
            if sample:
                eps = torch.randn(mean.shape, device=mean.device, generator=generator)
                z = mean + torch.exp(0.5 * logvar) * eps
            else:
                z = mean
            zs.append(z)
            states = [*states, z][-order:]  # the states the next step's prior reads
        return torch.stack(zs, dim=1)  # (B, steps, K, d)
