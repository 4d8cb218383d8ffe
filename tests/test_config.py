"""Reading configs: options removed after e670eff in old config.json files, and sizes no model can have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indpred.config import (
    PRESETS,
    REMOVED,
    ModelConfig,
    RunConfig,
    apply_overrides,
    get_preset,
)
from indpred.errors import UserError
from indpred.model import FactoredVAE
from indpred.sizes import MAX_TENSOR, parameter_sizes

OLD_CONFIG = Path(__file__).parent / "golden" / "config-e670eff.json"


def old_config() -> dict:
    return json.loads(OLD_CONFIG.read_text())


def test_a_config_written_at_e670eff_loads_as_todays_with_the_same_values():
    old = old_config()
    loaded = RunConfig.load(OLD_CONFIG)
    for section, removed in REMOVED.items():
        for key in removed:
            old[section].pop(key)
    # keys added since, at the value old runs mean
    added = {"model": {"transition_order": 1}, "train": {"tensorboard": False, "cuda_graphs": False},
             "data": {"image_size": 64}}
    for section, values in added.items():
        old[section].update(values)
    assert loaded.to_dict() == old  # every remaining value read as written, the added ones defaulted
    assert loaded == RunConfig.from_dict(old)


def test_an_old_entangled_twin_with_its_attention_slots_still_loads():
    """e670eff's entangled() wrote the factored model's K into model.slots; nothing read it."""
    old = old_config()
    old["model"].update(factors=1, factor_dim=8, slots=2, attention_dim=64, twin_factors=2)
    assert RunConfig.from_dict(old).model.factors == 1


@pytest.mark.parametrize(("section", "key", "value"), [
    ("model", "posterior", "attention"), ("model", "compose", "logsumexp"),
    ("model", "output_init", "data-mean"), ("model", "decoder_output", "linear"),
    ("train", "noise_warmup", 400),
])
def test_a_removed_option_that_changed_the_run_is_refused_in_one_line(section, key, value):
    old = old_config()
    old[section][key] = value
    with pytest.raises(UserError) as caught:
        RunConfig.from_dict(old)
    message = str(caught.value)
    assert message == (f"{section}.{key}={value!r} was removed from indpred after e670eff; "
                       "check out that commit to use it")


@pytest.mark.parametrize("item", ["model.posterior=attention", "compose=sum", "train.noise_warmup=0"])
def test_setting_a_removed_option_says_so(item):
    with pytest.raises(UserError, match=r"was removed from indpred after e670eff"):
        apply_overrides(RunConfig(), [item])


def test_unknown_keys_are_still_refused():
    with pytest.raises(UserError, match=r"unknown key\(s\) \['nope'\]"):
        RunConfig.from_dict({"model": {"nope": 1}})


@pytest.mark.parametrize("model", [
    ModelConfig(),
    ModelConfig(factors=3, factor_dim=5, width=0.3, decoder="per-factor", channels=1, enc_dim=7,
                transition_hidden=9, transition_layers=1),
    ModelConfig(factors=1, factor_dim=32, width=0.125, decoder="per-factor", transition_layers=2),
    ModelConfig(factors=8, factor_dim=8, width=0.06, decoder="per-factor"),  # channels floored at 1
    ModelConfig(image_size=32, width=0.25, decoder="per-factor"),  # the authors' 32-px frames
    ModelConfig(image_size=128, width=0.125, channels=1),
])
def test_the_closed_form_parameter_sizes_are_the_models(model):
    built = FactoredVAE(model)
    for network, tensors in parameter_sizes(model).items():
        real = sorted(p.numel() for p in getattr(built, network).parameters())
        assert sorted(n for n, k in tensors for _ in range(k)) == real, network


@pytest.mark.parametrize(("key", "value", "culprit"), [
    ("factor_dim", 10**9, "model.factor_dim (1000000000)"),
    ("transition_hidden", 10**6, "model.transition_hidden (1000000)"),
    ("enc_dim", 10**8, "model.enc_dim (100000000)"),
    ("width", 1e3, "model.width (1000.0)"),
    ("width", 1e300, "model.width"),
    ("transition_layers", 10**6, "model.transition_layers (1000000)"),  # small tensors, too many
])
def test_sizes_no_model_can_have_are_refused_naming_the_key(tmp_path, key, value, culprit):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": {key: value}}))
    with pytest.raises(UserError, match="model sizes too large") as caught:
        RunConfig.load(path)
    message = str(caught.value)
    assert "\n" not in message and culprit in message and "lower" in message, message
    with pytest.raises(UserError, match="model sizes too large"):
        apply_overrides(RunConfig(), [f"model.{key}={value}"])


def test_an_integer_too_long_to_read_is_one_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model": {"factor_dim": ' + "9" * 5000 + "}}")
    with pytest.raises(UserError, match="cannot read config"):
        RunConfig.load(path)


def test_large_but_possible_sizes_are_accepted():
    cfg = apply_overrides(RunConfig(), ["model.width=4", "model.factors=64", "model.factor_dim=64"])
    largest = max(n for tensors in parameter_sizes(cfg.model).values() for n, _ in tensors)
    assert largest <= MAX_TENSOR


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_json(name):
    cfg = get_preset(name)
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg
