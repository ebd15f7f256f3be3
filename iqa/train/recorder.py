"""The diagnostics of a run at its current weights, on the held-out batch.

- the held-out loss and the mode's own gradient of it (the layer's forward and
  backward exactly as in training, same solver, tol and mode);
- the converged reference (:mod:`iqa.train.reference`): a tight Anderson solve,
  the dense Jacobians J* there, rho(J*) from their eigenvalues, ||J*||_F^2
  exactly and by the same one-probe Hutchinson estimate that the regulariser
  uses, and the dense implicit gradient;
- the relative error ||g_mode - g_ref|| / ||g_ref|| and the cosine of the two,
  over all parameters at once; both None where there is no reference (the tight
  solve did not converge) or where ||g_ref|| is below :data:`GRADIENT_FLOOR`
  (a vanishing reference, e.g. a consensus fixed point, gives no direction).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from iqa.grad import IQAWarning
from iqa.layer import FixedPointLayer
from iqa.train.config import TrainConfig
from iqa.train.jacreg import hutchinson_frobenius
from iqa.train.losses import task_loss
from iqa.train.reference import reference

#: Below this gradient norm the reference gives no direction: losses and weights are O(1) here, and the dense
#: reference is exact to ~1e-12 (its solve tol) times the conditioning of I - J, so 1e-9 is above its noise.
GRADIENT_FLOOR = 1e-9
#: The generator stream of the recorder's Hutchinson probe (fixed per run, so that the estimate follows the weights).
RECORD_PROBE_STREAM = 2


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def diagnose(
    layer: FixedPointLayer, heldout: tuple[Tensor, Tensor], config: TrainConfig, seed: int, step: int
) -> dict[str, Any]:
    """One record of :mod:`iqa.train.recorder`'s diagnostics at ``step`` (weights after that many updates)."""
    x, target = heldout
    params = [p for p in layer.parameters() if p.requires_grad]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IQAWarning)
        y = layer(x)
        assert isinstance(y, Tensor)
        loss = task_loss(y, target)
        forward = layer.last_solution
        # A non-finite forward has no gradient to compare (the implicit backward would refuse its NaN cotangent).
        grads = torch.autograd.grad(loss, params, allow_unused=True) if bool(torch.isfinite(loss)) else None
    mode_gradient = (
        None if grads is None else [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
    )
    ref = reference(layer, x, target, tol=config.reference_tol, max_iter=config.reference_max_iter)
    probe = torch.Generator().manual_seed(seed * 4 + RECORD_PROBE_STREAM)
    with torch.no_grad():
        f = layer.fixed_point_map(x)
    hutchinson = hutchinson_frobenius(f, ref.solution.y, probe)
    exact = ref.jacobians.pow(2).sum(dim=(-2, -1))
    rel_error = cosine = None
    if ref.gradient is not None and mode_gradient is not None:
        g_ref, g_mode = _flat(ref.gradient), _flat(mode_gradient)
        ref_norm = float(torch.linalg.vector_norm(g_ref))
        if ref_norm > GRADIENT_FLOOR and bool(torch.isfinite(g_mode).all()):
            rel_error = float(torch.linalg.vector_norm(g_mode - g_ref)) / ref_norm
            mode_norm = float(torch.linalg.vector_norm(g_mode))
            cosine = float(g_mode @ g_ref) / (mode_norm * ref_norm) if mode_norm > 0 else 0.0
    return {
        "step": step,
        "heldout_loss": _finite(float(loss.detach())),
        "heldout_forward_steps": list(forward.steps) if forward is not None else None,
        "reference_status": ref.solution.status.value,
        "rho_max": _finite(float(ref.rho.max())),
        "rho_median": _finite(float(ref.rho.median())),
        "jacobian_frobenius_sq": _finite(float(exact.mean())),
        "hutchinson_frobenius_sq": _finite(float(hutchinson.mean())),
        "gradient_rel_error": rel_error,
        "gradient_cosine": cosine,
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
