"""What a request asks the policy for, as pure functions: the preference w_c and the forced model.

w_c comes from, in this order: the body's `preference` or `budget`, the `x-barp-preference` or
`x-barp-budget` header, the config's `default_budget`, the config's `default_preference`. A budget becomes
a w_c through the active policy's calibration table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from barp_ray.serving.config_sections import Budget, Preference
from barp_ray.serving.schemas import ApiError, validation_error

PREFERENCE_HEADER = "x-barp-preference"
BUDGET_HEADER = "x-barp-budget"


def parse_preference_header(value: str) -> Preference:
    """`quality=0.7,cost=0.3`, `cost=0.3` or a bare number (w_c)."""
    value = value.strip()
    try:
        if "=" not in value:
            return Preference(cost=float(value))
        fields = {}
        for part in value.split(","):
            key, _, number = part.partition("=")
            fields[key.strip()] = float(number)
        return Preference(**fields)
    except ValidationError as exc:
        raise validation_error(exc, PREFERENCE_HEADER) from None
    except (TypeError, ValueError):
        raise ApiError(
            400,
            f"{PREFERENCE_HEADER}: expected 'quality=0.7,cost=0.3', 'cost=0.3' or a number in "
            f"[0, 1] (the cost weight), got {value[:80]!r}",
            param=PREFERENCE_HEADER,
        ) from None


def parse_budget_header(value: str) -> Budget:
    """`max_cost_per_query=0.001`, `max_largest_share=0.2` or a bare number (USD per query)."""
    value = value.strip()
    try:
        if "=" not in value:
            return Budget(max_cost_per_query=float(value))
        key, _, number = value.partition("=")
        return Budget(**{key.strip(): float(number)})
    except ValidationError as exc:
        raise validation_error(exc, BUDGET_HEADER) from None
    except (TypeError, ValueError):
        raise ApiError(
            400,
            f"{BUDGET_HEADER}: expected 'max_cost_per_query=0.001', 'max_largest_share=0.2' or "
            f"a number (USD per query), got {value[:80]!r}",
            param=BUDGET_HEADER,
        ) from None


@dataclass(frozen=True)
class ResolvedPreference:
    """The w_c a request is routed with, where it came from, and the budget it was computed from (if any)."""

    w_cost: float
    source: str  # body, header, budget, default_budget, default
    budget: Budget | None = None


def budget_w(calibration: Any | None, budget: Budget, param: str) -> float:
    """The w_c that meets `budget` according to the calibration table (400 without one)."""
    if calibration is None:
        raise ApiError(
            400,
            f"{param}: this router has no calibration table, so it cannot turn a budget into "
            "a preference; give `preference` instead (operators: set `calibration`)",
            param=param,
        )
    return float(calibration.w_cost_for(budget))


def budget_met(calibration: Any | None, budget: Budget | None) -> bool | None:
    """Whether the calibration table says `budget` can be met (None without a budget or a table)."""
    return None if budget is None or calibration is None else bool(calibration.choose(budget)[1])


def resolve_preference(
    preference: Preference | None,
    budget: Budget | None,
    headers: Mapping[str, str],
    calibration: Any | None,
    default_budget: Budget | None,
    default_preference: Preference,
) -> ResolvedPreference:
    """The request's w_c from body fields, headers and config defaults (400 naming the field on conflicts)."""
    if preference is not None and budget is not None:
        raise ApiError(400, "preference: give a preference or a budget, not both", param="preference")
    header_pref = headers.get(PREFERENCE_HEADER)
    header_budget = headers.get(BUDGET_HEADER)
    if preference is None and budget is None:
        if header_pref is not None and header_budget is not None:
            raise ApiError(
                400, f"{PREFERENCE_HEADER}: give a preference or a budget header, not both", param=PREFERENCE_HEADER
            )
        if header_pref is not None:
            return ResolvedPreference(parse_preference_header(header_pref).w_cost, "header")
        if header_budget is not None:
            budget = parse_budget_header(header_budget)
    elif preference is not None:
        return ResolvedPreference(preference.w_cost, "body")
    if budget is not None:
        return ResolvedPreference(budget_w(calibration, budget, "budget"), "budget", budget)
    if default_budget is not None:
        return ResolvedPreference(
            budget_w(calibration, default_budget, "default_budget"), "default_budget", default_budget
        )
    return ResolvedPreference(default_preference.w_cost, "default")


def forced_model(
    model: str | None, router_names: list[str], upstreams: Mapping[str, Any], policy_models: list[str]
) -> int | None:
    """The policy index of the model a request names, None when it asks the router to choose (404 if unknown)."""
    if model is None or model in router_names:
        return None
    if model in upstreams:
        return policy_models.index(model)  # every upstream is a model of every policy a replica accepts
    hint = f"use '{router_names[0]}' to let the router choose, or one of {sorted(upstreams)}"
    if model in policy_models:
        raise ApiError(
            404, f"model: {model!r} has no upstream in this deployment; {hint}", param="model", code="model_not_found"
        )
    raise ApiError(404, f"model: unknown model {model!r}; {hint}", param="model", code="model_not_found")
