"""The fast paths compute what the plain ones do: the vectorised model against the naive
reference, activation checkpointing, channels-last, bf16, batches from DataLoader workers.

Correctness only; the speed itself is measured by benchmarks/ (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import copy

import pytest
import torch

from indpred.config import ModelConfig, RunConfig, apply_overrides
from indpred.data import MovingMNIST
from indpred.errors import UserError
from indpred.model import FactoredVAE
from indpred.objective import sequence_elbo
from indpred.testing.naive import naive_sequence_elbo, naive_transition
from indpred.train import step_batches


def small(**kw) -> ModelConfig:
    base = dict(factors=3, factor_dim=4, width=0.125, channels=3, transition_hidden=16)
    base.update(kw)
    return ModelConfig(**base)


def with_running_statistics(model: FactoredVAE) -> FactoredVAE:
    """Batch norm with non-trivial running statistics, then eval mode (see the naive module)."""
    model.train()
    with torch.no_grad():
        model.filter(torch.rand(6, 3, 3, 64, 64) * 0.8)
    return model.eval()


def grads(model: FactoredVAE, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    names, params = zip(*model.named_parameters())
    return dict(zip(names, torch.autograd.grad(loss, params)))


@pytest.mark.parametrize(("mode", "order"), [("state", 1), ("none", 1), ("state", 2), ("none", 2)])
def test_vectorised_model_equals_the_naive_reference(mode, order):
    torch.manual_seed(0)
    config = small(posterior_prior_grad=mode, transition_order=order)
    model = with_running_statistics(FactoredVAE(config))
    frames = torch.rand(2, 5, 3, 64, 64)
    noise = torch.randn(2, 5, 3, 4)
    fast = sequence_elbo(model, frames, noise=noise)
    slow = naive_sequence_elbo(model, frames, noise=noise)
    torch.testing.assert_close(fast.log_likelihood, slow.log_likelihood, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(fast.kl, slow.kl, rtol=1e-5, atol=1e-5)
    g_fast = grads(model, -fast.elbo.sum())
    g_slow = grads(model, -slow.elbo.sum())
    for name, g in g_slow.items():
        assert g.abs().sum() > 0, name  # every parameter takes part
        torch.testing.assert_close(g_fast[name], g, rtol=1e-4, atol=1e-5 * g.abs().max().item(),
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_naive_transition_is_one_mlp_per_factor():
    torch.manual_seed(1)
    model = FactoredVAE(small())
    z = torch.randn(5, 3, 4)
    for a, b in zip(model.transition(z), naive_transition(model.transition, z)):
        torch.testing.assert_close(a, b)


def test_activation_checkpointing_leaves_gradients_and_statistics_unchanged():
    torch.manual_seed(2)
    plain = FactoredVAE(small()).train()
    ckpt = copy.deepcopy(plain).configure(activation_checkpointing=True)
    calls = []
    ckpt.decoder.net[0].register_forward_pre_hook(lambda *a: calls.append(1))
    frames, noise = torch.rand(3, 4, 3, 64, 64), torch.randn(3, 4, 3, 4)
    a, b = sequence_elbo(plain, frames, noise=noise), sequence_elbo(ckpt, frames, noise=noise)
    assert torch.equal(a.elbo, b.elbo)
    ga, gb = grads(plain, -a.elbo.mean()), grads(ckpt, -b.elbo.mean())
    assert len(calls) == 2  # the generator ran again during backward
    for name in ga:
        assert torch.equal(ga[name], gb[name]), name
    for (name, x), y in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(x, y), name  # the recomputation did not update running statistics again


def test_channels_last_computes_the_same_function():
    torch.manual_seed(3)
    plain = FactoredVAE(small()).train()
    nhwc = copy.deepcopy(plain).configure(channels_last=True)
    assert nhwc.encoder.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    frames, noise = torch.rand(2, 3, 3, 64, 64), torch.randn(2, 3, 3, 4)
    a, b = sequence_elbo(plain, frames, noise=noise), sequence_elbo(nhwc, frames, noise=noise)
    torch.testing.assert_close(a.elbo, b.elbo, rtol=1e-6, atol=1e-2)
    ga, gb = grads(plain, -a.elbo.mean()), grads(nhwc, -b.elbo.mean())
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=1e-3, atol=1e-4 * ga[name].abs().max().item())


def _cpu_bf16_autocast() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.nn.functional.conv2d(torch.rand(1, 2, 8, 8), torch.rand(3, 2, 3, 3))
        return out.dtype == torch.bfloat16
    except (RuntimeError, TypeError):
        return False


@pytest.mark.skipif(not _cpu_bf16_autocast(), reason="this torch build has no CPU bf16 autocast")
def test_bf16_runs_the_image_networks_in_bf16_and_the_elbo_in_float32():
    torch.manual_seed(4)
    plain = FactoredVAE(small()).train()
    half = copy.deepcopy(plain).configure(precision="bf16")
    seen = []
    half.encoder.net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    half.decoder.net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    frames, noise = torch.rand(2, 3, 3, 64, 64), torch.randn(2, 3, 3, 4)
    a, b = sequence_elbo(plain, frames, noise=noise), sequence_elbo(half, frames, noise=noise)
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert b.log_likelihood.dtype == b.kl.dtype == torch.float32
    torch.testing.assert_close(b.elbo, a.elbo, rtol=1e-3, atol=0.0)
    ga, gb = grads(plain, -a.elbo.mean()), grads(half, -b.elbo.mean())
    flat_a = torch.cat([g.flatten() for g in ga.values()])
    flat_b = torch.cat([g.flatten() for g in gb.values()])
    assert torch.isfinite(flat_b).all()
    assert torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0) > 0.99
    half.eval()  # evaluation always runs in float32
    seen.clear()
    with torch.no_grad():
        half.encode(frames)
    assert seen == [torch.float32]


def test_every_way_of_preparing_batches_gives_the_same_frames():
    data = MovingMNIST(split="train", seq_len=3, seed=7, length=10_000)
    cpu = torch.device("cpu")
    inline = list(step_batches(data, 4, 2, 5, cpu, workers=0))
    assert len(inline) == 3
    assert torch.equal(inline[0], data.get_batch(range(8, 12))["frames"])  # step 2 of B = 4
    for ahead in (list(step_batches(data, 4, 2, 5, cpu, workers=2)),  # DataLoader processes
                  list(step_batches(data, 4, 2, 5, cpu, render_on_device=True)),  # what a GPU does
                  list(step_batches(data, 4, 2, 5, cpu, workers=1, render_on_device=True))):
        assert len(ahead) == 3
        for a, b in zip(inline, ahead):
            assert b.dtype == torch.float32 and torch.equal(a, b)


def test_new_training_options_are_validated(tiny_config):
    def fresh() -> RunConfig:
        return RunConfig.from_dict(tiny_config.to_dict())

    for bad in ("train.precision=fp16", "train.compile=fast", "train.data_workers=-1"):
        with pytest.raises(UserError, match=bad.split("=")[0]):
            apply_overrides(fresh(), [bad])
    for both in ("train.activation_checkpointing=true", "train.channels_last=true"):
        with pytest.raises(UserError, match="cannot be combined"):
            apply_overrides(fresh(), ["train.compile=default", "train.channels_last=false", both])
    with pytest.raises(UserError, match=r"train\.channels_last=false"):  # the demo sets it
        apply_overrides(fresh(), ["train.compile=default"])
    ok = apply_overrides(fresh(), ["precision=bf16", "compile=reduce-overhead", "data_workers=2",
                                   "channels_last=false"])
    assert (ok.train.precision, ok.train.compile, ok.train.data_workers) == ("bf16", "reduce-overhead", 2)
    ok = apply_overrides(fresh(), ["channels_last=true", "activation_checkpointing=true"])
    assert ok.train.channels_last and ok.train.activation_checkpointing


def test_auto_precision_is_bf16_only_where_the_device_has_it(monkeypatch):
    """"auto" resolves per device: bf16 on a CPU that reports AMX or AVX512-BF16, else fp32."""
    import indpred.train as tr

    cpu = torch.device("cpu")
    for caps, want in (({"amx_bf16": True}, "bf16"), ({"avx512_bf16": True}, "bf16"),
                       ({"avx2": True}, "fp32")):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps, raising=False)
        assert tr.resolve_precision("auto", cpu) == want
        assert tr.resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    assert tr.resolve_precision("auto", cpu) == "fp32"
