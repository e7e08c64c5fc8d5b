"""Against a real `kvtier server` ($KVTIER_BIN; skipped without it). The lead's integration tests
go in tests/integration/; this only checks the fixture and the basics."""

import kvtier


def test_hello_noop_and_chunk_size(kvtier_server: str) -> None:
    with kvtier.Client(kvtier_server, client_name="pytest") as client:
        assert client.server_info.protocol_version == kvtier.PROTOCOL_VERSION
        assert client.noop().result(timeout=10) is None
        assert client.get_chunk_size().result(timeout=10).chunk_size == client.server_info.chunk_size
