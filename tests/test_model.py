"""Shapes, factor independence, the posterior's gradient path, and the batched image nets."""

import math

import pytest
import torch

from indpred.config import ModelConfig
from indpred.model import FactoredVAE
from indpred.model.layers import soft_clamp
from indpred.model.transition import FactoredTransition
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
    torch.manual_seed(3)
    grads = {}
    for mode in ("state", "none"):
        model = FactoredVAE(small(posterior_prior_grad=mode))
        feats = torch.randn(2, 2, 32)
        z1 = torch.randn(2, 2, 3, requires_grad=True)
        pm, plv = model.transition(z1)
        seen_m, seen_lv = model._posterior_input(z1, pm, plv)
        out, _ = model.posterior(feats[:, 1], seen_m.flatten(1), (0.5 * seen_lv).exp().flatten(1))
        out.sum().backward()
        grads[mode] = z1.grad
    assert grads["state"].abs().sum() > 0
    assert grads["none"] is None or (grads["none"] == 0).all()


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


def test_per_factor_decoder_adds_one_image_per_factor():
    """g(a, b) = g1(a) + g2(b) before the activation: moving factor 2 changes the logits
    by the same amount whatever factor 1 holds, and the shared decoder does not have that."""
    torch.manual_seed(7)
    for layout, additive in (("per-factor", True), ("shared", False)):
        model = FactoredVAE(small(decoder=layout, decoder_output="linear")).eval()
        a, a2, b, b2 = torch.randn(4, 5, 1, 1, 3).unbind(0)  # (B, T, 1, d) each

        def g(f1, f2, model=model):
            return model.decode(torch.cat([f1, f2], dim=2))  # (B, T, C, H, W)

        with torch.no_grad():
            gap = (g(a, b2) - g(a, b)) - (g(a2, b2) - g(a2, b))
        assert (gap.abs().max() < 1e-4) == additive, layout


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


@pytest.mark.parametrize("layout", ["shared", "per-factor", "per-factor-logsumexp"])
@pytest.mark.parametrize("output", ["sigmoid", "linear"])
def test_output_init_draws_the_given_pixel_mean(layout, output):
    """With the last layer's weights at zero, the generator draws exactly its bias: after
    ``init_output(m)`` that is m per channel, whatever z is and however the groups combine."""
    compose = "logsumexp" if layout.endswith("logsumexp") else "sum"
    model = FactoredVAE(small(decoder=layout.removesuffix("-logsumexp"), decoder_output=output,
                              compose=compose)).eval()
    mean = torch.tensor([0.03, 0.2, 0.9])
    model.decoder.init_output(mean)
    with torch.no_grad():
        model.decoder.net[-1].weight.zero_()
        x = model.decode(torch.randn(2, 3, 2, 3))  # (B, T, C, H, W)
    assert torch.allclose(x, mean[:, None, None].expand_as(x), atol=1e-6)


def test_logsumexp_composition_is_a_soft_union_of_the_factors_images():
    """compose=logsumexp: each pixel is at least as bright as the brightest factor's own image
    and at most that image with its logit raised by log K, so a digit drawn by two factors at
    once is barely brighter than drawn by one (sum: the logits add, the image is σ(Σ l_k))."""
    torch.manual_seed(3)
    z = torch.randn(6, 2 * 3)  # (N, K·d)
    for compose in ("logsumexp", "sum"):
        model = FactoredVAE(small(decoder="per-factor", compose=compose)).eval()
        with torch.no_grad():
            logits = model.decoder.factor_logits(z)  # (N, K, C, H, W)
            out = model.decoder(z)  # (N, C, H, W)
        if compose == "sum":
            assert torch.allclose(out, torch.sigmoid(logits.sum(1)), atol=1e-6)
            continue
        brightest = logits.max(1).values
        assert (out >= torch.sigmoid(brightest) - 1e-6).all()
        assert (out <= torch.sigmoid(brightest + math.log(2)) + 1e-6).all()
        assert (out - torch.sigmoid(logits.sum(1))).abs().max() > 1e-2  # differs from the sum


def blob_posterior():
    """An attention posterior with hand-set weights on a two-channel map: key = 20·features."""
    from torch import nn

    from indpred.model.posterior import AttentionPosterior

    att = AttentionPosterior(feature_dim=2, locations=64, factors=2, factor_dim=3, slots=2, dim=4)
    att.norm = nn.Identity()
    with torch.no_grad():
        first, second = att.key[0], att.key[2]
        first.weight.zero_()
        first.bias.zero_()
        first.weight[0, 0] = first.weight[1, 1] = 20.0  # channel c of the map → key unit c
        second.weight.copy_(torch.eye(4))
        second.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))  # unit 3: present everywhere
    return att


def blob_map():
    """Channel 0 lights up blob A, channel 1 blob B, on the 8 x 8 grid; their centroids."""
    features = torch.zeros(64, 2)
    a, b = [(1, 1), (1, 2), (2, 1), (2, 2)], [(5, 6), (6, 6), (6, 5)]
    axis = torch.linspace(-1.0, 1.0, 8)
    centroid = {}
    for name, cells, channel in (("a", a, 0), ("b", b, 1)):
        for r, c in cells:
            features[r * 8 + c, channel] = 1.0
        centroid[name] = torch.tensor([[axis[r], axis[c]] for r, c in cells]).mean(0)
    return features, centroid, len(a), len(b)


def test_attention_slot_reads_the_centroid_and_share_of_what_it_wins():
    att = blob_posterior()
    features, centroid, n_a, n_b = blob_map()
    part = att.frame_part(features[None])  # (1, 64, 2D + 2)
    # slot 0 looks for channel 0, slot 1 for channel 1, the background query for unit 3
    queries = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 4.0]])[None]
    slots = att.read(part, queries)[0]  # (S, D + 3)
    torch.testing.assert_close(slots[0, :2], centroid["a"], atol=1e-2, rtol=0)
    torch.testing.assert_close(slots[1, :2], centroid["b"], atol=1e-2, rtol=0)
    assert slots[0, -1].item() == pytest.approx(math.log(n_a / 64), abs=1e-2)
    assert slots[1, -1].item() == pytest.approx(math.log(n_b / 64), abs=1e-2)
    # one slot that takes both blobs reads their blend: the mean position of all their cells
    queries = torch.tensor([[2.0, 2.0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 4.0]])[None]
    both = att.read(part, queries)[0, 0]
    blend = (centroid["a"] * n_a + centroid["b"] * n_b) / (n_a + n_b)
    torch.testing.assert_close(both[:2], blend, atol=1e-2, rtol=0)
    # two slots that want the same blob split it: each is left with half its area
    queries = torch.tensor([[2.0, 0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 4.0]])[None]
    halves = att.read(part, queries)[0]
    for k in range(2):
        assert halves[k, -1].item() == pytest.approx(math.log(n_a / 2 / 64), abs=1e-2)
        torch.testing.assert_close(halves[k, :2], centroid["a"], atol=1e-2, rtol=0)


def test_attention_posterior_factor_sees_its_own_prediction_only_through_its_slots():
    torch.manual_seed(3)
    model = FactoredVAE(small(posterior="attention", attention_dim=8)).eval()
    part = model.posterior.frame_part(torch.randn(1, 64, model.encoder.out_dim))
    with torch.no_grad():
        model.posterior.from_prediction.weight.zero_()  # queries no longer read the prediction
    mean, std = torch.randn(1, 6), torch.rand(1, 6) + 0.5
    mean2 = mean.clone()
    mean2[0, 3:] += 1.0  # change factor 2's prediction only
    a, _ = model.posterior.step(part, mean, std)
    b, _ = model.posterior.step(part, mean2, std)
    torch.testing.assert_close(a[0, :3], b[0, :3])  # factor 1 unchanged
    assert not torch.allclose(a[0, 3:], b[0, 3:])


def test_attention_entangled_twin_keeps_the_slots():
    from indpred.config import RunConfig, entangled
    from indpred.errors import UserError

    cfg = RunConfig(model=small(posterior="attention")).resolve()
    twin = entangled(cfg)
    assert twin.model.factors == 1 and twin.model.slot_count == 2
    twin_model, model = FactoredVAE(twin.model), FactoredVAE(cfg.model)
    assert model.encoder.spatial and twin_model.posterior.slots == model.posterior.slots == 2
    cfg.model.slots = 3
    with pytest.raises(UserError, match=r"multiple of model\.factors"):
        cfg.resolve()
