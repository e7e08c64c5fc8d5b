"""kvtier: the Python client of the kvtier KV-cache server.

    import kvtier

    with kvtier.Client("tcp://127.0.0.1:5555", client_name="vllm-worker-0") as client:
        key = kvtier.Key(model="llama-3-8b", request_id="req-1", tokens=token_ids)
        client.lookup(key).result()
        status = client.wait_prefetch_status("req-1", wait=1.0).result()

Every request method returns a Future at once; ``.result()`` waits for the reply (releasing the
GIL) and raises a KvtierError subclass when the request failed. docs/client.md has the details.
"""

from kvtier._errors import (
    Cancelled,
    InvalidArgument,
    KvtierError,
    NotFound,
    ProtocolError,
    RequestTimeout,
    ResourceExhausted,
    StatusCode,
    Unavailable,
    UnsupportedVersion,
    error_class,
)
from kvtier._kvtier import (
    PROTOCOL_VERSION,
    ChunkSizeReply,
    ClearReply,
    Client,
    EndSessionReply,
    FreeLookupLocksReply,
    Future,
    HelloReply,
    Key,
    LookupHitsReply,
    PingReply,
    PrefetchStatusReply,
    RegisterKvCacheReply,
    RetrieveReply,
    StoreReply,
)
from kvtier.host_cache import HostKvCache

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "Cancelled",
    "ChunkSizeReply",
    "ClearReply",
    "Client",
    "EndSessionReply",
    "FreeLookupLocksReply",
    "Future",
    "HelloReply",
    "HostKvCache",
    "InvalidArgument",
    "Key",
    "KvtierError",
    "LookupHitsReply",
    "NotFound",
    "PingReply",
    "PrefetchStatusReply",
    "ProtocolError",
    "RegisterKvCacheReply",
    "RequestTimeout",
    "ResourceExhausted",
    "RetrieveReply",
    "StatusCode",
    "StoreReply",
    "Unavailable",
    "UnsupportedVersion",
    "error_class",
]
