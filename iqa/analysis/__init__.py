"""Contraction analysis: certificates, Jacobians, spectral radius, rates, consensus, attention, rounding."""

from iqa.analysis.attention import attention_weights, saturation_gap
from iqa.analysis.certificates import (
    SCORE_FORMS,
    SCORES_A_YT,
    SCORES_Y_AT,
    Certificates,
    certificates,
    diameter,
    has_heads,
    head_terms,
    max_row_norm,
    relaxation,
    score_form,
    supports_certificates,
)
from iqa.analysis.certified_solution import (
    CERTIFICATE_NORMS,
    CertifiedSolution,
    best_certificate,
    certified_solve,
    in_norm,
    steps_needed,
    token_norm,
)
from iqa.analysis.consensus import (
    consensus_distance,
    consensus_eigenvalues,
    consensus_matrix,
    consensus_point,
    consensus_radius,
)
from iqa.analysis.jacobian import NormEstimate, jacobian, jacobian_norm, jvp, norm_estimate, power_norm, vjp
from iqa.analysis.rates import empirical_rate, solution_rate
from iqa.analysis.rounding import jacobian_rounding, map_rounding, score_rounding, weight_norm_product
from iqa.analysis.spectral import Spectrum, spectral_radius, spectrum

__all__ = [
    "CERTIFICATE_NORMS",
    "SCORES_A_YT",
    "SCORES_Y_AT",
    "SCORE_FORMS",
    "Certificates",
    "CertifiedSolution",
    "NormEstimate",
    "Spectrum",
    "attention_weights",
    "best_certificate",
    "certificates",
    "certified_solve",
    "consensus_distance",
    "consensus_eigenvalues",
    "consensus_matrix",
    "consensus_point",
    "consensus_radius",
    "diameter",
    "empirical_rate",
    "has_heads",
    "head_terms",
    "in_norm",
    "jacobian",
    "jacobian_norm",
    "jacobian_rounding",
    "jvp",
    "map_rounding",
    "max_row_norm",
    "norm_estimate",
    "power_norm",
    "relaxation",
    "saturation_gap",
    "score_form",
    "score_rounding",
    "solution_rate",
    "spectral_radius",
    "spectrum",
    "steps_needed",
    "supports_certificates",
    "token_norm",
    "vjp",
    "weight_norm_product",
]
