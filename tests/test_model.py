"""Shapes, factor independence, the posterior's gradient path, and the batched image nets."""

import itertools

import pytest
import torch

from indpred.config import ModelConfig
from indpred.errors import UserError
from indpred.model import FactoredVAE, restore_buffers, snapshot_buffers
from indpred.model.layers import soft_clamp
from indpred.model.transition import FactoredTransition, prior_input, prior_windows
from indpred.objective import sequence_elbo


def small(**kw) -> ModelConfig:
    base = dict(factors=2, factor_dim=3, width=0.125, channels=3, transition_hidden=16)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("K", [1, 2, 4])
def test_shapes(K):
    torch.manual_seed(0)
    model = FactoredVAE(small(factors=K, factor_dim=5))
    B, T = 3, 4
    x = torch.rand(B, T, 3, 64, 64)
    f = model.filter(x)
    for t in (f.z, f.post_mean, f.post_logvar, f.prior_mean, f.prior_logvar):
        assert t.shape == (B, T, K, 5)
    assert model.decode(f.z).shape == (B, T, 3, 64, 64)
    terms = sequence_elbo(model, x)
    assert terms.log_likelihood.shape == (B,) and terms.kl.shape == (B, K)
    mean, var = model.encode(x)
    assert mean.shape == var.shape == (B, T, K, 5) and (var > 0).all()
    assert model.rollout(f.z[:, -1], 6).shape == (B, 6, K, 5)


def test_first_step_prior_is_standard_normal():
    model = FactoredVAE(small())
    f = model.filter(torch.rand(2, 3, 3, 64, 64))
    assert (f.prior_mean[:, 0] == 0).all() and (f.prior_logvar[:, 0] == 0).all()


def test_wrong_frame_shape_is_refused():
    model = FactoredVAE(small())
    with pytest.raises(ValueError, match="expected frames of shape"):
        model.filter(torch.rand(2, 3, 1, 64, 64))


def test_transition_factor_j_ignores_factor_i():
    torch.manual_seed(0)
    tr = FactoredTransition(factors=4, factor_dim=3, hidden=8, layers=4)
    z = torch.randn(5, 4, 3)
    jac_mean, jac_logvar = torch.autograd.functional.jacobian(lambda z: tr(z), z)
    # jac[b, j, :, b', i, :] = d out[b, j] / d z[b', i]
    for jac in (jac_mean, jac_logvar):
        for j in range(4):
            for i in range(4):
                block = jac[:, j, :, :, i, :]
                if i != j:
                    assert (block == 0).all()
                else:
                    assert block.abs().sum() > 0


def test_a_second_order_prior_reads_each_factors_own_two_states_only():
    """p(z_t^k | z_{t-2}^k, z_{t-1}^k): factor k's output depends on both of factor k's states
    and on no state of any other factor (the Jacobian's off-diagonal blocks are exactly zero)."""
    torch.manual_seed(3)
    K, d = 3, 2
    tr = FactoredTransition(factors=K, factor_dim=d, hidden=8, layers=3, order=2)
    older, last = torch.randn(2, 5, K, d).unbind(0)

    def prior(older, last):
        return tr(torch.cat([older, last], dim=-1))

    jacobians = torch.autograd.functional.jacobian(prior, (older, last))  # per output, per input
    for per_input in jacobians:
        for jac in per_input:  # (B, K, d, B, K, d)
            for j in range(K):
                for i in range(K):
                    block = jac[:, j, :, :, i, :]
                    assert (block == 0).all() if i != j else block.abs().sum() > 0


def test_second_order_prior_input_puts_the_older_state_first_and_zero_before_the_video():
    a, b, c = torch.randn(3, 2, 2, 4).unbind(0)
    assert torch.equal(prior_input([a], 2), torch.cat([torch.zeros_like(a), a], -1))
    assert torch.equal(prior_input([a, b, c], 2), torch.cat([b, c], -1))
    states = torch.stack([a, b, c], dim=1)  # (B, 3, K, d)
    windows = prior_windows(states, 0, 2)  # the steps after a and after b
    assert torch.equal(windows[:, 0], prior_input([a], 2))
    assert torch.equal(windows[:, 1], prior_input([a, b], 2))


def test_batched_transition_equals_one_mlp_per_factor():
    torch.manual_seed(1)
    tr = FactoredTransition(factors=3, factor_dim=2, hidden=8, layers=4)
    z = torch.randn(6, 3, 2)
    mean, logvar = tr(z)
    for k in range(3):
        h = z[:, k]
        for i, (w, b) in enumerate(zip(tr.weights, tr.biases)):
            h = h @ w[k] + b[k]
            if i < len(tr.weights) - 1:
                h = torch.nn.functional.selu(h)
        torch.testing.assert_close(mean[:, k], h[:, :2])
        torch.testing.assert_close(logvar[:, k], soft_clamp(h[:, 2:], -10.0, 5.0))


def test_soft_clamp_bounds_and_is_near_identity_inside():
    x = torch.linspace(-100, 100, 2001)
    y = soft_clamp(x, -10.0, 5.0)
    assert (y >= -10).all() and (y <= 5).all() and (y.diff() >= 0).all()
    middle = (x > -7) & (x < 1)
    assert (y[middle] - x[middle]).abs().max() < 0.05


@pytest.mark.parametrize("mode", ["state", "none"])
def test_posterior_path_never_updates_transition(mode):
    torch.manual_seed(2)
    model = FactoredVAE(small(posterior_prior_grad=mode))
    f = model.filter(torch.rand(2, 3, 3, 64, 64))
    # A loss on the posterior alone (at t >= 2 it sees the prior's prediction).
    f.post_mean[:, 1:].sum().add(f.post_logvar[:, 1:].sum()).backward()
    for p in model.transition.parameters():
        assert p.grad is None or (p.grad == 0).all()
    assert model.posterior.from_mean.weight.grad.abs().sum() > 0
    # "state": the gradient still reaches z_{t-1} (hence the encoder through step 1).
    enc_grad = model.encoder.net[0].weight.grad
    assert enc_grad is not None and enc_grad.abs().sum() > 0


def test_state_mode_passes_gradient_to_previous_state_none_mode_does_not():
    """The posterior at the first frame after ``initial`` sees the prior's prediction from it:
    "state" passes the gradient on to that state, "none" does not, and neither to the weights."""
    torch.manual_seed(3)
    grads = {}
    for mode in ("state", "none"):
        model = FactoredVAE(small(posterior_prior_grad=mode))
        z1 = torch.randn(2, 2, 3, requires_grad=True)
        f = model.filter(torch.rand(2, 1, 3, 64, 64), initial=z1)
        f.post_mean.sum().add(f.post_logvar.sum()).backward()
        grads[mode] = z1.grad
        assert all(p.grad is None for p in model.transition.parameters())
    assert grads["state"].abs().sum() > 0
    assert grads["none"] is None


def test_kl_term_trains_the_transition():
    model = FactoredVAE(small())
    sequence_elbo(model, torch.rand(2, 3, 3, 64, 64)).elbo.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.transition.parameters())


def test_image_networks_run_once_over_all_frames():
    model = FactoredVAE(small())
    calls = {"encoder": [], "decoder": []}
    model.encoder.register_forward_hook(lambda m, i, o: calls["encoder"].append(i[0].shape[0]))
    model.decoder.register_forward_hook(lambda m, i, o: calls["decoder"].append(i[0].shape[0]))
    sequence_elbo(model, torch.rand(3, 5, 3, 64, 64))
    assert calls == {"encoder": [15], "decoder": [15]}


def test_encode_uses_inference_network_only_and_is_deterministic():
    torch.manual_seed(4)
    model = FactoredVAE(small()).eval()
    model.decoder.register_forward_hook(lambda *a: pytest.fail("encode must not run the decoder"))
    x = torch.rand(2, 4, 3, 64, 64)
    m1, v1 = model.encode(x)
    m2, v2 = model.encode(x)
    assert torch.equal(m1, m2) and torch.equal(v1, v2)
    # filtering: the estimate at t depends on frames up to t only
    x2 = x.clone()
    x2[:, 3] = torch.rand_like(x2[:, 3])
    m3, _ = model.encode(x2)
    assert torch.equal(m1[:, :3], m3[:, :3]) and not torch.equal(m1[:, 3], m3[:, 3])


def test_fixed_noise_makes_the_elbo_reproducible():
    torch.manual_seed(5)
    model = FactoredVAE(small())
    x = torch.rand(2, 3, 3, 64, 64)
    noise = torch.randn(2, 3, 2, 3)
    a = sequence_elbo(model, x, noise=noise).elbo
    b = sequence_elbo(model, x, noise=noise).elbo
    torch.testing.assert_close(a, b)


def test_width_one_has_the_papers_channels():
    model = FactoredVAE(ModelConfig(factors=2, factor_dim=16, width=1.0))
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 32]
    deconvs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [c.out_channels for c in deconvs] == [512, 256, 128, 64, 3]
    assert deconvs[0].in_channels == 32


def test_encoding_in_chunks_equals_encoding_in_one_piece():
    torch.manual_seed(6)
    model = FactoredVAE(small()).eval()
    x = torch.rand(2, 7, 3, 64, 64)
    whole_mean, whole_var = model.encode(x)
    m1, v1 = model.encode(x[:, :3])
    m2, v2 = model.encode(x[:, 3:], initial=m1[:, -1])
    torch.testing.assert_close(torch.cat([m1, m2], 1), whole_mean)
    torch.testing.assert_close(torch.cat([v1, v2], 1), whole_var)


@pytest.mark.parametrize("cuts", [(3,), (1, 2, 4), (1, 2, 3, 4, 5, 6)])
def test_second_order_encoding_in_chunks_carries_two_states(cuts):
    """With transition_order 2 a chunk hands the next its last two means (one after a
    one-frame first chunk): any cut gives the one-piece result; carrying one state would not."""
    torch.manual_seed(6)
    model = FactoredVAE(small(transition_order=2)).eval()
    x = torch.rand(2, 7, 3, 64, 64)
    whole_mean, whole_var = model.encode(x)
    state, means, variances = None, [], []
    for a, b in itertools.pairwise((0, *cuts, 7)):
        m, v = model.encode(x[:, a:b], initial=state)
        state = model.carry(state, m)
        means.append(m)
        variances.append(v)
    torch.testing.assert_close(torch.cat(means, 1), whole_mean)
    torch.testing.assert_close(torch.cat(variances, 1), whole_var)
    m1, _ = model.encode(x[:, :3])
    one_state, _ = model.encode(x[:, 3:], initial=m1[:, -1])
    assert not torch.allclose(one_state, whole_mean[:, 3:])


def test_second_order_rollout_continues_from_the_last_two_states():
    torch.manual_seed(8)
    model = FactoredVAE(small(transition_order=2)).eval()
    z = torch.randn(2, 4, 2, 3)  # (B, T, K, d)
    rolled = model.rollout(z, 3, sample=False)
    older, last = z[:, -2], z[:, -1]
    for t in range(3):
        mean, _ = model.transition(torch.cat([older, last], -1))
        torch.testing.assert_close(rolled[:, t], mean)
        older, last = last, mean


def test_per_factor_decoder_adds_one_image_per_factor():
    """g(a, b) = σ(g1(a) + g2(b)): moving factor 2 changes the logits by the same amount
    whatever factor 1 holds, and the shared decoder does not have that."""
    torch.manual_seed(7)
    for layout, additive in (("per-factor", True), ("shared", False)):
        model = FactoredVAE(small(decoder=layout)).eval()
        a, a2, b, b2 = torch.randn(4, 5, 1, 1, 3).unbind(0)  # (B, T, 1, d) each

        def g(f1, f2, model=model):
            return torch.logit(model.decode(torch.cat([f1, f2], dim=2)))  # (B, T, C, H, W) logits

        with torch.no_grad():
            gap = (g(a, b2) - g(a, b)) - (g(a2, b2) - g(a2, b))
        assert (gap.abs().max() < 1e-4) == additive, layout


def test_layers_sum_to_the_generators_output_before_its_activation_each_from_its_own_factor():
    torch.manual_seed(8)
    model = FactoredVAE(small(factors=3, decoder="per-factor")).eval()
    z = torch.randn(2, 4, 3, 3)  # (B, T, K, d)
    with torch.no_grad():
        layers = model.layers(z)  # (B, T, K, C, H, W)
        assert layers.shape == (2, 4, 3, 3, 64, 64)
        torch.testing.assert_close(torch.sigmoid(layers.sum(2)), model.decode(z), atol=1e-6, rtol=0)
        moved = z.clone()
        moved[:, :, 1] += 1.0  # factor 2 alone changes: only its layer may change
        change = (model.layers(moved) - layers).abs().amax(dim=(0, 1, 3, 4, 5))  # (K,)
    assert change[0] == 0 and change[2] == 0 and change[1] > 1e-5


def test_the_shared_generator_has_no_layers():
    model = FactoredVAE(small(decoder="shared")).eval()
    with pytest.raises(UserError, match="only a per-factor generator has layers"):
        model.layers(torch.zeros(1, 2, 2, 3))


def test_per_factor_decoder_keeps_the_channel_widths_and_splits_them():
    shared = FactoredVAE(ModelConfig(factors=2, factor_dim=16, width=1.0))
    split = FactoredVAE(ModelConfig(factors=2, factor_dim=16, width=1.0, decoder="per-factor"))
    widths = [[c.out_channels for c in m.decoder.modules() if isinstance(c, torch.nn.ConvTranspose2d)]
              for m in (shared, split)]
    assert widths == [[512, 256, 128, 64, 3], [512, 256, 128, 64, 6]]  # 6: an RGB image per factor
    n_shared, n_split = (sum(p.numel() for p in m.decoder.net.parameters()) for m in (shared, split))
    assert n_split < 0.55 * n_shared  # two half-width generators: about half the weights
    one = FactoredVAE(ModelConfig(factors=1, factor_dim=32, width=1.0, decoder="per-factor"))
    assert sum(p.numel() for p in one.decoder.parameters()) == sum(
        p.numel() for p in shared.decoder.parameters())  # K = 1: the paper's generator


@pytest.mark.parametrize(("size", "blocks"), [(32, 3), (64, 4), (128, 5)])
def test_the_image_networks_take_their_depth_from_the_frame_size(size, blocks):
    """DCGAN's rule: 64 channels (times the width) at the first block, doubling down to 4 x 4."""
    model = FactoredVAE(small(image_size=size, decoder="per-factor")).eval()
    strided = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert [m.out_channels for m in strided] == [round((64 << i) * 0.125) for i in range(blocks)]
    up = [m for m in model.decoder.modules()
          if isinstance(m, torch.nn.ConvTranspose2d) and m.stride == (2, 2)]
    assert len(up) == blocks
    frames = torch.rand(2, 3, 3, size, size)
    with torch.no_grad():
        f = model.filter(frames)
        assert model.decode(f.z).shape == frames.shape and model.layers(f.z).shape == (2, 3, 2, 3, size, size)
    with pytest.raises(ValueError, match=f"expected frames of shape \\(B, T, 3, {size}, {size}\\)"):
        other = 64 if size != 64 else 32
        model.filter(torch.rand(1, 2, 3, other, other))


def test_buffer_snapshot_undoes_what_a_training_step_did_to_batch_norm():
    model = FactoredVAE(small()).train()
    before = [b.clone() for b in model.buffers()]
    snapshot = snapshot_buffers(model)
    sequence_elbo(model, torch.rand(2, 3, 3, 64, 64))  # updates the running statistics
    assert not all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot))  # copies, not the buffers
    restore_buffers(model, snapshot)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    with pytest.raises(ValueError, match="cannot restore"):
        restore_buffers(model, snapshot[:-1])
