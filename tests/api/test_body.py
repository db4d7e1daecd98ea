"""Content-Encoding on every protocol: coded bodies score as plain ones, bombs stop at MAX_BODY_BYTES, and the
refusals name the coding (415 for one not read, 400 for a body that is not what its label says)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable

import brotli
import pandas as pd
import pytest
from litestar.testing import TestClient

from tests.api.conftest import MAX_BODY_BYTES
from tests.api.test_predict import rows

CODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
}


def two_gzip_members(body: bytes) -> bytes:
    """Two gzip members one after the other: one gzip stream, as `gzip -d` and `pigz` read them."""
    return gzip.compress(body[:100]) + gzip.compress(body[100:])


CODED = [(coding, coder) for coding, coder in CODERS.items()] + [("gzip", two_gzip_members)]


def bodies(frame: pd.DataFrame) -> dict[str, bytes]:
    """One request of each protocol, for 20 rows."""
    instances = rows(frame, 20)
    columns = list(frame.columns)
    return {
        "/v1/predict": json.dumps({"model": "xgboost", "instances": instances}).encode(),
        "/invocations/xgboost": json.dumps({"dataframe_records": instances}).encode(),
        "/v2/models/xgboost/infer": json.dumps(
            {
                "inputs": [
                    {"name": name, "shape": [20], "datatype": "FP64", "data": [row[name] for row in instances]}
                    for name in columns
                ]
            }
        ).encode(),
    }


def error_of(path: str, body: dict[str, object]) -> str:
    """The error text of each protocol's shape: `detail`, MLflow's `message`, OIP's `error`."""
    key = {"/v1": "detail", "/in": "message", "/v2": "error"}[path[:3]]
    text = body[key]
    assert isinstance(text, str)
    return text


PATHS = ["/v1/predict", "/invocations/xgboost", "/v2/models/xgboost/infer"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("coding", "coder"), CODED, ids=[*CODERS, "gzip-two-members"])
def test_a_coded_body_scores_as_the_same_body_plain(
    client: TestClient,  # type: ignore[type-arg]
    transactions: pd.DataFrame,
    path: str,
    coding: str,
    coder: Callable[[bytes], bytes],
) -> None:
    body = bodies(transactions)[path]
    plain = client.post(path, content=body, headers={"content-type": "application/json"})
    coded = client.post(
        path,
        content=coder(body),
        headers={"content-type": "application/json", "content-encoding": coding},
    )
    assert plain.status_code == coded.status_code == 200, coded.text
    answer, plain_answer = coded.json(), plain.json()
    for fields in (answer, plain_answer):
        fields.pop("request_id", None)
        fields.pop("id", None)
    assert answer == plain_answer


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_a_bomb_is_413_once_its_output_passes_max_body_bytes(
    client: TestClient,  # type: ignore[type-arg]
    path: str,
    coding: str,
) -> None:
    bomb = CODERS[coding](b"[" + b" " * (40 * MAX_BODY_BYTES))  # ~1 KB coded, 40x MAX_BODY_BYTES decoded
    assert len(bomb) < MAX_BODY_BYTES
    response = client.post(path, content=bomb, headers={"content-type": "application/json", "content-encoding": coding})
    assert response.status_code == 413, response.text
    assert "decoded body is over MAX_BODY_BYTES" in error_of(path, response.json())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("coding", ["zstd", "compress", "gzip, br", "br;q=1"])
def test_an_encoding_not_read_is_415_naming_those_that_are(
    client: TestClient,  # type: ignore[type-arg]
    transactions: pd.DataFrame,
    path: str,
    coding: str,
) -> None:
    response = client.post(
        path,
        content=bodies(transactions)[path],
        headers={"content-type": "application/json", "content-encoding": coding},
    )
    assert response.status_code == 415, response.text
    error = error_of(path, response.json())
    assert repr(coding) in error
    assert "gzip, deflate, br" in error
    assert response.headers["accept-encoding"] == "gzip, deflate, br, identity"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_a_body_that_is_not_what_its_encoding_says_is_400_naming_the_encoding(
    client: TestClient,  # type: ignore[type-arg]
    transactions: pd.DataFrame,
    path: str,
    coding: str,
) -> None:
    plain = bodies(transactions)[path]
    for body in (plain, CODERS[coding](plain)[:-12]):  # a plain body labelled coded; a coded body cut short
        response = client.post(
            path, content=body, headers={"content-type": "application/json", "content-encoding": coding}
        )
        assert response.status_code == 400, response.text
        assert f"not valid {coding} data" in error_of(path, response.json())


def test_identity_is_the_body_as_it_is(client: TestClient, transactions: pd.DataFrame) -> None:  # type: ignore[type-arg]
    body = bodies(transactions)["/v1/predict"]
    response = client.post(
        "/v1/predict", content=body, headers={"content-type": "application/json", "content-encoding": "identity"}
    )
    assert response.status_code == 200, response.text
