"""Moved: the reward, tau rules and preference sampling live in `barp_ray.objective` (one place).

Kept as a re-export so old imports keep working; new code imports `barp_ray.objective`.
"""

from barp_ray.objective import TauRule, derive_tau, normalized_cost, reward, sample_preferences

__all__ = ["TauRule", "derive_tau", "normalized_cost", "reward", "sample_preferences"]
