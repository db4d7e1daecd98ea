"""The synthetic fraud data set, the demo models and seeding them into an MLflow registry."""

from fraud_inference.demo.dataset import FEATURE_NAMES, FEATURES, Feature, make_transactions
from fraud_inference.demo.seeding import (
    CHAMPION_ALIAS,
    DEFAULT_THRESHOLD,
    DEMO_MODELS,
    SKOPS_TRUSTED_TYPES,
    SeededModel,
    default_pip_requirements,
    embedded_registry,
    log_fraud_model,
    seed_demo,
)
from fraud_inference.demo.training import (
    FLAVORS,
    FraudClassifier,
    ModelFlavor,
    roc_auc,
    train_model,
    train_models,
)

__all__ = [
    "CHAMPION_ALIAS",
    "DEFAULT_THRESHOLD",
    "DEMO_MODELS",
    "FEATURES",
    "FEATURE_NAMES",
    "FLAVORS",
    "SKOPS_TRUSTED_TYPES",
    "Feature",
    "FraudClassifier",
    "ModelFlavor",
    "SeededModel",
    "default_pip_requirements",
    "embedded_registry",
    "log_fraud_model",
    "make_transactions",
    "roc_auc",
    "seed_demo",
    "train_model",
    "train_models",
]
