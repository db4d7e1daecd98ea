"""A synthetic, deterministic data set of card transactions with about 1% fraud.

The label depends on interactions between features (a night-time foreign purchase far above the
card's usual amount, a burst of transactions, a new account far from home, ...), so tree ensembles
learn it well and a linear model does not.
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = ["FEATURES", "FEATURE_NAMES", "FRAUD_RATE", "Feature", "make_transactions"]

FRAUD_RATE = 0.01
"""The expected share of fraudulent transactions in `make_transactions`."""


class Feature(msgspec.Struct, frozen=True):
    """One model input: its column name, its MLflow schema type and what it means."""

    name: str
    kind: Literal["double", "long"]
    description: str


FEATURES: tuple[Feature, ...] = (
    Feature("amount", "double", "Transaction amount in EUR."),
    Feature("hour_of_day", "long", "Local hour of the transaction, 0-23."),
    Feature("day_of_week", "long", "Day of the week, 0 = Monday."),
    Feature("merchant_category", "long", "Merchant category code (ISO 18245 MCC)."),
    Feature("distance_from_home_km", "double", "Distance between the merchant and the cardholder's home."),
    Feature("distance_from_last_txn_km", "double", "Distance from the card's previous transaction."),
    Feature("minutes_since_last_txn", "double", "Minutes since the card's previous transaction."),
    Feature("txn_count_1h", "long", "Transactions on the card in the previous hour."),
    Feature("txn_count_24h", "long", "Transactions on the card in the previous 24 hours."),
    Feature("amount_sum_24h", "double", "Amount spent on the card in the previous 24 hours, this one included."),
    Feature("avg_amount_30d", "double", "Average transaction amount on the card over 30 days."),
    Feature("amount_to_avg_ratio", "double", "amount / avg_amount_30d."),
    Feature("account_age_days", "long", "Age of the customer account in days."),
    Feature("card_age_days", "long", "Days since the card was issued."),
    Feature("is_foreign", "long", "1 if the merchant is in another country than the card's, else 0."),
    Feature("is_online", "long", "1 for a card-not-present (e-commerce) transaction, else 0."),
    Feature("is_chip", "long", "1 if the chip was read (EMV), else 0 (magstripe, contactless or online)."),
    Feature("failed_pin_24h", "long", "Failed PIN attempts on the card in the previous 24 hours."),
    Feature("merchant_risk_score", "double", "Merchant's historical fraud risk, 0-1."),
    Feature("device_change_7d", "long", "Devices newly seen on the account in the previous 7 days."),
)

FEATURE_NAMES: tuple[str, ...] = tuple(feature.name for feature in FEATURES)

# Merchant category codes with their share of transactions and a base risk.
_MCC_CODES = np.array([5411, 5812, 5541, 5311, 5999, 5732, 5944, 4829, 7995, 4121, 5814, 4511])
_MCC_WEIGHTS = np.array([0.24, 0.15, 0.12, 0.10, 0.09, 0.05, 0.02, 0.02, 0.02, 0.06, 0.10, 0.03])
_MCC_RISK = np.array([0.05, 0.08, 0.10, 0.08, 0.30, 0.45, 0.60, 0.75, 0.70, 0.10, 0.05, 0.35])

# Spending is mostly during the day: relative weight of each local hour 0-23.
_HOUR_WEIGHTS = np.array(
    [
        *(1.0, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 4.0, 5.0, 5.5, 6.0),
        *(7.0, 6.5, 6.0, 6.0, 6.5, 7.0, 7.0, 6.0, 4.5, 3.5, 2.5, 1.5),
    ]
)

_RISKY_MCC_INDEXES = np.flatnonzero(_MCC_RISK >= 0.6)

Float64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class _Scenario(enum.IntEnum):
    """A way of committing card fraud, each leaving its own combination of traces."""

    NIGHT_SPREE_ABROAD = 0
    CARD_TESTING = 1
    NEW_ACCOUNT_FAR = 2
    CLONED_CARD = 3
    ACCOUNT_TAKEOVER = 4
    PIN_GUESSING = 5


def make_transactions(n_rows: int, *, seed: int = 7) -> tuple[pd.DataFrame, npt.NDArray[np.int64]]:
    """Generate `n_rows` card transactions and their fraud labels (1 = fraud).

    The same `n_rows` and `seed` always give the same data. Columns follow `FEATURES`: `long`
    features are int64, `double` features float64.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be at least 1, got {n_rows}")
    rng = np.random.default_rng(seed)
    # NOTE: about 2% of rows follow one of six fraud scenarios; the label (drawn at the end from
    # the features alone) makes most of them fraud, and the rare legitimate look-alikes too.
    attack = rng.random(n_rows) < 0.02
    scenario = np.where(attack, rng.integers(0, len(_Scenario), n_rows), -1)

    def playing(which: _Scenario) -> BoolArray:
        result: BoolArray = scenario == which
        return result

    account_age = np.clip(rng.lognormal(6.3, 1.2, n_rows), 1, 9000).astype(np.int64)
    account_age = np.where(playing(_Scenario.NEW_ACCOUNT_FAR), rng.integers(1, 60, n_rows), account_age)
    card_age = np.maximum(1, (account_age * rng.uniform(0.05, 1.0, n_rows)).astype(np.int64))
    avg_amount_30d = np.round(rng.lognormal(3.6, 0.7, n_rows), 2)
    # Heavy right tail: most purchases are near the card's usual amount, a few far above.
    amount_to_avg = rng.lognormal(0.0, 0.65, n_rows)
    amount_to_avg = np.where(
        playing(_Scenario.NIGHT_SPREE_ABROAD), amount_to_avg * rng.lognormal(1.3, 0.4, n_rows), amount_to_avg
    )
    amount = np.round(np.maximum(0.5, avg_amount_30d * amount_to_avg), 2)
    amount_to_avg = amount / avg_amount_30d

    hour = rng.choice(24, n_rows, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    hour = np.where(playing(_Scenario.NIGHT_SPREE_ABROAD), rng.integers(0, 6, n_rows), hour)
    day = rng.choice(7, n_rows, p=[0.14, 0.14, 0.14, 0.14, 0.16, 0.15, 0.13])
    mcc_index = rng.choice(len(_MCC_CODES), n_rows, p=_MCC_WEIGHTS)
    mcc_index = np.where(playing(_Scenario.ACCOUNT_TAKEOVER), rng.choice(_RISKY_MCC_INDEXES, n_rows), mcc_index)
    merchant_category = _MCC_CODES[mcc_index]
    merchant_risk = np.clip(_MCC_RISK[mcc_index] * rng.lognormal(0.0, 0.25, n_rows), 0.001, 1.0)

    is_online = rng.random(n_rows) < 0.35
    is_online = (is_online | playing(_Scenario.CARD_TESTING) | playing(_Scenario.ACCOUNT_TAKEOVER)) & ~(
        playing(_Scenario.CLONED_CARD) | playing(_Scenario.PIN_GUESSING)
    )
    is_chip = ~is_online & (rng.random(n_rows) < 0.8)
    # A cloned card or a stolen one without its PIN falls back to the magstripe.
    is_chip &= ~(playing(_Scenario.CLONED_CARD) | playing(_Scenario.PIN_GUESSING))
    is_foreign = rng.random(n_rows) < np.where(is_online, 0.08, 0.03)
    is_foreign |= playing(_Scenario.NIGHT_SPREE_ABROAD)
    distance_home = rng.lognormal(1.8, 1.1, n_rows)
    distance_home = np.where(is_foreign, distance_home + rng.lognormal(6.5, 0.8, n_rows), distance_home)
    distance_home = np.where(playing(_Scenario.NEW_ACCOUNT_FAR), 300.0 + rng.lognormal(6.0, 1.0, n_rows), distance_home)
    distance_last = rng.lognormal(1.5, 1.3, n_rows)
    # Some cards travel: a far previous transaction, usually hours ago.
    travelled = rng.random(n_rows) < 0.04
    distance_last = np.where(travelled, distance_last + rng.lognormal(6.0, 1.0, n_rows), distance_last)
    distance_last = np.where(playing(_Scenario.CLONED_CARD), 1000.0 + rng.lognormal(7.0, 0.5, n_rows), distance_last)
    minutes_since_last = rng.exponential(480.0, n_rows) + 0.5
    minutes_since_last = np.where(playing(_Scenario.CLONED_CARD), rng.uniform(5.0, 60.0, n_rows), minutes_since_last)

    # Velocity: bursts of many transactions in little time, from busy shoppers and card testers.
    burst = (rng.random(n_rows) < 0.02) | playing(_Scenario.CARD_TESTING)
    txn_count_1h = rng.poisson(np.where(burst, 5.0, 0.3), n_rows)
    txn_count_1h = np.where(playing(_Scenario.CARD_TESTING), 4 + rng.poisson(3.0, n_rows), txn_count_1h)
    minutes_since_last = np.where(burst, rng.exponential(3.0, n_rows) + 0.2, minutes_since_last)
    txn_count_24h = txn_count_1h + rng.poisson(2.5, n_rows)
    amount_sum_24h = amount + txn_count_24h * avg_amount_30d * rng.lognormal(0.0, 0.4, n_rows)

    failed_pin = np.where(is_online, 0, rng.poisson(0.08, n_rows))
    failed_pin = np.where(playing(_Scenario.PIN_GUESSING), 2 + rng.poisson(1.0, n_rows), failed_pin)
    device_change = np.where(rng.random(n_rows) < 0.06, 1 + rng.poisson(0.3, n_rows), 0)
    device_change = np.where(playing(_Scenario.ACCOUNT_TAKEOVER), 1 + rng.poisson(0.5, n_rows), device_change)

    frame = pd.DataFrame(
        {
            "amount": amount,
            "hour_of_day": hour,
            "day_of_week": day,
            "merchant_category": merchant_category,
            "distance_from_home_km": np.round(distance_home, 2),
            "distance_from_last_txn_km": np.round(distance_last, 2),
            "minutes_since_last_txn": np.round(minutes_since_last, 1),
            "txn_count_1h": txn_count_1h,
            "txn_count_24h": txn_count_24h,
            "amount_sum_24h": np.round(amount_sum_24h, 2),
            "avg_amount_30d": avg_amount_30d,
            "amount_to_avg_ratio": np.round(amount_to_avg, 4),
            "account_age_days": account_age,
            "card_age_days": card_age,
            "is_foreign": is_foreign.astype(np.int64),
            "is_online": is_online.astype(np.int64),
            "is_chip": is_chip.astype(np.int64),
            "failed_pin_24h": failed_pin,
            "merchant_risk_score": np.round(merchant_risk, 3),
            "device_change_7d": device_change.astype(np.int64),
        },
        columns=list(FEATURE_NAMES),
    )
    frame = frame.astype({f.name: np.int64 if f.kind == "long" else np.float64 for f in FEATURES})
    labels = (rng.random(n_rows) < _fraud_probability(frame)).astype(np.int64)
    return frame, labels


def _fraud_probability(frame: pd.DataFrame) -> Float64Array:
    """Return each transaction's probability of fraud, calibrated to average `FRAUD_RATE`."""
    column = {name: frame[name].to_numpy() for name in FEATURE_NAMES}
    night = column["hour_of_day"] <= 5
    foreign = column["is_foreign"] == 1
    online = column["is_online"] == 1
    ratio = column["amount_to_avg_ratio"]
    # km/h between this and the previous transaction: faster than a plane means a cloned card.
    speed = column["distance_from_last_txn_km"] / (column["minutes_since_last_txn"] / 60.0)

    score = (
        7.0 * (night & foreign & (ratio > 2.5))
        + 7.0 * ((column["txn_count_1h"] >= 4) & (column["minutes_since_last_txn"] < 5) & online)
        + 7.0 * ((column["account_age_days"] < 60) & (column["distance_from_home_km"] > 300))
        + 7.0 * ((column["failed_pin_24h"] >= 2) & (column["is_chip"] == 0))
        + 7.0 * ((column["device_change_7d"] >= 1) & online & (column["merchant_risk_score"] > 0.55))
        + 7.0 * (speed > 900.0)
        + 1.5 * np.log1p(np.maximum(ratio - 1.0, 0.0)) * (column["merchant_risk_score"] > 0.4)
        + 1.0 * (column["card_age_days"] < 14)
    )
    return _calibrate(score.astype(np.float64), FRAUD_RATE)


def _calibrate(score: Float64Array, rate: float) -> Float64Array:
    """Return sigmoid(score + b) with the intercept b chosen so that the mean is `rate`."""
    low, high = -30.0, 10.0
    # NOTE: bisection: the mean of sigmoids is monotonic in b but has no closed-form inverse.
    for _ in range(60):
        intercept = (low + high) / 2.0
        if float(np.mean(_sigmoid(score + intercept))) > rate:
            high = intercept
        else:
            low = intercept
    return _sigmoid(score + (low + high) / 2.0)


def _sigmoid(x: Float64Array) -> Float64Array:
    result: Float64Array = 1.0 / (1.0 + np.exp(-x))
    return result
