"""The OIP codec alone: request tensors to the core's rows, scored rows to outputs, and its refusals. No HTTP."""

from __future__ import annotations

import struct
import subprocess
import sys
from typing import Any

import msgspec
import numpy as np
import pytest

from fraud_inference.dataplane import ScoredRows, Selection
from fraud_inference.errors import InvalidRowsError
from fraud_inference.lifecycle import Generation
from fraud_inference.models.artifact import FeatureSpec, ModelArtifact, ModelFile
from fraud_inference.oip import (
    InferRequest,
    OipRequestError,
    RequestInput,
    RequestOutput,
    columns_of,
    infer_response,
    metadata_of,
    read_binary_extension,
    read_raw_contents,
)
from fraud_inference.pool import Columns
from fraud_inference.registry import ModelRef

FEATURES = (
    FeatureSpec("amount", "double"),
    FeatureSpec("txn_count_24h", "long"),
    FeatureSpec("is_foreign", "boolean"),
    FeatureSpec("merchant", "string"),
)


def _columns(rows: bytes | Columns) -> dict[str, list[Any]]:
    assert isinstance(rows, Columns)
    return {name: msgspec.msgpack.decode(values) for name, values in zip(rows.names, rows.values, strict=True)}


def _per_feature(**overrides: RequestInput) -> InferRequest:
    tensors = {
        "amount": RequestInput(name="amount", shape=[2], datatype="FP64", data=[12.5, 3000.0]),
        "txn_count_24h": RequestInput(name="txn_count_24h", shape=[2, 1], datatype="INT64", data=[[1], [7]]),
        "is_foreign": RequestInput(name="is_foreign", shape=[2], datatype="INT32", data=[0, 1]),
        "merchant": RequestInput(name="merchant", shape=[2], datatype="BYTES", data=["grocer", "casino"]),
    }
    return InferRequest(inputs=list({**tensors, **overrides}.values()))


def _refusal(infer: InferRequest) -> OipRequestError:
    with pytest.raises(OipRequestError) as refused:
        columns_of(read_raw_contents(infer, ()), FEATURES, detail="full")
    return refused.value


# -- requests --------------------------------------------------------------------------------------


def test_one_tensor_per_feature_gives_one_column_per_feature_with_booleans_as_booleans() -> None:
    rows = columns_of(read_raw_contents(_per_feature(), ()), FEATURES, detail="full")

    assert _columns(rows) == {
        "amount": [12.5, 3000.0],
        "txn_count_24h": [1, 7],
        "is_foreign": [False, True],
        "merchant": ["grocer", "casino"],
    }


def test_one_n_by_features_tensor_is_split_into_columns_in_signature_order() -> None:
    matrix = RequestInput(name="input", shape=[2, 4], datatype="FP64", data=[[1.0, 2.0, 0.0, 3.0], [4, 5, 1, 6]])

    rows = columns_of(read_raw_contents(InferRequest(inputs=[matrix]), ()), FEATURES[:4], detail="full")

    assert _columns(rows) == {"amount": [1.0, 4], "txn_count_24h": [2.0, 5], "is_foreign": [False, True],
                              "merchant": [3.0, 6]}  # fmt: skip


def test_bytes_tensors_carry_strings_as_json_data_and_length_prefixed_binary() -> None:
    raw = b"".join(struct.pack("<I", len(text)) + text for text in (b"grocer", "caf\u00e9".encode()))
    merchant = RequestInput(name="merchant", shape=[2], datatype="BYTES", parameters={"binary_data_size": len(raw)})

    infer = read_binary_extension(_per_feature(merchant=merchant), raw)

    assert _columns(columns_of(infer, FEATURES, detail="full"))["merchant"] == ["grocer", "caf\u00e9"]


@pytest.mark.parametrize(("datatype", "dtype"), [("FP32", np.float32), ("FP64", np.float64)])
def test_binary_float_buffers_read_as_the_binary_extension_and_as_raw_contents(datatype: str, dtype: type) -> None:
    amounts = np.array([12.5, 3000.25], dtype=dtype).tobytes()
    counts = np.array([1, 7], dtype=np.int64).tobytes()
    sized = {
        "amount": RequestInput(name="amount", shape=[2], datatype=datatype,
                               parameters={"binary_data_size": len(amounts)}),
        "txn_count_24h": RequestInput(name="txn_count_24h", shape=[2], datatype="INT64",
                                      parameters={"binary_data_size": len(counts)}),
    }  # fmt: skip
    over_rest = read_binary_extension(_per_feature(**sized), amounts + counts)
    bare = {name: RequestInput(name=name, shape=[2], datatype=tensor.datatype) for name, tensor in sized.items()}
    over_grpc = InferRequest(inputs=list(bare.values()))

    read_raw_contents(over_grpc, [amounts, counts])

    assert _columns(columns_of(over_rest, FEATURES, detail="full"))["amount"] == [12.5, 3000.25]
    assert over_grpc.inputs[0].data == [12.5, 3000.25]
    assert over_grpc.inputs[1].data == [1, 7]


def test_an_unknown_datatype_is_refused_naming_the_input_and_the_datatypes() -> None:
    infer = _per_feature(amount=RequestInput(name="amount", shape=[2], datatype="FLOAT64", data=[1.0, 2.0]))

    with pytest.raises(OipRequestError) as refused:
        read_raw_contents(infer, ())

    assert refused.value.input_name == "amount"
    assert "'FLOAT64' is not an OIP datatype" in refused.value.message
    assert "FP64" in refused.value.message


def test_a_shape_that_disagrees_with_the_data_is_refused_naming_the_input() -> None:
    refused = _refusal(_per_feature(amount=RequestInput(name="amount", shape=[3], datatype="FP64", data=[1.0, 2.0])))

    assert refused.input_name == "amount"
    assert refused.message == "input 'amount': shape [3] needs 3 values, data holds 2"


def test_a_matrix_of_the_wrong_width_is_refused_naming_the_input_and_the_features() -> None:
    matrix = RequestInput(name="input", shape=[1, 3], datatype="FP64", data=[1.0, 2.0, 3.0])

    refused = _refusal(InferRequest(inputs=[matrix]))

    assert refused.input_name == "input"
    assert "needs 4 columns" in refused.message
    assert "amount, txn_count_24h, is_foreign, merchant" in refused.message


def test_an_input_sent_twice_is_refused_naming_it() -> None:
    infer = _per_feature()
    infer.inputs.append(RequestInput(name="amount", shape=[2], datatype="FP64", data=[1.0, 2.0]))

    refused = _refusal(infer)

    assert refused.input_name == "amount"
    assert "sent more than once" in refused.message


def test_a_missing_input_is_refused_in_oip_terms_naming_it_and_the_model_inputs() -> None:
    infer = _per_feature()
    del infer.inputs[1]

    refused = _refusal(infer)

    assert (refused.input_name, refused.row) == ("txn_count_24h", 0)
    assert refused.message == (
        "input 'txn_count_24h', row 0: missing: every row needs a value for this input; "
        "the model's inputs are: amount, txn_count_24h, is_foreign, merchant"
    )


def test_an_optional_input_may_be_left_out() -> None:
    features = (*FEATURES[:3], FeatureSpec("merchant", "string", required=False))
    infer = _per_feature()
    del infer.inputs[3]

    assert list(_columns(columns_of(read_raw_contents(infer, ()), features, detail="full"))) == [
        "amount", "txn_count_24h", "is_foreign",
    ]  # fmt: skip


def test_an_input_the_model_does_not_take_is_refused_or_dropped_as_extra_features_says() -> None:
    coupon = RequestInput(name="coupon", shape=[2], datatype="FP64", data=[1.0, 0.0])

    refused = _refusal(_per_feature(coupon=coupon))
    kept = columns_of(read_raw_contents(_per_feature(coupon=coupon), ()), FEATURES, detail="full", extra="ignore")

    assert (refused.input_name, refused.row) == ("coupon", 0)
    assert refused.message.startswith("input 'coupon', row 0: not an input of this model; the model's inputs are: ")
    assert list(_columns(kept)) == ["amount", "txn_count_24h", "is_foreign", "merchant"]


def test_generic_error_detail_names_no_feature_the_client_did_not_send() -> None:
    infer = _per_feature()
    del infer.inputs[1]

    with pytest.raises(OipRequestError) as refused:
        columns_of(read_raw_contents(infer, ()), FEATURES, detail="generic")

    assert refused.value.message == (
        "row 0: an input the model needs is missing; send one tensor per input of the model's metadata"
    )
    assert refused.value.input_name is None


def test_a_value_that_does_not_fit_its_datatype_is_refused_at_its_input_and_row() -> None:
    matrix = RequestInput(name="input", shape=[2, 4], datatype="INT64", data=[1, 2, 0, 3, 4, 5.5, 1, 6])

    refused = _refusal(InferRequest(inputs=[matrix]))

    assert (refused.input_name, refused.row) == ("input", 1)
    assert "data[5] = 5.5 does not fit datatype INT64" in refused.message


def test_a_binary_size_past_the_binary_part_is_refused_naming_the_input() -> None:
    amount = RequestInput(name="amount", shape=[2], datatype="FP64", parameters={"binary_data_size": 16})

    with pytest.raises(OipRequestError) as refused:
        read_binary_extension(_per_feature(amount=amount), b"\0" * 8)

    assert refused.value.input_name == "amount"


def test_raw_contents_must_hold_one_buffer_per_input() -> None:
    with pytest.raises(OipRequestError, match="raw_input_contents holds 1 buffers for 4 inputs"):
        read_raw_contents(_per_feature(), [b""])


def test_tensors_without_rows_are_the_cores_empty_refusal() -> None:
    infer = InferRequest(inputs=[RequestInput(name="amount", shape=[0], datatype="FP64", data=[])])

    with pytest.raises(InvalidRowsError, match="input 'amount' is empty"):
        columns_of(infer, FEATURES, detail="full")


# -- answers ---------------------------------------------------------------------------------------


def _scored(probabilities: list[float], *, threshold: float = 0.5) -> ScoredRows:
    ref = ModelRef(key="fraud", name="fraud-model", version="3", selected_by="alias:champion", run_id=None,
                   threshold=threshold)  # fmt: skip
    artifact = ModelArtifact(ref=ref, path="/models/3", flavor="xgboost", features=FEATURES,
                             model_file=ModelFile(file="model.ubj", format="native"))  # fmt: skip
    selection = Selection(key="fraud", generation=Generation(number=2, models={"fraud": artifact}))
    return ScoredRows(selection=selection, probabilities=np.array(probabilities, dtype=np.float64))


def test_scored_rows_answer_both_outputs_as_json_data_with_what_decided_them() -> None:
    answer, blobs = infer_response(_per_feature(), _scored([0.25, 0.75], threshold=0.7), "req-1")

    assert blobs == []
    assert (answer.model_name, answer.model_version, answer.id) == ("fraud", "3", "req-1")
    assert [(o.name, o.datatype, o.shape, o.data) for o in answer.outputs] == [
        ("fraud_probability", "FP64", [2], [0.25, 0.75]),
        ("is_fraud", "BOOL", [2], [False, True]),
    ]
    assert answer.parameters == {"threshold": 0.7, "generation": 2, "registered_model": "fraud-model",
                                 "selected_by": "alias:champion"}  # fmt: skip


def test_outputs_asked_as_binary_come_back_as_little_endian_bytes() -> None:
    infer = _per_feature()
    infer.id = "client-id"
    infer.outputs = [RequestOutput(name="fraud_probability", parameters={"binary_data": True})]

    answer, blobs = infer_response(infer, _scored([0.25, 0.75]), "req-1")

    assert answer.id == "client-id"
    assert [(o.name, o.data, o.parameters) for o in answer.outputs] == [
        ("fraud_probability", None, {"binary_data_size": 16})
    ]
    assert blobs == [np.array([0.25, 0.75], dtype="<f8").tobytes()]


def test_every_output_is_binary_under_binary_data_output() -> None:
    infer = _per_feature()
    infer.parameters = {"binary_data_output": True}

    _, blobs = infer_response(infer, _scored([0.25, 0.75]), "req-1")

    assert blobs == [np.array([0.25, 0.75]).tobytes(), b"\x00\x01"]


def test_an_unknown_output_is_refused_naming_the_outputs() -> None:
    infer = _per_feature()
    infer.outputs = [RequestOutput(name="score")]

    with pytest.raises(OipRequestError, match="unknown output 'score'; this model's outputs are fraud_probability"):
        infer_response(infer, _scored([0.5]), "req-1")


def test_metadata_types_each_input_from_the_signature() -> None:
    metadata = metadata_of(_scored([0.5]).selection)

    assert [(t.name, t.datatype) for t in metadata.inputs] == [
        ("amount", "FP64"), ("txn_count_24h", "INT64"), ("is_foreign", "BOOL"), ("merchant", "BYTES"),
    ]  # fmt: skip
    assert [(t.name, t.datatype) for t in metadata.outputs] == [("fraud_probability", "FP64"), ("is_fraud", "BOOL")]


def test_the_codec_imports_no_http_framework() -> None:
    """A gRPC servicer imports the codec without Litestar: only the REST router may bring it in."""
    probe = "import sys, fraud_inference.oip; print(sorted({m.split('.')[0] for m in sys.modules} & {'litestar'}))"

    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout

    assert loaded.strip() == "[]"
