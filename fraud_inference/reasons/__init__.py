"""Reason codes: which features pushed each transaction's score towards fraud, from the model library's own TreeSHAP.

`explain.explain_rows` is the one seam every protocol calls; the workers compute the contributions
(`pool/worker_explain.py`, `models/explain.py`); `ranking` picks each row's top reasons, `codes` maps them to the
version's reason codes, `parity` holds the gate's check against MLflow's loaded model.
"""
