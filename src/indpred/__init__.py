"""indpred: learn a video representation of independent factors, each predicting its own future.

Implements "Disentangling Video with Independent Prediction": a factored temporal VAE
whose K latent chains evolve independently under the prior.
"""

from indpred.config import PRESETS, DataConfig, ModelConfig, RunConfig, TrainConfig, get_preset
from indpred.data import MovingMNIST
from indpred.model import FactoredVAE
from indpred.objective import ElboTerms, sequence_elbo
from indpred.pretrained import load_pretrained
from indpred.run import load_model

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "DataConfig",
    "ElboTerms",
    "FactoredVAE",
    "ModelConfig",
    "MovingMNIST",
    "RunConfig",
    "TrainConfig",
    "__version__",
    "get_preset",
    "load_model",
    "load_pretrained",
    "sequence_elbo",
]
