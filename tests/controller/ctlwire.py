"""An independent Python implementation of the controller wire protocol (docs/controller.md,
"Wire protocol"): enough of a worker to register, report keys, heartbeat and query, over pyzmq
and msgpack. It shares no code with the C++ codec."""
import hashlib
import struct

import msgpack
import zmq

HEADER = struct.Struct("<2sBBHHQ")
FLAG_REPLY, FLAG_ERROR = 1, 2

ADMIT, EVICT, FULL_SYNC_START, FULL_SYNC_BATCH, FULL_SYNC_END = 1, 2, 3, 4, 5
REGISTER, DEREGISTER, HEARTBEAT, FULL_SYNC_STATUS = 32, 33, 34, 35
LOOKUP, FIND_KV, WORKERS, CLEAR, PING = 36, 37, 38, 39, 40


class ControllerError(Exception):
    def __init__(self, code, message):
        super().__init__(f"error {code}: {message}")
        self.code = code


def frame(msg_type, body, request_id=0, flags=0):
    return HEADER.pack(b"KC", 1, flags, msg_type, 0, request_id) + msgpack.packb(
        body, use_bin_type=True)


def parse(data):
    magic, version, flags, msg_type, _, request_id = HEADER.unpack(data[:16])
    assert magic == b"KC" and version == 1, data[:16]
    return flags, msg_type, request_id, msgpack.unpackb(data[16:], raw=False)


def token_hashes(tokens, chunk_size=256):
    """kvtier's TokenHasher (sha256): h[i] = sha256(h[i-1] || tokens of chunk i as LE uint32),
    h[-1] = sha256("kvtier/token-hasher/v1/sha256"); full chunks only."""
    prev = hashlib.sha256(b"kvtier/token-hasher/v1/sha256").digest()
    out = []
    for i in range(len(tokens) // chunk_size):
        chunk = tokens[i * chunk_size:(i + 1) * chunk_size]
        prev = hashlib.sha256(prev + struct.pack(f"<{chunk_size}I", *chunk)).digest()
        out.append(prev)
    return out


def key_group(model, hashes, world_size=1, rank=0, cache_salt="", object_group=0):
    return {"model": model, "cache_salt": cache_salt, "world_size": world_size, "rank": rank,
            "object_group": object_group, "hashes": b"".join(hashes)}


class Worker:
    """One worker of one instance: DEALERs for requests and heartbeats, a PUSH for events."""

    def __init__(self, endpoints, instance_id, worker_id=0, address="", locations=("L1",)):
        self.ctx = zmq.Context.instance()
        self.req = self._socket(zmq.DEALER, endpoints["requests"])
        self.hb = self._socket(zmq.DEALER, endpoints["heartbeats"])
        self.push = self._socket(zmq.PUSH, endpoints["events"])
        self.instance_id, self.worker_id = instance_id, worker_id
        self.address, self.locations = address, list(locations)
        self.registration_id = None
        self.next_id = 0
        self.seq = {loc: 0 for loc in self.locations}

    def _socket(self, kind, endpoint):
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 10000)
        s.connect(endpoint)
        return s

    def close(self):
        for s in (self.req, self.hb, self.push):
            s.close()

    def call(self, msg_type, body, heartbeat=False):
        self.next_id += 1
        sock = self.hb if heartbeat else self.req
        sock.send(frame(msg_type, body, self.next_id))
        flags, reply_type, request_id, reply = parse(sock.recv())
        assert request_id == self.next_id and reply_type == msg_type and flags & FLAG_REPLY
        if flags & FLAG_ERROR:
            raise ControllerError(reply["code"], reply["message"])
        return reply

    def origin(self):
        return {"instance_id": self.instance_id, "worker_id": self.worker_id,
                "registration_id": self.registration_id}

    def register(self, chunk_size=256, hash_algorithm="sha256"):
        reply = self.call(REGISTER, {
            "instance_id": self.instance_id, "worker_id": self.worker_id,
            "address": self.address, "locations": self.locations,
            "software_version": "ctlwire test worker", "hash_algorithm": hash_algorithm,
            "chunk_size": chunk_size})
        self.registration_id = reply["registration_id"]
        return reply

    def admit(self, groups, location="L1", op=ADMIT):
        self.seq[location] += 1
        self.push.send(frame(op, {**self.origin(), "location": location,
                                  "seq": self.seq[location], "groups": groups}))

    def evict(self, groups, location="L1"):
        self.admit(groups, location, EVICT)

    def heartbeat(self, reports=()):
        return self.call(HEARTBEAT, {**self.origin(), "locations": [
            {"location": loc, "last_seq": last, "key_count": n} for loc, last, n in reports]},
            heartbeat=True)

    def workers(self, instance_id=""):
        return self.call(WORKERS, {"instance_id": instance_id})["workers"]

    def lookup(self, model, hashes, rank=0, world_size=1):
        return self.call(LOOKUP, {"model": model, "world_size": world_size, "rank": rank,
                                  "hashes": b"".join(hashes)})["matches"]
