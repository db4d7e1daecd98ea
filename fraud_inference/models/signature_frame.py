"""Build a model's batch as a DataFrame with MLflow's dtypes, categorical columns on the training categories."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fraud_inference.models.artifact import FeatureSpec
from fraud_inference.models.signature_checks import ValueChecks

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FrameBuilder", "on_training_categories", "text_dtype"]

# What MLflow's schema enforcement gives each type when no value is missing; a missing value makes a number NaN.
_WHOLE_TYPES = frozenset({"long", "integer", "boolean"})
_FRAME_DTYPES = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32", "boolean": "bool"}


class FrameBuilder:
    """Build the DataFrame of a model's columns, and concatenate those of several requests into one batch."""

    def __init__(
        self, features: Sequence[FeatureSpec], *, checks: ValueChecks, categories: Mapping[str, Sequence[Any]] | None
    ) -> None:
        self._features = tuple(features)
        self._checks = checks
        self._numeric_columns = [i for i, spec in enumerate(self._features) if spec.type != "string"]
        # In a frame the checked matrix holds only the numeric columns.
        self._frame_checks = checks.checks_for(self._numeric_columns)
        import pandas as pd

        self._text = text_dtype()
        self._categories = {name: pd.CategoricalDtype(pd.Index(values)) for name, values in (categories or {}).items()}

    def frame(self, columns: Sequence[Sequence[Any]], count: int, *, columnar: bool = False) -> pd.DataFrame:
        """The DataFrame of `columns` (one sequence of values per feature, in the signature's order)."""
        import pandas as pd

        numbers = np.array([columns[i] for i in self._numeric_columns], dtype=np.float64).T.reshape(
            count, len(self._numeric_columns)
        )
        self._checks.check_numbers(numbers, self._numeric_columns, self._frame_checks, columnar=columnar)
        data: dict[str, Any] = {}
        numeric_index = {column: position for position, column in enumerate(self._numeric_columns)}
        for i, spec in enumerate(self._features):
            if spec.type != "string":
                values = numbers[:, numeric_index[i]]
                # A missing value makes an integer or boolean column float64 (NaN), as MLflow gives it.
                whole = spec.type in _WHOLE_TYPES and bool(np.isnan(values).any())
                data[spec.name] = values if whole else values.astype(_FRAME_DTYPES[spec.type])
                continue
            if i in self._checks.refuse_missing:
                self._checks.refuse_if_missing([value is None for value in columns[i]], i)
            dtype = self._categories.get(spec.name)
            if dtype is None:
                # NOTE: always pandas's own string dtype (`str` with NaN from pandas 3), whatever the batch holds: a
                # column of only nulls would otherwise be object None, which a OneHotEncoder scores differently.
                data[spec.name] = pd.Series(columns[i], dtype=self._text)
            else:
                data[spec.name] = on_training_categories(columns[i], dtype)
        return pd.DataFrame(data)

    def stack(self, batches: Sequence[pd.DataFrame]) -> pd.DataFrame:
        """One DataFrame of the DataFrames of several requests.

        A number column that is bool or int in one request and NaN-holding float in another stays float64 (pandas
        would make it object, which the libraries refuse).
        """
        import pandas as pd

        frame = pd.concat(batches, ignore_index=True)
        for index in self._numeric_columns:
            name = self._features[index].name
            if frame[name].dtype == object:
                frame[name] = frame[name].astype("float64")
        return frame


def on_training_categories(values: Any, dtype: pd.CategoricalDtype) -> pd.Categorical:
    """`values` as a categorical on the training categories `dtype`: a value never seen in training is missing,
    never re-coded from the batch's own values."""
    import pandas as pd

    return pd.Categorical.from_codes(dtype.categories.get_indexer(pd.Index(values, dtype=object)), dtype=dtype)


def text_dtype() -> Any:
    """The dtype pandas gives a column of strings (object before pandas 3, `str` from pandas 3)."""
    import pandas as pd

    return pd.Series(["text"]).dtype
