"""Against a real `kvtier server` ($KVTIER_BIN; skipped without it): the fixture, the basics, and
one host-path round trip through HostKvCache. The full integration tests live in
tests/integration/."""

import kvtier


def test_hello_noop_and_chunk_size(kvtier_server: str) -> None:
    with kvtier.Client(kvtier_server, client_name="pytest") as client:
        assert client.server_info.protocol_version == kvtier.PROTOCOL_VERSION
        assert client.noop().result(timeout=10) is None
        assert client.get_chunk_size().result(timeout=10).chunk_size == client.server_info.chunk_size


def test_host_cache_store_lookup_retrieve(kvtier_server: str) -> None:
    import numpy as np

    with kvtier.Client(kvtier_server) as client:
        per_chunk = client.server_info.chunk_size // 16  # blocks per chunk
        with kvtier.HostKvCache(num_layers=2, num_blocks=4 * per_chunk, block_size=16, num_kv_heads=2,
                                head_dim=64, dtype="fp16", format="kv_nhd") as cache:
            reply = client.register_kv_cache(**cache.registration(instance_id="py-smoke-0", model="smoke"))
            assert reply.result(10).object_size > 0
            rng = np.random.default_rng(1)
            for layer in cache.layers:
                layer[...] = rng.standard_normal(layer.shape).astype(np.float16)
            key = kvtier.Key(model="smoke", request_id="req-1",
                             tokens=np.arange(2 * client.server_info.chunk_size, dtype=np.uint32))
            src = list(range(2 * per_chunk))
            dst = list(range(2 * per_chunk, 4 * per_chunk))
            assert client.store("py-smoke-0", src, key, worker_rank=0).result(10).stored_chunks == 2

            again = key.replace(request_id="req-2")
            client.lookup(again).result(10)
            status = client.wait_prefetch_status("req-2", wait=5.0).result(10)
            assert (status.done, status.hit_chunks) == (True, 2)
            assert client.retrieve("py-smoke-0", dst, again, worker_rank=0).result(10).retrieved_chunks == 2
            for layer in cache.layers:
                assert np.array_equal(layer[:, dst], layer[:, src])
            client.end_session("req-1").result(10)
            client.end_session("req-2").result(10)
            assert client.unregister_kv_cache("py-smoke-0").result(10) is None
