"""The Open Inference Protocol V2 (KServe, Triton, MLServer) without a transport: its messages (`types`), one
tensor's values and binary form (`tensors`), and the codec between requests and the core's rows and between
scored rows and outputs (`codec`), refusing with `OipRequestError`.

`api/oip.py` serves it over REST, JSON with Triton's binary tensor extension; a gRPC servicer reuses the same
codec, filling `data` from typed `contents` or handing `raw_input_contents` to `read_raw_contents`.
"""

from fraud_inference.oip.codec import (
    OUTPUTS,
    OutputTensor,
    columns_of,
    infer_response,
    metadata_of,
    output_tensors,
    read_binary_extension,
    read_raw_contents,
    response_parameters,
)
from fraud_inference.oip.errors import OipRequestError
from fraud_inference.oip.tensors import DATATYPE_NAMES, DATATYPES
from fraud_inference.oip.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)

__all__ = [
    "DATATYPES",
    "DATATYPE_NAMES",
    "OUTPUTS",
    "InferRequest",
    "InferResponse",
    "ModelMetadata",
    "OipRequestError",
    "OutputTensor",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerMetadata",
    "TensorMetadata",
    "columns_of",
    "infer_response",
    "metadata_of",
    "output_tensors",
    "read_binary_extension",
    "read_raw_contents",
    "response_parameters",
]
