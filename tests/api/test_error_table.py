"""The one error table: every error of the core has an answer in every protocol, found along its class hierarchy."""

from __future__ import annotations

import pytest

from fraud_inference import errors
from fraud_inference.api.error_table import ERRORS, answer_of, oip_message, where
from fraud_inference.errors import InvalidRowsError, PredictionError, TooManyRowsError


def every_subclass(cls: type[PredictionError]) -> set[type[PredictionError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= every_subclass(sub)
    return found


def test_every_error_the_core_defines_has_its_own_row() -> None:
    defined = {cls for cls in every_subclass(PredictionError) if cls.__module__ == errors.__name__}
    assert defined
    assert defined <= set(ERRORS), defined - set(ERRORS)


def test_a_new_subclass_answers_as_its_parent_in_every_protocol() -> None:
    class NegativeAmountError(InvalidRowsError):
        """A subclass no router knows: before the table, a KeyError inside each protocol's handler."""

    class NewFaultError(PredictionError):
        """An error of the core's with no row of its own: the service's fault, not the client's."""

    assert answer_of(NegativeAmountError("is negative", row=3, feature="amount")) == ERRORS[InvalidRowsError]
    assert answer_of(NewFaultError("?")) == ERRORS[PredictionError]
    assert answer_of(NewFaultError("?")).v1 == 503


def test_each_protocol_keeps_its_own_status_for_the_same_error() -> None:
    invalid = answer_of(InvalidRowsError("x"))
    assert (invalid.v1, invalid.oip, invalid.mlflow, invalid.mlflow_code) == (422, 400, 400, "INVALID_PARAMETER_VALUE")
    too_many = answer_of(TooManyRowsError(11, 10))
    assert (too_many.v1, too_many.oip, too_many.mlflow, too_many.grpc) == (413, 413, 400, "RESOURCE_EXHAUSTED")


@pytest.mark.parametrize(
    ("row", "feature", "mlflow", "oip"),
    [
        (3, "amount", "row 3, column 'amount'", "input 'amount', row 3"),
        (3, None, "row 3", "row 3"),
        (None, "amount", "column 'amount'", "input 'amount'"),
        (None, None, "", ""),
    ],
)
def test_where_names_the_row_and_the_feature_in_each_protocols_words(
    row: int | None, feature: str | None, mlflow: str, oip: str
) -> None:
    error = InvalidRowsError("is not a number", row=row, feature=feature)
    assert where(error, row="row", feature="column", feature_first=False) == mlflow
    assert where(error, row="row", feature="input", feature_first=True) == oip


def test_oip_words_an_error_as_rest_v2_and_grpc_both_say_it() -> None:
    assert oip_message(InvalidRowsError("value inf is not a finite number", row=1, feature="amount")) == (
        "input 'amount', row 1: value inf is not a finite number"
    )
    assert oip_message(InvalidRowsError("is empty: send at least one row")) == "is empty: send at least one row"
    assert oip_message(TooManyRowsError(101, 100)) == "101 rows exceed MAX_BATCH_ROWS=100"
