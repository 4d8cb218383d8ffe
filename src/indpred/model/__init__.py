"""The networks of the factored temporal VAE, each named after what it parameterises."""

from indpred.model.decoder import Decoder
from indpred.model.encoder import Encoder
from indpred.model.layers import restore_buffers, snapshot_buffers
from indpred.model.posterior import Posterior
from indpred.model.transition import FactoredTransition
from indpred.model.vae import FactoredVAE, Filtered

__all__ = ["Decoder", "Encoder", "FactoredTransition", "FactoredVAE", "Filtered", "Posterior",
           "restore_buffers", "snapshot_buffers"]
