"""Learning from served traffic: the router's decision logs as logged bandit data, importance-weighted
REINFORCE on them (Ray Train), and off-policy evaluation (IPS, SNIPS, doubly robust) of a candidate."""

from barp_ray.offpolicy.estimators import doubly_robust, estimate_all, importance_weights, ips, snips
from barp_ray.offpolicy.logged import LoggedBandit, check_propensities, read_logged_bandit

__all__ = [
    "LoggedBandit",
    "check_propensities",
    "doubly_robust",
    "estimate_all",
    "importance_weights",
    "ips",
    "read_logged_bandit",
    "snips",
]
