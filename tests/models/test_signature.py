"""Request rows against a model signature: column order, types, and errors that name row and feature."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_inference.models.artifact import FeatureSpec
from fraud_inference.models.signature import SignatureDecoder
from fraud_inference.models.signature_errors import InstancesError

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


@pytest.mark.parametrize("value", [2**53, -(2**53), 2**62])
def test_an_integer_a_float64_batch_cannot_hold_is_refused_as_an_integer(decoder: SignatureDecoder, value: int) -> None:
    """2**53 - 1 is the last integer float64 holds with every neighbour; the refusal speaks of the integer
    (msgspec's own words were "Expected `float` < 9007199254740992.0" for a long column)."""
    safe = decoder.matrix(f'[{{"amount": 1, "hour_of_day": {2**53 - 1}, "is_foreign": true}}]'.encode())
    assert safe[0, 1] == 2**53 - 1
    with pytest.raises(InstancesError, match=r"instances\[0\]\.hour_of_day: integer at or beyond \+-2\*\*53") as error:
        decoder.matrix(f'[{{"amount": 1, "hour_of_day": {value}, "is_foreign": true}}]'.encode())
    assert "float" not in str(error.value).split("2**53")[0]


OPTIONAL = (
    FeatureSpec("amount", "double"),
    FeatureSpec("txn_count", "long"),
    FeatureSpec("device_age_days", "double", required=False),
    FeatureSpec("is_foreign", "boolean", required=False),
)


def test_null_and_a_left_out_optional_column_are_nan_on_the_fast_path() -> None:
    decoder = SignatureDecoder("test", OPTIONAL)
    matrix = decoder.matrix(
        b'[{"amount": 1.5, "txn_count": 2, "device_age_days": null, "is_foreign": true},'
        b' {"amount": null, "txn_count": null},'
        b' {"amount": 3, "txn_count": 4, "device_age_days": 9.5, "is_foreign": false}]'
    )
    np.testing.assert_array_equal(
        matrix, [[1.5, 2.0, np.nan, 1.0], [np.nan, np.nan, np.nan, np.nan], [3.0, 4.0, 9.5, 0.0]]
    )
    assert matrix.dtype == np.float64
    assert matrix.flags.c_contiguous


def test_a_left_out_required_column_is_still_refused() -> None:
    with pytest.raises(InstancesError, match=r"instances\[0\]: Object missing required field `txn_count`"):
        SignatureDecoder("test", OPTIONAL).matrix(b'[{"amount": 1}]')


def test_extra_features_are_refused_or_ignored_as_configured() -> None:
    body = b'[{"amount": 1, "txn_count": 2, "transaction_id": "t-1"}]'
    with pytest.raises(InstancesError, match="unknown field `transaction_id`"):
        SignatureDecoder("test", OPTIONAL).matrix(body)
    matrix = SignatureDecoder("test", OPTIONAL, extra="ignore").matrix(body)
    np.testing.assert_array_equal(matrix, [[1.0, 2.0, np.nan, np.nan]])


def test_strings_make_a_frame_with_mlflow_dtypes_and_categories_from_training() -> None:
    features = (*OPTIONAL, FeatureSpec("country", "string", required=False), FeatureSpec("merchant", "string"))
    decoder = SignatureDecoder("test", features, categories={"country": ["DE", "FR"]})
    frame = decoder.decode(
        b'[{"amount": 1, "txn_count": 2, "is_foreign": true, "country": "FR", "merchant": "fuel"},'
        b' {"amount": 2, "txn_count": 3, "is_foreign": false, "country": "ZZ", "merchant": null},'
        b' {"amount": 2, "txn_count": 3, "is_foreign": false, "merchant": "travel"}]'
    )
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == [f.name for f in features]
    assert frame["txn_count"].dtype == np.int64
    assert frame["is_foreign"].dtype == bool
    assert frame["device_age_days"].isna().all()
    # A category never seen in training is missing: never re-coded onto a known one.
    assert list(frame["country"].cat.categories) == ["DE", "FR"]
    assert frame["country"].tolist()[0] == "FR"
    assert frame["country"].isna().tolist() == [False, True, True]
    assert frame["merchant"].isna().tolist() == [False, True, False]


def test_an_integer_column_with_a_missing_value_becomes_float_in_a_frame() -> None:
    features = (FeatureSpec("txn_count", "long"), FeatureSpec("merchant", "string"))
    frame = SignatureDecoder("test", features).decode(
        b'[{"txn_count": null, "merchant": "a"}, {"txn_count": 1, "merchant": "b"}]'
    )
    assert frame["txn_count"].dtype == np.float64
    assert frame["txn_count"].isna().tolist() == [True, False]


def test_a_missing_value_the_model_cannot_take_names_row_and_feature() -> None:
    decoder = SignatureDecoder("test", OPTIONAL, refuse_missing=["device_age_days"])
    with pytest.raises(InstancesError, match=r"instances\[1\]\.device_age_days: missing \(null or left out\)"):
        decoder.matrix(b'[{"amount": 1, "txn_count": 2, "device_age_days": 1}, {"amount": 1, "txn_count": 2}]')


def test_a_batch_of_frames_keeps_number_columns_numeric_whatever_each_request_held() -> None:
    features = (FeatureSpec("is_foreign", "boolean", required=False), FeatureSpec("merchant", "string"))
    decoder = SignatureDecoder("test", features)
    with_null = decoder.decode(b'[{"is_foreign": null, "merchant": "a"}]')
    with_value = decoder.decode(b'[{"is_foreign": true, "merchant": "b"}]')
    batch = decoder.stack([with_value, with_null])
    assert batch["is_foreign"].dtype == np.float64
    assert batch["is_foreign"].tolist()[0] == 1.0
    assert np.isnan(batch["is_foreign"].tolist()[1])
    assert batch["merchant"].tolist() == ["b", "a"]


def test_a_float_column_stays_float32_with_a_missing_value_as_mlflow_gives_it() -> None:
    features = (FeatureSpec("ratio", "float", required=False), FeatureSpec("merchant", "string"))
    frame = SignatureDecoder("test", features).decode(b'[{"merchant": "a"}, {"ratio": 0.5, "merchant": "b"}]')
    assert frame["ratio"].dtype == np.float32
    assert frame["ratio"].isna().tolist() == [True, False]


def _as_columns(rows: list[dict[str, object]]) -> tuple[list[str], list[bytes]]:
    """The rows as a columnar request carries them: each column msgpack-encoded, a left-out key as null."""
    import msgspec

    names = list(dict.fromkeys(name for row in rows for name in row))
    return names, [msgspec.msgpack.encode([row.get(name) for row in rows]) for name in names]


_MIXED = (
    FeatureSpec("amount", "double"),
    FeatureSpec("hour_of_day", "long"),
    FeatureSpec("is_foreign", "boolean"),
    FeatureSpec("country", "string", required=False),
    FeatureSpec("distance", "float", required=False),
)


@pytest.mark.parametrize("features", [FEATURES, _MIXED], ids=["matrix", "frame"])
@pytest.mark.parametrize(
    "rows",
    [
        [
            {"amount": 12.5, "hour_of_day": 3, "is_foreign": True},
            {"amount": None, "hour_of_day": 4.0, "is_foreign": False},
        ],
        [{"amount": 1, "hour_of_day": None, "is_foreign": None, "country": "DE", "distance": 2.5}],
        [{"amount": 1.0, "hour_of_day": 1, "is_foreign": True}, {"amount": "1", "hour_of_day": 1, "is_foreign": True}],
        [{"amount": 1.0, "hour_of_day": 1.5, "is_foreign": True}],
        [{"amount": 1.0, "hour_of_day": 2**60, "is_foreign": True}],
        [{"amount": 1.0, "is_foreign": True}],
        [{"amount": 1.0, "hour_of_day": 1, "is_foreign": True, "x": 1}],
        [{"amount": 1.0, "hour_of_day": 1, "is_foreign": 1}],
        [{"amount": 1.0, "hour_of_day": 1, "is_foreign": True, "country": 3}],
    ],
)
def test_columns_decode_and_refuse_exactly_as_the_same_rows(
    features: tuple[FeatureSpec, ...], rows: list[dict[str, object]]
) -> None:
    import msgspec

    decoder = SignatureDecoder("test", features)
    outcome: object
    try:
        outcome = decoder.decode(msgspec.json.encode(rows))
    except InstancesError as refused:
        outcome = (str(refused), refused.row, refused.feature)
    try:
        got: object = decoder.columns(*_as_columns(rows))
    except InstancesError as refused:
        got = (str(refused), refused.row, refused.feature)
    if isinstance(outcome, pd.DataFrame):
        assert isinstance(got, pd.DataFrame)
        pd.testing.assert_frame_equal(got, outcome)
    elif isinstance(outcome, np.ndarray):
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, outcome)
        assert got.dtype == np.float64
        assert got.flags.c_contiguous
    else:
        assert got == outcome


def test_an_infinite_column_value_is_refused_naming_row_and_feature() -> None:
    import msgspec

    rows = [
        {"amount": 1.0, "hour_of_day": 1, "is_foreign": True},
        {"amount": -np.inf, "hour_of_day": 1, "is_foreign": True},
    ]
    names, values = _as_columns(rows)
    with pytest.raises(InstancesError) as raised:
        SignatureDecoder("test", FEATURES).columns(names, values)
    assert (raised.value.row, raised.value.feature) == (1, "amount")
    assert raised.value.problem.startswith("value -inf is not a finite number")
    with pytest.raises(InstancesError) as generic:
        SignatureDecoder("test", FEATURES, detail="generic").columns(
            names, [msgspec.msgpack.encode([1, "x"]), *values[1:]]
        )
    assert (generic.value.row, generic.value.feature) == (1, None)
