"""The decision log: every scored row of every protocol, with the version, features, probability, threshold and
decision that served it, as a Parquet dataset (`writer`), and its replay through other versions (`replay`)."""

from fraud_inference.decisions.records import FEATURE_PREFIX, feature_column, record_schema
from fraud_inference.decisions.writer import DecisionLog, open_decision_log

__all__ = ["FEATURE_PREFIX", "DecisionLog", "feature_column", "open_decision_log", "record_schema"]
