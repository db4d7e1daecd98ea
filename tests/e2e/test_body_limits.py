"""What one body may cost, through granian with a real socket client: fragmented bodies are refused after a bounded
number of pieces, slow ones after BODY_READ_TIMEOUT_S, and a gzip bomb after MAX_BODY_BYTES of output."""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest

from tests.conftest import DEMO_SERVICE_BODY_READ_TIMEOUT_S, RunningService, descendants
from tests.e2e.test_hot_swap import rows

pytestmark = pytest.mark.slow

BODY_READ_TIMEOUT_S = DEMO_SERVICE_BODY_READ_TIMEOUT_S


@pytest.fixture(scope="module")
def service(demo_service: RunningService) -> RunningService:
    """The session's shared `demo_service` (BODY_READ_TIMEOUT_S=`BODY_READ_TIMEOUT_S`)."""
    return demo_service


def connect(service: RunningService) -> socket.socket:
    address = urlsplit(service.base_url)
    connection = socket.create_connection((address.hostname, address.port), timeout=30)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer_of(connection: socket.socket) -> tuple[int, dict[str, str], dict[str, object]]:
    response = http.client.HTTPResponse(connection)
    response.begin()
    body = json.loads(response.read())
    return response.status, {name.lower(): value for name, value in response.getheaders()}, body


def closed_by_server(connection: socket.socket, timeout_s: float = 10.0) -> bool:
    """True when the server closes the connection within `timeout_s` (EOF or a reset, once the answer is read)."""
    connection.settimeout(timeout_s)
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def http_cpu_s(service: RunningService) -> float:
    """CPU seconds (user + system) the HTTP process has used so far."""
    (pid,) = [pid for pid, command in descendants(service.process.pid).items() if "fraud-inference http" in command]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def test_a_body_in_one_byte_chunks_is_refused_after_a_bounded_number_of_pieces(
    service: RunningService, transactions: pd.DataFrame
) -> None:
    body = json.dumps({"instances": rows(transactions, 1000)}).encode()  # ~600 KB: 600,000 chunks if let through
    # NOTE: a twentieth of the body at most, then the client waits: the answer must come without the rest (and
    # without a stalled body's 408). Sending on regardless made the count depend on the machine's load: a client
    # racing a busy server had ~30,000 pieces in the socket buffers before the server read the first.
    sendable = body[: len(body) // 20]
    cpu_before = http_cpu_s(service)
    with connect(service) as connection:
        connection.sendall(head("/v1/predict", transfer_encoding="chunked"))
        sent = 0
        for byte in sendable:
            try:
                connection.sendall(b"1\r\n" + bytes([byte]) + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            if select.select([connection], [], [], 0)[0]:  # the server has answered
                break
        status, headers, answer = answer_of(connection)
        assert status == 413, answer
        assert "too many small pieces" in str(answer["detail"])
        assert headers["connection"] == "close"
        assert closed_by_server(connection)
    # The server stopped after FREE_PIECES pieces (granian may hand over several chunks as one piece), long before the
    # body's end, and said so (asserted above: 413, not the 408 of a body that stopped arriving).
    print(f"\n1-byte chunks: refused after {sent} sent, HTTP process CPU {http_cpu_s(service) - cpu_before:.2f} s")


def test_a_chunked_body_in_a_few_pieces_is_scored(service: RunningService, transactions: pd.DataFrame) -> None:
    body = json.dumps({"instances": rows(transactions, 50)}).encode()
    with connect(service) as connection:
        connection.sendall(head("/v1/predict", transfer_encoding="chunked"))
        for start in range(0, len(body), 2048):
            piece = body[start : start + 2048]
            connection.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        connection.sendall(b"0\r\n\r\n")
        status, _headers, answer = answer_of(connection)
    assert status == 200, answer
    assert isinstance(answer["predictions"], list)
    assert len(answer["predictions"]) == 50


@pytest.mark.parametrize("path", ["/v1/predict", "/invocations", "/v2/models/xgboost/infer"])
def test_a_body_that_stops_arriving_is_408_and_the_connection_closed(service: RunningService, path: str) -> None:
    with connect(service) as connection:
        started_ns = time.monotonic_ns()
        connection.sendall(head(path, content_length="1000") + b'{"instances": [')
        status, headers, answer = answer_of(connection)
        waited_s = (time.monotonic_ns() - started_ns) / 1e9
        assert status == 408, answer
        assert "BODY_READ_TIMEOUT_S" in json.dumps(answer)
        assert headers["connection"] == "close"
        assert closed_by_server(connection)
    assert waited_s >= BODY_READ_TIMEOUT_S
    with service.client() as client:
        assert client.get("/livez").status_code == 200


def gzip_of_zeros(gib: int) -> bytes:
    """A gzip stream inflating to `gib` GiB of zero bytes, ~1 MB a GiB, built in ms: one deflate block of 1 MiB of
    zeros ends with a full flush (which resets the window), so every later block is the same bytes. No trailer: the
    server must stop long before it would read one."""
    coder = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = coder.compress(bytes(1 << 20)) + coder.flush(zlib.Z_FULL_FLUSH)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + block * (1024 * gib)


def peak_rss_mib(service: RunningService) -> float:
    (pid,) = [pid for pid, command in descendants(service.process.pid).items() if "fraud-inference http" in command]
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def test_a_gzip_bomb_is_413_without_inflating_it(service: RunningService) -> None:
    bomb = gzip_of_zeros(10)  # ~10 MB on the wire (under MAX_BODY_BYTES), 10 GiB decoded
    peak_before = peak_rss_mib(service)
    with connect(service) as connection:
        connection.sendall(head("/v1/predict", content_encoding="gzip", content_length=str(len(bomb))))
        # The server answers after ~16 KB of the body: send the rest from a thread, the answer is read meanwhile.
        sender = threading.Thread(target=_send_until_refused, args=(connection, bomb), daemon=True)
        sender.start()
        status, _headers, answer = answer_of(connection)
        sender.join(timeout=30)
    assert status == 413, answer
    assert "decoded body is over MAX_BODY_BYTES" in str(answer["detail"])
    # The HTTP process's peak memory grew by far less than the 16 MiB MAX_BODY_BYTES allows, never by gigabytes.
    assert peak_rss_mib(service) - peak_before < 200


def _send_until_refused(connection: socket.socket, body: bytes) -> None:
    # The server closes the connection after its answer: the rest of the bomb is never read.
    with contextlib.suppress(OSError):
        connection.sendall(body)


def test_a_csv_field_past_the_csv_modules_limit_is_a_400_naming_the_line(
    service: RunningService, transactions: pd.DataFrame
) -> None:
    """An unclosed quote runs on to the end of the body: past the csv module's field limit (131,072 characters) its
    `csv.Error` was an unhandled 500 (bodies that long do not fit the in-process tests' MAX_BODY_BYTES)."""
    header, rest = transactions.to_csv(index=False).split("\n", 1)
    rest = rest * (1 + 140_000 // len(rest))
    with service.client() as client:
        for path in ("/invocations", "/invocations/xgboost"):
            answer = client.post(path, content=f'{header}\n"{rest}', headers={"content-type": "text/csv"})
            assert answer.status_code == 400, answer.text
            assert answer.json()["error_code"] == "BAD_REQUEST"
            assert "CSV input is malformed at line" in answer.json()["message"]
            assert "field larger than field limit" in answer.json()["message"]
