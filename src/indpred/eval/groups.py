"""The groups of units every measure treats as factors: the model's factors, or, for an
entangled model (K = 1), the best of random partitions of its units (by MI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from indpred.config import ModelConfig
from indpred.errors import UserError
from indpred.eval.generations import factor_groups
from indpred.metrics import best_partition


@dataclass
class UnitGroups:
    """Indices into the flattened K·d units, one list per group, with the figures' labels."""

    units: list[list[int]]
    partition: dict[str, Any] | None  # best_partition's result (entangled models only)

    @property
    def count(self) -> int:
        return len(self.units)

    @property
    def size(self) -> int:
        return len(self.units[0])

    @property
    def labels(self) -> list[str]:
        kind = "factor" if self.partition is None else "group"
        return [f"{kind} {i + 1}" for i in range(self.count)]

    @property
    def order(self) -> list[int]:
        """Every unit, group by group."""
        return [u for units in self.units for u in units]


def unit_groups(mc: ModelConfig, z_t: np.ndarray, z_next: np.ndarray, *, groups: int | None,
                group_size: int | None, partitions: int, seed: int, k: int) -> UnitGroups:
    """The factors of a factored model; for an entangled one, ``groups`` groups of
    ``group_size`` units (default: its factored twin's shape) from the best of ``partitions``
    random partitions of the pairs (z_t, z_next), each (P, K, d)."""
    if mc.factors > 1:
        return UnitGroups(factor_groups(mc.factors, mc.factor_dim), None)
    D = mc.z_dim
    n_groups = groups or (mc.twin_factors if mc.twin_factors > 1 else 2)
    size = group_size or D // n_groups
    if n_groups < 2 or size < 1 or n_groups * size > D:
        raise UserError(f"cannot split {D} units into --groups {n_groups} of --group-size {size}")
    partition = best_partition(z_t.reshape(len(z_t), D), z_next.reshape(len(z_next), D),
                               groups=n_groups, size=size, n_partitions=partitions, seed=seed, k=k)
    return UnitGroups([list(map(int, u)) for u in partition["units"]], partition)


def regroup(z: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """(N, K, d) latents → (N, G, size): the units of each group side by side."""
    flat = z.reshape(z.shape[0], -1)
    return np.stack([flat[:, units] for units in groups], axis=1)
