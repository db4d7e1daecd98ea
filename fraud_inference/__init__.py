"""Serve fraud-detection models from an MLflow Model Registry."""

from importlib.metadata import PackageNotFoundError, version

from fraud_inference.bytecode import write_to_chosen_cache

write_to_chosen_cache()

try:
    __version__ = version("fraud-inference")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
