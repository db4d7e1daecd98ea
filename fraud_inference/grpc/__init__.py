"""The Open Inference Protocol V2 over gRPC (KServe's `inference.GRPCInferenceService`, as Triton and MLServer
serve it) and the standard health service, beside HTTP in the process that holds the pool.

`server` starts and drains it, `servicer` answers the six methods over the same `DataPlane` as REST's /v2,
`converters` turn protobuf messages into the `fraud_inference.oip` codec's types and back, `calls` accounts every
call (request id, status codes, metrics, access log), `limits` refuses a message over MAX_BODY_BYTES in the
service's words, `health` answers as /readyz. The generated protobuf modules live in `_generated`, beside the
proto they are compiled from.

NOTE: this package imports nothing itself: importing `fraud_inference.grpc.server` registers the protocol's
messages (package `inference`) in protobuf's default pool, which a process that also imports `tritonclient.grpc`
(the tests, a client) cannot do twice; only the HTTP process imports it, from the app's lifespan.
"""
