"""HostKvCache: an engine worker's paged KV cache in POSIX shared memory (the host transfer path).

The server maps the segment by name (REGISTER_KV_CACHE with backend "host") and copies chunks
between it and its cache with memcpy: STORE reads the blocks a request names, RETRIEVE writes
them. The engine keeps the cache in the segment (numpy views of each layer, or torch tensors
made from them with ``torch.from_numpy``) and must keep the segment alive while registered.

Layouts per layer (row-major, H = num_kv_heads, D = head_dim, NB = num_blocks,
BS = block_size), as src/kvtier/transfer/kv_layout.h defines them::

    kv_nhd     [2, NB, BS, H, D]   vLLM flash-attention
    nb_kv_nhd  [NB, 2, BS, H, D]   vLLM FlashInfer
    kv_hnd     [2, NB, H, BS, D]
    nb_kv_hnd  [NB, 2, H, BS, D]
    mla        [NB, BS, D]         (num_kv_heads must be 1)

Layers lie one after another in the segment, each at a multiple of ``alignment`` bytes.
"""

from __future__ import annotations

import mmap
import os
import secrets
from multiprocessing import shared_memory
from typing import Any

import numpy as np

# Bytes per element and the numpy dtype a layer view uses. numpy has no bfloat16 or fp8: their
# views hold the raw bits (uint16 / uint8); reinterpret with torch (``.view(torch.bfloat16)``)
# or ml_dtypes.
DTYPES: dict[str, tuple[int, np.dtype]] = {
    "bf16": (2, np.dtype(np.uint16)),
    "fp16": (2, np.dtype(np.float16)),
    "fp32": (4, np.dtype(np.float32)),
    "fp8_e4m3": (1, np.dtype(np.uint8)),
    "fp8_e5m2": (1, np.dtype(np.uint8)),
}
FORMATS = ("kv_nhd", "nb_kv_nhd", "kv_hnd", "nb_kv_hnd", "mla")

# Linux NAME_MAX (255) minus the leading '/' that shm_open adds.
_MAX_NAME = 254


def layer_shape(
    fmt: str, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int
) -> tuple[int, ...]:
    """The shape of one layer's tensor in format ``fmt``."""
    nb, bs, h, d = num_blocks, block_size, num_kv_heads, head_dim
    shapes = {
        "kv_nhd": (2, nb, bs, h, d),
        "nb_kv_nhd": (nb, 2, bs, h, d),
        "kv_hnd": (2, nb, h, bs, d),
        "nb_kv_hnd": (nb, 2, h, bs, d),
        "mla": (nb, bs, d),
    }
    if fmt not in shapes:
        raise ValueError(f"format is {fmt!r}; expected one of {', '.join(FORMATS)}")
    return shapes[fmt]


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


class HostKvCache:
    """A paged KV cache in a new POSIX shared-memory segment, ready to register with a server.

    Example::

        cache = HostKvCache(num_layers=32, num_blocks=4096, block_size=16, num_kv_heads=8,
                            head_dim=128, dtype="bf16", format="kv_nhd")
        client.register_kv_cache(**cache.registration(instance_id="vllm-0-rank-0",
                                                      model="llama-3-8b"))
        k0 = cache.layer(0)[0]        # numpy view: layer 0's K blocks
        ...
        cache.close()                 # unmaps and removes the segment

    The segment is created at construction and removed (unlinked) by :meth:`close` or when
    leaving a ``with`` block; views of its layers and a server that maps it keep the memory
    until they are done with it. Not thread-safe.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: str = "bf16",
        format: str = "kv_nhd",  # noqa: A002 (the protocol's field name)
        name: str | None = None,
        alignment: int = 4096,
    ) -> None:
        for field, value in (
            ("num_layers", num_layers),
            ("num_blocks", num_blocks),
            ("block_size", block_size),
            ("num_kv_heads", num_kv_heads),
            ("head_dim", head_dim),
            ("alignment", alignment),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{field} must be an int, not {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{field} must be positive, got {value}")
            if value > 0xFFFFFFFF and field != "alignment":
                raise ValueError(f"{field} must fit in 32 bits, got {value}")
        if alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of two, got {alignment}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype is {dtype!r}; expected one of {', '.join(DTYPES)}")
        if format == "mla" and num_kv_heads != 1:
            raise ValueError(f"format 'mla' needs num_kv_heads 1, got {num_kv_heads}")
        self._shape = layer_shape(format, num_blocks, block_size, num_kv_heads, head_dim)
        if name is None:
            name = f"kvtier_{os.getpid()}_{secrets.token_hex(6)}"
        name = name.removeprefix("/")
        if not name or "/" in name or "\0" in name or len(name) > _MAX_NAME:
            raise ValueError(
                f"name {name!r} is not a shared-memory name (one non-empty component of at most "
                f"{_MAX_NAME} bytes, no '/')"
            )

        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.format = format
        element_bytes, self._np_dtype = DTYPES[dtype]
        self.layer_bytes = int(np.prod(self._shape)) * element_bytes
        stride = _round_up(self.layer_bytes, alignment)
        self.layer_offsets = [layer * stride for layer in range(num_layers)]
        self.shm_size = self.layer_offsets[-1] + self.layer_bytes

        # SharedMemory creates the segment (and its resource tracker removes it should this
        # process die without close()), but the views use a mapping of our own: SharedMemory's
        # close() unmaps even while numpy arrays still point into it. Ours lives as long as
        # the last view (numpy keeps it referenced), so no view ever dangles.
        shm = shared_memory.SharedMemory(name=name, create=True, size=self.shm_size)
        try:
            fd = os.open(f"/dev/shm/{shm.name}", os.O_RDWR)
            try:
                self._mmap: mmap.mmap | None = mmap.mmap(fd, self.shm_size)
            finally:
                os.close(fd)
        except BaseException:
            shm.close()
            shm.unlink()
            raise
        shm.close()  # its own mapping, never exported
        self._shm: shared_memory.SharedMemory | None = shm
        self._name = shm.name
        self._unlinked = False
        self._layers = [
            np.ndarray(self._shape, dtype=self._np_dtype, buffer=self._mmap, offset=offset)
            for offset in self.layer_offsets
        ]

    # ---- what the server needs ------------------------------------------------------------

    @property
    def shm_name(self) -> str:
        """The segment's name, without the leading '/' (the server accepts either)."""
        self._live()
        return self._name

    @property
    def layout(self) -> dict[str, Any]:
        """The REGISTER_KV_CACHE layout (protocol.md): dimensions, dtype, format, layer offsets."""
        return {
            "num_layers": self.num_layers,
            "num_blocks": self.num_blocks,
            "block_size": self.block_size,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "dtype": self.dtype,
            "format": self.format,
            "layer_offsets": list(self.layer_offsets),
        }

    def registration(
        self, *, instance_id: str, model: str, world_size: int = 1, worker_rank: int = 0
    ) -> dict[str, Any]:
        """The keyword arguments of ``Client.register_kv_cache`` for this cache."""
        return {
            "instance_id": instance_id,
            "model": model,
            "world_size": world_size,
            "worker_rank": worker_rank,
            "backend": "host",
            "layout": self.layout,
            "shm_name": self.shm_name,
            "shm_size": self.shm_size,
        }

    # ---- the engine's side ----------------------------------------------------------------

    @property
    def layer_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def np_dtype(self) -> np.dtype:
        """The numpy dtype of layer views (raw bits for bf16 and fp8)."""
        return self._np_dtype

    def layer(self, index: int) -> np.ndarray:
        """Layer ``index``'s tensor: a numpy view into the segment (writes are what the server reads)."""
        self._live()
        return self._layers[index]

    @property
    def layers(self) -> list[np.ndarray]:
        self._live()
        return list(self._layers)

    @property
    def closed(self) -> bool:
        return self._shm is None

    def close(self) -> None:
        """Removes the segment's name and drops the cache's mapping. Idempotent.

        Views from :meth:`layer` stay valid: the memory is unmapped when the last of them goes.
        A registered server keeps its own mapping until it unregisters.
        """
        if self._shm is None:
            return
        self.unlink()
        self._layers = []
        self._mmap = None
        self._shm = None

    def unlink(self) -> None:
        """Removes the segment's name now (the mapping stays usable until close()). Idempotent."""
        shm = self._live()
        if not self._unlinked:
            shm.unlink()
            self._unlinked = True

    def __enter__(self) -> HostKvCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._shm is None else f"shm={self._name!r}"
        return (
            f"HostKvCache({state}, layers={self.num_layers}, layer_shape={self._shape}, "
            f"dtype={self.dtype}, format={self.format}, shm_size={self.shm_size})"
        )

    def _live(self) -> shared_memory.SharedMemory:
        if self._shm is None:
            raise ValueError("HostKvCache is closed")
        return self._shm
