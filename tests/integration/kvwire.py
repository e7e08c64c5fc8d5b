"""A minimal, independent implementation of the kvtier v1 wire protocol (docs/protocol.md) for
integration tests: raw ZeroMQ frames and msgpack, so the tests check the server against the
specification rather than against our own C++ client."""
import itertools
import struct

import msgpack
import zmq

OPCODES = {
    "HELLO": 1, "REGISTER_KV_CACHE": 2, "UNREGISTER_KV_CACHE": 3, "GET_CHUNK_SIZE": 4,
    "LOOKUP": 5, "QUERY_PREFETCH_STATUS": 6, "WAIT_PREFETCH_STATUS": 7,
    "QUERY_PREFETCH_LOOKUP_HITS": 8, "STORE": 9, "RETRIEVE": 10, "FREE_LOOKUP_LOCKS": 11,
    "END_SESSION": 12, "PING": 13, "CLEAR": 14, "NOOP": 15,
}
FLAG_REPLY, FLAG_ERROR = 1, 2


def header(opcode: int, request_id: int, version: int = 1, flags: int = 0) -> bytes:
    return struct.pack("<2sBBHHQ", b"KV", version, flags, opcode, 0, request_id)


def tokens_bin(tokens) -> bytes:
    return struct.pack(f"<{len(tokens)}I", *tokens)


def key(model, request_id, tokens, rank=None, start=0, end=None, salt="", world_size=1):
    k = {"model": model, "world_size": world_size, "worker_rank": rank, "cache_salt": salt,
         "request_id": request_id, "tokens": tokens_bin(tokens), "start": start,
         "object_group": 0}
    if end is not None:
        k["end"] = end
    return k


class ServerError(Exception):
    def __init__(self, code, message, retryable):
        super().__init__(f"error {code}: {message}")
        self.code, self.message, self.retryable = code, message, retryable


class Client:
    """One DEALER socket; requests answered one at a time (call) or sent raw."""

    def __init__(self, endpoint, timeout_ms=20000):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        self.sock.connect(endpoint)
        self.ids = itertools.count(1)

    def close(self):
        self.sock.close()

    def send_frames(self, frames):
        self.sock.send_multipart(frames)

    def receive(self):
        frames = self.sock.recv_multipart()
        assert len(frames) == 2, frames
        magic, version, flags, opcode, _, request_id = struct.unpack("<2sBBHHQ", frames[0])
        assert magic == b"KV" and version == 1 and flags & FLAG_REPLY
        body = msgpack.unpackb(frames[1], raw=False)
        return opcode, request_id, flags, body

    def call(self, op, **fields):
        rid = next(self.ids)
        self.send_frames([header(OPCODES[op], rid), msgpack.packb(fields, use_bin_type=True)])
        opcode, got_id, flags, body = self.receive()
        assert (opcode, got_id) == (OPCODES[op], rid), (opcode, got_id, op, rid)
        if flags & FLAG_ERROR:
            raise ServerError(body["code"], body["message"], body["retryable"])
        return body
