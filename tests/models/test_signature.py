"""Request rows against a model signature: column order, types, and errors that name row and feature."""

from __future__ import annotations

import numpy as np
import pytest

from fraud_inference.models.artifact import FeatureSpec
from fraud_inference.models.signature import InstancesError, SignatureDecoder

FEATURES = (FeatureSpec("amount", "double"), FeatureSpec("hour_of_day", "long"), FeatureSpec("is_foreign", "boolean"))


@pytest.fixture
def decoder() -> SignatureDecoder:
    return SignatureDecoder("test", FEATURES)


def test_columns_follow_the_signature_whatever_the_key_order(decoder: SignatureDecoder) -> None:
    matrix = decoder.matrix(
        b'[{"is_foreign": true, "hour_of_day": 3, "amount": 12.5},'
        b' {"amount": 7, "is_foreign": false, "hour_of_day": 23}]'
    )
    np.testing.assert_array_equal(matrix, [[12.5, 3.0, 1.0], [7.0, 23.0, 0.0]])
    assert matrix.dtype == np.float64
    assert matrix.flags.c_contiguous


@pytest.mark.parametrize(
    ("instances", "expected"),
    [
        (b"[]", "instances is empty"),
        (b'{"amount": 1}', "instances: Expected `array`, got `object`"),
        (b"[1]", "instances[0]: Expected `object`, got `int`"),
        (b'[{"amount": 1, "hour_of_day": 1}]', "instances[0]: Object missing required field `is_foreign`"),
        (
            b'[{"amount": 1, "hour_of_day": 1, "is_foreign": true, "x": 1}]',
            "instances[0]: Object contains unknown field `x`",
        ),
        (
            b'[{"amount": "1", "hour_of_day": 1, "is_foreign": true}]',
            "instances[0].amount: Expected `float`, got `str`",
        ),
        (
            b'[{"amount": 1, "hour_of_day": 1.5, "is_foreign": true}]',
            "instances[0].hour_of_day: Expected `int`, got a fraction",
        ),
        (b'[{"amount": 1, "hour_of_day": 1e300, "is_foreign": true}]', "instances[0].hour_of_day"),
        (b'[{"amount": 1, "hour_of_day": 9007199254740993, "is_foreign": true}]', "instances[0].hour_of_day"),
        (b'[{"amount": 1e999, "hour_of_day": 1, "is_foreign": true}]', "instances[0].amount: value is not a finite"),
        (b'[{"amount": 1, "hour_of_day": 1, "is_foreign": 1}]', "instances[0].is_foreign: Expected `bool`, got `int`"),
    ],
)
def test_errors_name_the_row_and_the_feature(decoder: SignatureDecoder, instances: bytes, expected: str) -> None:
    with pytest.raises(InstancesError) as caught:
        decoder.matrix(instances)
    assert str(caught.value).startswith(expected), str(caught.value)


def test_missing_feature_error_lists_the_model_features(decoder: SignatureDecoder) -> None:
    with pytest.raises(InstancesError, match="the model's features are: amount, hour_of_day, is_foreign"):
        decoder.matrix(b'[{"amount": 1}]')


def test_an_integral_float_is_an_integer_and_a_fraction_is_refused(decoder: SignatureDecoder) -> None:
    as_float = decoder.matrix(b'[{"amount": 12.5, "hour_of_day": 3.0, "is_foreign": true}]')
    as_int = decoder.matrix(b'[{"amount": 12.5, "hour_of_day": 3, "is_foreign": true}]')
    np.testing.assert_array_equal(as_float, as_int)
    with pytest.raises(InstancesError, match=r"instances\[1\]\.hour_of_day: Expected `int`, got a fraction"):
        decoder.matrix(b'[{"amount": 1, "hour_of_day": 3, "is_foreign": true},'
                       b' {"amount": 1, "hour_of_day": 3.25, "is_foreign": true}]')  # fmt: skip
