"""CudaKvCache: an engine worker's paged KV cache in GPU memory (the CUDA transfer path).

The engine registers its per-layer KV tensors (a vLLM-like ``kv_caches`` list of torch CUDA
tensors) by CUDA IPC handle; the server opens them on the same GPU (found by UUID, so the two
processes may see different ``CUDA_VISIBLE_DEVICES``) and runs gather/scatter kernels between
the paged blocks and its pinned host memory. Ordering uses interprocess CUDA events both ways:
``store``/``retrieve`` record an event on the engine's stream and send its handle (the server's
copies wait for it), and the reply carries the server's event, which ``DeviceFuture.result()``
makes the engine's stream wait on (or synchronises on, with ``sync=True``).

torch is needed only by this module; ``kvtier.Client`` itself takes raw handles
(``register_kv_cache(backend="cuda", device_uuid=..., cuda_ipc_handles=[...])`` and
``store(..., event_ipc_handle=...)``) for engines built on something else.

Layouts per layer (row-major, H = num_kv_heads, D = head_dim, NB = num_blocks, BS = block_size)::

    kv_nhd     [2, NB, BS, H, D]   vLLM flash-attention
    nb_kv_nhd  [NB, 2, BS, H, D]   vLLM FlashInfer
    kv_hnd     [2, NB, H, BS, D]
    nb_kv_hnd  [NB, 2, H, BS, D]
    mla        [NB, BS, D]
    cross_layer [NB, L, 2, BS, H, D]  one tensor for all layers (pass ``kv_caches=[tensor]``)

Every layer must be contiguous, with the same shape, dtype and device. The engine must keep the
tensors (and their memory) alive while registered; the server maps them until unregister, or
until it reaps a worker that stopped pinging.
"""

from __future__ import annotations

import uuid as _uuid
from typing import Any

from kvtier.host_cache import FORMATS as _HOST_FORMATS

FORMATS = (*_HOST_FORMATS, "cross_layer")

_TORCH_DTYPES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "float32": "fp32",
    "float8_e4m3fn": "fp8_e4m3",
    "float8_e5m2": "fp8_e5m2",
}


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("kvtier.cuda_cache needs torch with CUDA") from e
    return torch


def device_uuid(device: Any) -> bytes:
    """The 16 bytes of a CUDA device's UUID (what REGISTER_KV_CACHE's device_uuid carries)."""
    torch = _torch()
    props = torch.cuda.get_device_properties(torch.device(device))
    text = str(props.uuid)
    if text.startswith("GPU-"):
        text = text[4:]
    return _uuid.UUID(text).bytes


def layout_of(kv_caches: list[Any], fmt: str) -> dict[str, Any]:
    """The REGISTER_KV_CACHE layout of per-layer tensors in format ``fmt`` (offsets unset)."""
    if fmt not in FORMATS:
        raise ValueError(f"format is {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not kv_caches:
        raise ValueError("kv_caches is empty")
    first = kv_caches[0]
    for i, t in enumerate(kv_caches):
        if not t.is_cuda:
            raise ValueError(f"kv_caches[{i}] is not a CUDA tensor")
        if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"kv_caches[{i}] differs in shape, dtype or device from kv_caches[0]")
        if not t.is_contiguous():
            raise ValueError(f"kv_caches[{i}] is not contiguous")
    dtype = _TORCH_DTYPES.get(str(first.dtype).removeprefix("torch."))
    if dtype is None:
        raise ValueError(f"dtype {first.dtype} is not supported ({', '.join(_TORCH_DTYPES)})")
    shape = tuple(first.shape)
    if fmt == "cross_layer":
        if len(kv_caches) != 1 or len(shape) != 6 or shape[2] != 2:
            raise ValueError("format cross_layer takes one [NB, L, 2, BS, H, D] tensor")
        nb, layers, _, bs, h, d = shape
        return {"num_layers": layers, "num_blocks": nb, "block_size": bs, "num_kv_heads": h,
                "head_dim": d, "dtype": dtype, "format": fmt, "layer_offsets": []}
    expected_rank = 3 if fmt == "mla" else 5
    if len(shape) != expected_rank:
        raise ValueError(f"format {fmt} needs {expected_rank}-d tensors, got shape {shape}")
    if fmt == "kv_nhd":
        _, nb, bs, h, d = shape
    elif fmt == "nb_kv_nhd":
        nb, _, bs, h, d = shape
    elif fmt == "kv_hnd":
        _, nb, h, bs, d = shape
    elif fmt == "nb_kv_hnd":
        nb, _, h, bs, d = shape
    else:
        nb, bs, d = shape
        h = 1
    if fmt != "mla" and (shape[0] if fmt.startswith("kv") else shape[1]) != 2:
        raise ValueError(f"format {fmt}: the K/V dimension of shape {shape} is not 2")
    return {
        "num_layers": len(kv_caches),
        "num_blocks": nb,
        "block_size": bs,
        "num_kv_heads": h,
        "head_dim": d,
        "dtype": dtype,
        "format": fmt,
        "layer_offsets": [],
    }


def ipc_handle_of(t: Any) -> tuple[bytes, int]:
    """(the IPC handle of the allocation holding tensor ``t``, t's byte offset within it)."""
    storage = t.untyped_storage()
    info = storage._share_cuda_()
    handle, storage_offset = bytes(info[1]), info[3]
    # torch >= 2.x prefixes the cudaIpcMemHandle_t with a version byte and a type byte ('c': a
    # plain cudaMalloc block; 'e': an expandable segment, which has no cudaIpcMemHandle_t).
    if len(handle) == 64 + 2:
        if handle[1] != ord("c"):
            raise ValueError(
                "torch shares this tensor's memory as an expandable segment, which CUDA IPC "
                "memory handles cannot describe: unset PYTORCH_CUDA_ALLOC_CONF=expandable_segments"
            )
        handle = handle[2:]
    if len(handle) != 64:
        raise ValueError(f"torch gave a {len(handle)}-byte IPC handle; kvtier needs 64 bytes")
    return handle, storage_offset + t.storage_offset() * t.element_size()


class DeviceFuture:
    """A STORE or RETRIEVE in flight. ``result()`` returns the reply once the server's copies are
    ordered before the engine's later work on ``stream`` (or done, with ``sync=True``)."""

    def __init__(self, future: Any, device: Any, stream: Any) -> None:
        self._future = future
        self._device = device
        self._stream = stream

    def done(self) -> bool:
        """True once the reply arrived and the server's copies completed (or the reply is an
        error). Never blocks. The server replies as soon as its copies are enqueued, so the
        reply alone does not mean they are done."""
        if not self._future.done():
            return False
        try:
            handle = self._future.result(0).event_ipc_handle
        except Exception:  # noqa: BLE001 - the error is result()'s to raise
            return True
        if handle is None:
            return True
        return bool(_torch().cuda.Event.from_ipc_handle(self._device, handle).query())

    def result(self, timeout: float | None = None, *, sync: bool = False) -> Any:
        torch = _torch()
        reply = self._future.result(timeout)
        handle = reply.event_ipc_handle
        if handle is not None:
            event = torch.cuda.Event.from_ipc_handle(self._device, handle)
            if sync:
                event.synchronize()
            else:
                (self._stream or torch.cuda.current_stream(self._device)).wait_event(event)
        return reply


class CudaKvCache:
    """Registers ``kv_caches`` (one contiguous CUDA tensor per layer) as one engine worker."""

    def __init__(
        self,
        client: Any,
        *,
        instance_id: str,
        model: str,
        kv_caches: list[Any],
        format: str,  # noqa: A002 - the protocol's name
        world_size: int = 1,
        worker_rank: int = 0,
    ) -> None:
        torch = _torch()
        self.client = client
        self.instance_id = instance_id
        self.model = model
        self.world_size = world_size
        self.worker_rank = worker_rank
        self.kv_caches = list(kv_caches)
        self.layout = layout_of(self.kv_caches, format)
        self.device = self.kv_caches[0].device
        handles = []
        for t in self.kv_caches:
            handle, offset = ipc_handle_of(t)
            handles.append(handle)
            self.layout["layer_offsets"].append(offset)
        if format == "cross_layer":  # every layer names the one tensor's base
            n = self.layout["num_layers"]
            handles = handles * n
            self.layout["layer_offsets"] = self.layout["layer_offsets"] * n
        self.handles = handles
        self.device_uuid = device_uuid(self.device)
        self._event = torch.cuda.Event(interprocess=True)
        self.object_size = 0

    def register(self, timeout: float | None = None) -> Any:
        reply = self.client.register_kv_cache(
            instance_id=self.instance_id,
            model=self.model,
            layout=self.layout,
            world_size=self.world_size,
            worker_rank=self.worker_rank,
            backend="cuda",
            device_uuid=self.device_uuid,
            cuda_ipc_handles=self.handles,
        ).result(timeout)
        self.object_size = reply.object_size
        return reply

    def unregister(self, timeout: float | None = None) -> None:
        self.client.unregister_kv_cache(self.instance_id).result(timeout)

    def _record(self, stream: Any) -> bytes:
        torch = _torch()
        s = stream or torch.cuda.current_stream(self.device)
        self._event.record(s)
        return bytes(self._event.ipc_handle())

    def store(
        self, block_ids: Any, key: Any = None, *, stream: Any = None, **key_fields: Any
    ) -> DeviceFuture:
        """STOREs the chunks of ``key`` (naming this worker's model, world size and rank) from
        ``block_ids``, after the work queued on ``stream`` (default: the current stream)."""
        handle = self._record(stream)
        f = self.client.store(
            self.instance_id, block_ids, key, event_ipc_handle=handle, **key_fields
        )
        return DeviceFuture(f, self.device, stream)

    def retrieve(
        self,
        block_ids: Any,
        key: Any = None,
        *,
        skip_first_n_tokens: int = 0,
        stream: Any = None,
        **key_fields: Any,
    ) -> DeviceFuture:
        """RETRIEVEs the looked-up chunks of ``key`` into ``block_ids``."""
        handle = self._record(stream)
        f = self.client.retrieve(
            self.instance_id,
            block_ids,
            key,
            skip_first_n_tokens=skip_first_n_tokens,
            event_ipc_handle=handle,
            **key_fields,
        )
        return DeviceFuture(f, self.device, stream)
