"""The tolerance of the service's promise: a served probability equals what MLflow's own flavour loader gives for
the same version and rows within it."""

TOLERANCE = 1e-6
"""Largest absolute difference allowed between a served probability and MLflow's (the parity gate, the compiled
trees' probe rows)."""
