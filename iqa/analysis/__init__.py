"""Contraction analysis: certificates, Jacobians, spectral radius, rates, consensus."""

from iqa.analysis.certificates import Certificates, certificates, diameter, supports_certificates

__all__ = ["Certificates", "certificates", "diameter", "supports_certificates"]
