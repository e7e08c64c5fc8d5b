"""kvtier.Client against an in-process fake server (tests/fake_server.py): requests on the wire,
typed replies, error mapping, futures, timeouts, closing, and the GIL released while waiting."""

import struct
import threading
import time

import numpy as np
import pytest

import kvtier
from kvtier import StatusCode

pytest.importorskip("zmq")
pytest.importorskip("msgpack")
from fake_server import DEFAULT_HELLO, Error, Op, encode_header  # noqa: E402

REPLIES = {
    Op.REGISTER_KV_CACHE: {"object_size": 1 << 20},
    Op.GET_CHUNK_SIZE: {"chunk_size": 256},
    Op.QUERY_PREFETCH_STATUS: {"done": True, "hit_chunks": 7},
    Op.WAIT_PREFETCH_STATUS: {"done": False, "hit_chunks": 0},
    Op.QUERY_PREFETCH_LOOKUP_HITS: {"known": True, "hit_chunks": 5},
    Op.STORE: {"stored_chunks": 3, "present_chunks": 2, "failed_chunks": 1},
    Op.RETRIEVE: {"retrieved_chunks": 4},
    Op.FREE_LOOKUP_LOCKS: {"released": 6},
    Op.END_SESSION: {"touched_keys": 9},
    Op.PING: {"ok": True},
    Op.CLEAR: {"cleared": 77},
}


def answer_all(request):
    return REPLIES.get(request.opcode, {})


def hold(request):
    return None


def key(**fields):
    return kvtier.Key(**{"model": "llama", "request_id": "req-1", "tokens": [1, 2, 3, 4], **fields})


def test_connect_and_server_info(fake_server) -> None:
    # hello=None: HELLO goes to the handler like any request (and into server.requests).
    server = fake_server(lambda r: DEFAULT_HELLO if r.opcode == Op.HELLO else {}, hello=None)
    with kvtier.Client(server.endpoint, client_name="engine-7") as client:
        info = client.server_info
        assert isinstance(info, kvtier.HelloReply)
        assert info.to_dict() == DEFAULT_HELLO
        assert client.endpoint == server.endpoint
        hello = server.requests[0]
        assert hello.opcode == Op.HELLO
        assert hello.payload == {"protocol_version": 1, "client": "engine-7"}


def test_version_mismatch_is_unsupported_version(fake_server) -> None:
    server = fake_server(hold, hello={**DEFAULT_HELLO, "protocol_version": 2})
    with pytest.raises(kvtier.UnsupportedVersion, match="protocol version 2") as info:
        kvtier.Client(server.endpoint)
    assert info.value.code == StatusCode.UNSUPPORTED_VERSION
    assert isinstance(info.value, kvtier.ProtocolError)


def test_every_method_sends_its_request_and_returns_its_reply(fake_server) -> None:
    server = fake_server(answer_all)
    with kvtier.HostKvCache(num_layers=2, num_blocks=8, block_size=16, num_kv_heads=2, head_dim=64) as cache:
        registration = cache.registration(instance_id="w0", model="llama", world_size=2, worker_rank=1)
        with kvtier.Client(server.endpoint) as client:
            assert client.register_kv_cache(**registration).result(10).object_size == 1 << 20
            assert client.unregister_kv_cache("w0").result(10) is None
            assert client.get_chunk_size().result(10).chunk_size == 256
            assert client.lookup(key(), read_locks=2, timeout=0.5).result(10) is None
            status = client.query_prefetch_status("req-1").result(10)
            assert isinstance(status, kvtier.PrefetchStatusReply)
            assert (status.done, status.hit_chunks) == (True, 7)
            assert client.wait_prefetch_status("req-1", wait=0.25).result(10).done is False
            assert client.query_prefetch_lookup_hits("req-1").result(10).to_dict() == {"known": True, "hit_chunks": 5}
            stored = client.store("w0", np.array([5, 6], dtype=np.uint32), key(), worker_rank=0)
            assert stored.result(10) == stored.result(10)
            assert repr(stored.result(10)) == (
                "StoreReply(stored_chunks=3, present_chunks=2, failed_chunks=1, event_ipc_handle=None)"
            )
            assert client.retrieve("w0", [7], key(worker_rank=0), skip_first_n_tokens=2).result(10).retrieved_chunks == 4
            assert client.free_lookup_locks(model="llama", request_id="req-1", tokens=[1, 2]).result(10).released == 6
            assert client.end_session("req-1").result(10).touched_keys == 9
            assert client.ping("w0").result(10).ok is True
            assert client.clear(force=True).result(10).cleared == 77
            assert client.noop().result(10) is None
            assert client.pending == 0

    got = server.requests
    assert [r.opcode for r in got] == [
        Op.REGISTER_KV_CACHE, Op.UNREGISTER_KV_CACHE, Op.GET_CHUNK_SIZE, Op.LOOKUP,
        Op.QUERY_PREFETCH_STATUS, Op.WAIT_PREFETCH_STATUS, Op.QUERY_PREFETCH_LOOKUP_HITS,
        Op.STORE, Op.RETRIEVE, Op.FREE_LOOKUP_LOCKS, Op.END_SESSION, Op.PING, Op.CLEAR, Op.NOOP,
    ]
    by_op = {r.opcode: r for r in got}
    assert by_op[Op.REGISTER_KV_CACHE].payload == {k: v for k, v in registration.items()}
    lookup = by_op[Op.LOOKUP].payload
    assert (lookup["read_locks"], lookup["timeout_ms"]) == (2, 500)
    assert lookup["key"]["worker_rank"] is None and lookup["key"]["model"] == "llama"
    assert by_op[Op.LOOKUP].tokens() == [1, 2, 3, 4]
    assert by_op[Op.WAIT_PREFETCH_STATUS].payload == {"request_id": "req-1", "timeout_ms": 250}
    store = by_op[Op.STORE].payload
    assert (store["instance_id"], store["block_ids"], store["key"]["worker_rank"]) == ("w0", [5, 6], 0)
    assert by_op[Op.RETRIEVE].payload["skip_first_n_tokens"] == 2
    assert by_op[Op.FREE_LOOKUP_LOCKS].tokens() == [1, 2]
    assert by_op[Op.PING].payload == {"instance_id": "w0"}
    assert by_op[Op.CLEAR].payload == {"force": True}
    ids = [r.request_id for r in got]
    assert len(set(ids)) == len(ids) and 0 not in ids


@pytest.mark.parametrize(
    ("code", "cls"),
    [(1, kvtier.InvalidArgument), (2, kvtier.NotFound), (11, kvtier.ResourceExhausted),
     (800, kvtier.ProtocolError), (555, kvtier.KvtierError)],
)
def test_error_replies_raise_by_code(fake_server, code: int, cls: type) -> None:
    server = fake_server(lambda r: Error(code, f"server says {code}", retryable=code == 11))
    with kvtier.Client(server.endpoint) as client:
        future = client.store("w0", [1], key(worker_rank=0))
        with pytest.raises(cls, match=f"^server says {code}$") as info:
            future.result(10)
        assert type(info.value) is cls
        assert info.value.code == code
        assert info.value.retryable is (code == 11)
        error = future.exception(10)  # the same error, returned
        assert type(error) is cls and error.code == code


def test_wrong_reply_type_is_protocol_error(fake_server) -> None:
    server = fake_server(hold)
    with kvtier.Client(server.endpoint) as client:
        future = client.store("w0", [1], key(worker_rank=0))
        (request,) = server.wait_for_requests(1)
        server.reply(request, {"cleared": 1}, opcode=Op.CLEAR)
        with pytest.raises(kvtier.ProtocolError, match="CLEAR"):
            future.result(10)


def test_reply_in_another_version_is_unsupported_version(fake_server) -> None:
    server = fake_server(hold)
    with kvtier.Client(server.endpoint) as client:
        future = client.noop()
        (request,) = server.wait_for_requests(1)
        server.send_raw(request.identity, [encode_header(Op.NOOP, request.request_id, 1, version=2), b"\x80"])
        with pytest.raises(kvtier.UnsupportedVersion):
            future.result(10)


def test_futures_and_out_of_order_replies(fake_server) -> None:
    server = fake_server(hold)
    with kvtier.Client(server.endpoint) as client:
        futures = [client.end_session(f"req-{i}") for i in range(8)]
        requests = server.wait_for_requests(8)
        assert not any(f.done() for f in futures)
        assert not futures[0].wait(0.01)
        assert "pending" in repr(futures[0])
        assert client.pending == 8
        for request in reversed(requests):
            server.reply(request, {"touched_keys": int(request.payload["request_id"][4:]) + 100})
        assert [f.result(10).touched_keys for f in futures] == [i + 100 for i in range(8)]
        assert all(f.done() and f.wait(0) for f in futures)
        assert futures[0].exception() is None
        assert "done" in repr(futures[0])
        assert client.pending == 0


def test_result_timeout_is_the_builtin_timeout_error(fake_server) -> None:
    server = fake_server(hold)
    with kvtier.Client(server.endpoint) as client:
        future = client.clear()
        with pytest.raises(TimeoutError, match="still pending") as info:
            future.result(timeout=0.05)
        assert not isinstance(info.value, kvtier.KvtierError)
        (request,) = server.wait_for_requests(1)
        server.reply(request, {"cleared": 1})
        assert future.result(10).cleared == 1


def test_unanswered_request_times_out(fake_server) -> None:
    server = fake_server(hold)
    with kvtier.Client(server.endpoint, request_timeout=0.2) as client:
        start = time.monotonic()
        with pytest.raises(kvtier.RequestTimeout, match="no reply within 200ms") as info:
            client.clear().result(10)
        assert time.monotonic() - start >= 0.2
        assert info.value.code == StatusCode.TIMEOUT and info.value.retryable
        assert isinstance(info.value, TimeoutError)


def test_close_cancels_pending_and_later_calls(fake_server) -> None:
    server = fake_server(hold)
    client = kvtier.Client(server.endpoint)
    future = client.noop()
    server.wait_for_requests(1)
    client.close()
    with pytest.raises(kvtier.Cancelled, match="closed") as info:
        future.result(0)
    assert info.value.code == StatusCode.CANCELLED
    client.close()  # idempotent
    with pytest.raises(kvtier.Cancelled):
        client.ping().result(0)
    assert client.pending == 0


def test_key_errors_are_raised_before_sending(fake_server) -> None:
    server = fake_server(answer_all)
    with kvtier.Client(server.endpoint) as client:
        with pytest.raises(TypeError, match="store: key field 'worker_rank' is required"):
            client.store("w0", [1], key())
        with pytest.raises(ValueError, match="lookup: key field 'worker_rank' must be None"):
            client.lookup(key(worker_rank=0))
        with pytest.raises(TypeError, match="key must be a kvtier.Key or a dict"):
            client.lookup(["llama"])
        with pytest.raises(TypeError, match="block_ids must be a sequence of ints"):
            client.store("w0", "1,2", key(worker_rank=0))
        with pytest.raises(ValueError, match="block_ids item 1"):
            client.store("w0", [1, -2], key(worker_rank=0))
        with pytest.raises(TypeError, match="unknown key field 'rank'"):
            client.free_lookup_locks(key(), rank=0)
        # A dict works as well as a Key, and keyword fields override it.
        client.lookup({"model": "m", "request_id": "r", "tokens": [1]}, model="other").result(10)
    assert [r.opcode for r in server.requests] == [Op.LOOKUP]
    assert server.requests[0].payload["key"]["model"] == "other"


def test_waiting_releases_the_gil(fake_server) -> None:
    server = fake_server(hold)
    with kvtier.Client(server.endpoint) as client:
        future = client.get_chunk_size()
        (request,) = server.wait_for_requests(1)
        # This thread can only run while the main thread waits in result(): if result() held
        # the GIL, the reply would never come and result() would time out.
        answer = threading.Thread(target=lambda: server.reply(request, {"chunk_size": 512}))
        answer.start()
        assert future.result(timeout=10).chunk_size == 512
        answer.join()


def test_many_threads_share_one_client(fake_server) -> None:
    server = fake_server(lambda r: {"touched_keys": int(r.payload["request_id"])})
    errors: list[str] = []
    with kvtier.Client(server.endpoint) as client:

        def work(base: int) -> None:
            futures = [(i, client.end_session(str(base + i))) for i in range(200)]
            for i, f in futures:
                if f.result(10).touched_keys != base + i:
                    errors.append(f"{base + i}")

        threads = [threading.Thread(target=work, args=(t * 1000,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_tokens_travel_little_endian(fake_server) -> None:
    server = fake_server(answer_all)
    tokens = np.array([0, 1, 256, 65536, 4294967295], dtype=np.uint32)
    with kvtier.Client(server.endpoint) as client:
        client.lookup(model="m", request_id="r", tokens=tokens).result(10)
    raw = server.requests[0].payload["key"]["tokens"]
    assert raw == struct.pack("<5I", *tokens.tolist())


def test_cuda_registration_and_event_handles_are_checked_before_sending(fake_server) -> None:
    layout = {"num_layers": 2, "num_blocks": 8, "block_size": 16, "num_kv_heads": 2,
              "head_dim": 64, "dtype": "bf16", "format": "kv_nhd", "layer_offsets": [0, 4096]}
    reg = kvtier._kvtier._registration(instance_id="g0", model="m", layout=layout, backend="cuda",
                                       device_uuid=b"\x01" * 16,
                                       cuda_ipc_handles=[b"a" * 64, b"b" * 64])
    assert reg["device_uuid"] == b"\x01" * 16
    assert reg["cuda_ipc_handles"] == [b"a" * 64, b"b" * 64]
    with pytest.raises(ValueError, match="device_uuid must be exactly 16 bytes"):
        kvtier._kvtier._registration(instance_id="g0", model="m", layout=layout, backend="cuda",
                                     device_uuid=b"\x01" * 15, cuda_ipc_handles=[b"a" * 64] * 2)
    with pytest.raises(ValueError, match=r"cuda_ipc_handles\[1\] must be exactly 64 bytes"):
        kvtier._kvtier._registration(instance_id="g0", model="m", layout=layout, backend="cuda",
                                     device_uuid=b"\x01" * 16, cuda_ipc_handles=[b"a" * 64, b"b"])
    with pytest.raises(ValueError, match="needs device_uuid and cuda_ipc_handles"):
        kvtier._kvtier._registration(instance_id="g0", model="m", layout=layout, backend="cuda")
    with pytest.raises(ValueError, match="for backend 'cuda' only"):
        kvtier._kvtier._registration(instance_id="g0", model="m", layout=layout, shm_name="/s",
                                     shm_size=1 << 20, device_uuid=b"\x01" * 16)
    server = fake_server(answer_all)
    with kvtier.Client(server.endpoint) as client:
        with pytest.raises(ValueError, match="event_ipc_handle must be exactly 64 bytes"):
            client.store("w0", [1], key(worker_rank=0), event_ipc_handle=b"short")
        with pytest.raises(TypeError, match="event_ipc_handle must be bytes"):
            client.retrieve("w0", [1], key(worker_rank=0), event_ipc_handle="x" * 64)
