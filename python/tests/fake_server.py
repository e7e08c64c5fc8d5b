"""A fake kvtier server for the Python tests: a ZMQ ROUTER speaking protocol v1 (docs/protocol.md)
with pyzmq and msgpack, answering as each test says.

    server = FakeServer(lambda req: {"cleared": 3} if req.opcode == Op.CLEAR else None)
    ... requests the handler answers None for are held: server.reply(req, {...}) later.

Needs Debian's python3-zmq and python3-msgpack.
"""

from __future__ import annotations

import enum
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import zmq

_HEADER = struct.Struct("<2sBBHHQ")  # magic, version, flags, opcode, reserved, request id
FLAG_REPLY = 1
FLAG_ERROR = 2


class Op(enum.IntEnum):
    HELLO = 1
    REGISTER_KV_CACHE = 2
    UNREGISTER_KV_CACHE = 3
    GET_CHUNK_SIZE = 4
    LOOKUP = 5
    QUERY_PREFETCH_STATUS = 6
    WAIT_PREFETCH_STATUS = 7
    QUERY_PREFETCH_LOOKUP_HITS = 8
    STORE = 9
    RETRIEVE = 10
    FREE_LOOKUP_LOCKS = 11
    END_SESSION = 12
    PING = 13
    CLEAR = 14
    NOOP = 15


@dataclass
class Error:
    """An error reply."""

    code: int
    message: str
    retryable: bool = False


@dataclass
class Request:
    identity: bytes
    opcode: Op
    request_id: int
    payload: dict[str, Any]
    raw: list[bytes] = field(default_factory=list)

    def tokens(self) -> list[int]:
        """The key's tokens, decoded from their 4-byte little-endian wire form."""
        data = self.payload["key"]["tokens"]
        return list(struct.unpack(f"<{len(data) // 4}I", data))


Handler = Callable[[Request], "dict[str, Any] | Error | None"]

DEFAULT_HELLO = {
    "protocol_version": 1,
    "server_id": "py-fake",
    "server_version": "0.0.0-test",
    "chunk_size": 256,
    "hash_algorithm": "xxh3_128",
}


def encode_header(opcode: int, request_id: int, flags: int, version: int = 1) -> bytes:
    return _HEADER.pack(b"KV", version, flags, opcode, 0, request_id)


class FakeServer:
    """A ROUTER on tcp://127.0.0.1 (a free port) served by one thread.

    HELLO is answered with ``hello`` (or given to the handler when ``hello`` is None). Every
    other request goes to ``handler``: a dict is sent as the reply payload, an Error as an error
    reply, None holds the request (answer it later with :meth:`reply`, from any thread).
    """

    def __init__(self, handler: Handler | None = None, hello: dict[str, Any] | None = DEFAULT_HELLO):
        self._handler = handler or (lambda req: {})
        self._hello = hello
        self._context = zmq.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.bind("tcp://127.0.0.1:*")
        self.endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        # Other threads hand frames to the server thread through an inproc PAIR.
        self._inbox = self._context.socket(zmq.PAIR)
        self._inbox.bind(f"inproc://fake-server-{id(self)}")
        self._outbox = self._context.socket(zmq.PAIR)
        self._outbox.connect(f"inproc://fake-server-{id(self)}")
        self._outbox_lock = threading.Lock()
        self._cv = threading.Condition()
        self.requests: list[Request] = []
        self._thread = threading.Thread(target=self._run, name="fake-kvtier-server", daemon=True)
        self._thread.start()

    def reply(self, request: Request, payload: dict[str, Any] | Error, *, opcode: int | None = None) -> None:
        """Answers a held request (any thread); ``opcode`` sends it under another opcode."""
        self.send_raw(request.identity, self._encode(opcode or request.opcode, request.request_id, payload))

    def send_raw(self, identity: bytes, frames: list[bytes]) -> None:
        with self._outbox_lock:
            self._outbox.send_multipart([identity, *frames])

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[Request]:
        """Waits until ``n`` requests (HELLO answered by the server excluded) have arrived."""
        with self._cv:
            if not self._cv.wait_for(lambda: len(self.requests) >= n, timeout):
                raise AssertionError(f"{len(self.requests)} requests arrived, expected {n}")
            return list(self.requests)

    def close(self) -> None:
        with self._outbox_lock:
            self._outbox.send_multipart([b""])  # stop
        self._thread.join()
        self._outbox.close()
        self._context.term()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _encode(opcode: int, request_id: int, payload: dict[str, Any] | Error) -> list[bytes]:
        if isinstance(payload, Error):
            body = {"code": payload.code, "message": payload.message, "retryable": payload.retryable}
            return [encode_header(opcode, request_id, FLAG_REPLY | FLAG_ERROR), msgpack.packb(body)]
        return [encode_header(opcode, request_id, FLAG_REPLY), msgpack.packb(payload, use_bin_type=True)]

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._inbox, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self._inbox in events:
                    frames = self._inbox.recv_multipart()
                    if frames == [b""]:
                        return
                    self._router.send_multipart(frames)
                if self._router in events:
                    self._serve(self._router.recv_multipart())
        finally:
            self._router.close()
            self._inbox.close()

    def _serve(self, frames: list[bytes]) -> None:
        identity, header, payload = frames[0], frames[1], frames[2]
        _, _, _, opcode, _, request_id = _HEADER.unpack(header)
        request = Request(identity, Op(opcode), request_id, msgpack.unpackb(payload, raw=False), frames[1:])
        if request.opcode == Op.HELLO and self._hello is not None:
            self._router.send_multipart([identity, *self._encode(opcode, request_id, self._hello)])
            return
        with self._cv:
            self.requests.append(request)
            self._cv.notify_all()
        answer = self._handler(request)
        if answer is not None:
            self._router.send_multipart([identity, *self._encode(opcode, request_id, answer)])
