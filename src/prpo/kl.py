"""The KL term to the reference policy: TRL's k3, and the clamp of verl's ``low_var_kl`` (docs/algorithm.md s.5).

TRL adds ``beta * k3(r)`` per token, ``k3(r) = exp(r) - r - 1`` with ``r = logp_ref - logp``, unclamped.
The paper's authors trained with verl's ``low_var_kl``: ``min(k3(clamp(r, -20, 20)), kl_max)`` with
``kl_max = 10``, whose gradient is 0 wherever ``k3(r) > kl_max`` (for 10: ``r`` above 2.611, a
reference 13.6 times as likely as the policy, or below -11.0), where TRL's grows like ``exp(r)``.

`clamped_reference` expresses that clamp through TRL's own formula: on the tokens past the bound it
substitutes the reference by ``logp + r_b`` (``r_b`` the bound on the token's side, ``k3(r_b) =
kl_max``), so TRL's k3 there is ``kl_max`` with gradient ``d/dlogp (logp + r_b - logp) = 0``; elsewhere
the reference is unchanged. No copy of TRL's loss is needed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

VERL_KL_MAX = 10.0  # verl's low_var_kl clamp of k3
LOG_RATIO_MAX = 20.0  # verl's clamp of r; below k3 = 19 (k3(-20)) the k3 clamp binds first


def k3(log_ratio: Tensor) -> Tensor:
    """``k3(r) = exp(r) - r - 1`` (r = logp_ref - logp): TRL's per-token KL estimate, >= 0."""
    return torch.exp(log_ratio) - log_ratio - 1


def k3_bounds(kl_max: float) -> tuple[float, float]:
    """``(r_lo, r_hi)``, ``r_lo < 0 < r_hi``, with ``k3(r) = kl_max`` (Newton's method, float64)."""
    if not 0 < kl_max <= k3_value(-LOG_RATIO_MAX):
        raise ValueError(f"kl_max must be in (0, {k3_value(-LOG_RATIO_MAX):.3f}], got {kl_max}")
    roots = []
    for r in (-(kl_max + 1), math.log(kl_max + 1) + 1):  # starts on each side, where k3 is convex and above
        for _ in range(100):
            step = (k3_value(r) - kl_max) / (math.exp(r) - 1)
            r -= step
            if abs(step) < 1e-15 * max(1.0, abs(r)):
                break
        roots.append(r)
    return roots[0], roots[1]


def k3_value(r: float) -> float:
    """`k3` on one float."""
    return math.exp(r) - r - 1


def clamped_reference(ref_logps: Tensor, logps: Tensor, kl_max: float = VERL_KL_MAX) -> Tensor:
    """The reference log-probs that make TRL's ``k3(ref - logps)`` verl's clamped k3, value and gradient.

    ``ref'[t] = ref[t]`` where ``k3(r[t]) <= kl_max``; else ``logps[t] + r_b`` with ``r_b = r_hi`` if
    ``r[t] > 0`` and ``r_lo`` if ``r[t] < 0`` (`k3_bounds`). ``logps`` carries the gradient.
    """
    r_lo, r_hi = k3_bounds(kl_max)
    log_ratio = (ref_logps - logps).detach()
    outside = (log_ratio < r_lo) | (log_ratio > r_hi)
    bound = torch.where(log_ratio > 0, torch.tensor(r_hi, dtype=logps.dtype), torch.tensor(r_lo, dtype=logps.dtype))
    return torch.where(outside, logps + bound, ref_logps.to(logps.dtype))
