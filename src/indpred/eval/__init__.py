"""Evaluation of trained models (SPEC §3)."""

from indpred.eval.elbo import dataset_elbo

__all__ = ["dataset_elbo"]
