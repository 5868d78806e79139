"""Preference-conditioned routing policy and its checkpoints."""

from barp_ray.policy.checkpoint import load_policy, read_policy_metadata, save_policy
from barp_ray.policy.model import BarpPolicy, PolicySpec, preference_tensor

__all__ = ["BarpPolicy", "PolicySpec", "load_policy", "preference_tensor", "read_policy_metadata", "save_policy"]
