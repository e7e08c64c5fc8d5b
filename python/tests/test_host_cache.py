"""HostKvCache: layouts, offsets, the REGISTER_KV_CACHE description and the segment's lifecycle."""

import os
from multiprocessing import shared_memory

import numpy as np
import pytest

import kvtier
from kvtier import _kvtier
from kvtier.host_cache import layer_shape

DIMS = {"num_layers": 3, "num_blocks": 10, "block_size": 16, "num_kv_heads": 4, "head_dim": 8}


def shm_exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


@pytest.mark.parametrize(
    ("fmt", "shape"),
    [
        ("kv_nhd", (2, 10, 16, 4, 8)),
        ("nb_kv_nhd", (10, 2, 16, 4, 8)),
        ("kv_hnd", (2, 10, 4, 16, 8)),
        ("nb_kv_hnd", (10, 2, 4, 16, 8)),
    ],
)
def test_layer_shapes(fmt: str, shape: tuple) -> None:
    with kvtier.HostKvCache(**DIMS, dtype="fp16", format=fmt) as cache:
        assert cache.layer_shape == shape
        assert all(layer.shape == shape and layer.dtype == np.float16 for layer in cache.layers)


def test_mla_layout() -> None:
    with kvtier.HostKvCache(**{**DIMS, "num_kv_heads": 1, "head_dim": 576}, format="mla") as cache:
        assert cache.layer_shape == (10, 16, 576)
        assert cache.layer_bytes == 10 * 16 * 576 * 2
    with pytest.raises(ValueError, match="mla.*num_kv_heads 1"):
        kvtier.HostKvCache(**DIMS, format="mla")


@pytest.mark.parametrize(
    ("dtype", "size", "np_dtype"),
    [("bf16", 2, np.uint16), ("fp16", 2, np.float16), ("fp32", 4, np.float32),
     ("fp8_e4m3", 1, np.uint8), ("fp8_e5m2", 1, np.uint8)],
)
def test_offsets_are_aligned_and_disjoint(dtype: str, size: int, np_dtype) -> None:
    with kvtier.HostKvCache(**DIMS, dtype=dtype) as cache:
        layer_bytes = 2 * 10 * 16 * 4 * 8 * size
        assert cache.layer_bytes == layer_bytes
        stride = -(-layer_bytes // 4096) * 4096
        assert cache.layer_offsets == [0, stride, 2 * stride]
        assert cache.shm_size == 2 * stride + layer_bytes
        assert cache.np_dtype == np_dtype
        assert cache.layer(1).nbytes == layer_bytes


def test_alignment_option() -> None:
    with kvtier.HostKvCache(**DIMS, dtype="fp32", alignment=64) as cache:
        layer_bytes = 2 * 10 * 16 * 4 * 8 * 4  # 40960: already a multiple of 64
        assert cache.layer_offsets == [0, layer_bytes, 2 * layer_bytes]
    with pytest.raises(ValueError, match="power of two"):
        kvtier.HostKvCache(**DIMS, alignment=3000)


def test_layers_are_views_of_the_segment() -> None:
    with kvtier.HostKvCache(**DIMS, dtype="fp32", format="kv_nhd") as cache:
        cache.layer(2)[1, 7, 3, 2, 5] = 42.0  # V, block 7, token 3, head 2, element 5
        other = shared_memory.SharedMemory(name=cache.shm_name)
        try:
            raw = np.ndarray((cache.shm_size // 4,), dtype=np.float32, buffer=other.buf)
            index = (cache.layer_offsets[2] // 4) + np.ravel_multi_index((1, 7, 3, 2, 5), cache.layer_shape)
            assert raw[index] == 42.0
            del raw
        finally:
            other.close()


def test_registration_is_what_the_client_sends() -> None:
    with kvtier.HostKvCache(**DIMS, dtype="bf16", format="nb_kv_hnd") as cache:
        registration = cache.registration(instance_id="vllm-0-rank-1", model="llama", world_size=2, worker_rank=1)
        assert registration == {
            "instance_id": "vllm-0-rank-1",
            "model": "llama",
            "world_size": 2,
            "worker_rank": 1,
            "backend": "host",
            "layout": {**DIMS, "dtype": "bf16", "format": "nb_kv_hnd", "layer_offsets": cache.layer_offsets},
            "shm_name": cache.shm_name,
            "shm_size": cache.shm_size,
        }
        # The extension module takes it as it is, unchanged.
        assert _kvtier._registration(**registration) == registration


def test_registration_conversion_errors() -> None:
    with kvtier.HostKvCache(**DIMS) as cache:
        good = cache.registration(instance_id="i", model="m")
        with pytest.raises(ValueError, match="dtype.*'bf17'.*expected one of bf16"):
            _kvtier._registration(**{**good, "layout": {**good["layout"], "dtype": "bf17"}})
        with pytest.raises(ValueError, match="format.*'nhd'"):
            _kvtier._registration(**{**good, "layout": {**good["layout"], "format": "nhd"}})
        layout = dict(good["layout"])
        del layout["layer_offsets"]
        with pytest.raises(TypeError, match="'layer_offsets' is required"):
            _kvtier._registration(**{**good, "layout": layout})
        with pytest.raises(TypeError, match="unknown layout field 'heads'"):
            _kvtier._registration(**{**good, "layout": {**good["layout"], "heads": 2}})
        with pytest.raises(ValueError, match="worker_rank 1 must be less than world_size 1"):
            _kvtier._registration(**{**good, "worker_rank": 1})


def test_segment_lifecycle() -> None:
    cache = kvtier.HostKvCache(**DIMS, dtype="fp32", name="kvtier_pytest_lifecycle_" + str(os.getpid()))
    name = cache.shm_name
    assert name.startswith("kvtier_pytest_lifecycle_")
    assert shm_exists(name)
    assert os.path.getsize(f"/dev/shm/{name}") == cache.shm_size
    cache.unlink()  # the name goes; the mapping stays
    assert not shm_exists(name)
    cache.layer(0)[...] = 1
    cache.unlink()  # idempotent
    view = cache.layer(1)
    cache.close()
    assert cache.closed
    cache.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        cache.layer(0)
    with pytest.raises(ValueError, match="closed"):
        cache.shm_name
    assert "closed" in repr(cache)
    # A view outlives close(): the memory stays mapped until the view goes.
    view[...] = 2.0
    assert float(view.sum()) == 2.0 * view.size
    del view


def test_context_manager_removes_the_segment() -> None:
    with kvtier.HostKvCache(**DIMS) as cache:
        name = cache.shm_name
        assert shm_exists(name)
    assert not shm_exists(name)


def test_names_are_unique_and_valid() -> None:
    with kvtier.HostKvCache(**DIMS) as a, kvtier.HostKvCache(**DIMS) as b:
        assert a.shm_name != b.shm_name
    with kvtier.HostKvCache(**DIMS, name="/kvtier_pytest_slash_" + str(os.getpid())) as c:
        assert not c.shm_name.startswith("/")
    for bad in ["", "a/b", "x" * 300]:
        with pytest.raises(ValueError, match="not a shared-memory name"):
            kvtier.HostKvCache(**DIMS, name=bad)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [("num_layers", 0, ValueError), ("num_blocks", -1, ValueError), ("head_dim", 2.0, TypeError),
     ("block_size", True, TypeError), ("num_kv_heads", 2**32, ValueError)],
)
def test_bad_dimensions(field: str, value, error: type) -> None:
    with pytest.raises(error, match=field):
        kvtier.HostKvCache(**{**DIMS, field: value})


def test_bad_dtype_and_format() -> None:
    with pytest.raises(ValueError, match="dtype is 'int8'"):
        kvtier.HostKvCache(**DIMS, dtype="int8")
    with pytest.raises(ValueError, match="format is 'nhd'"):
        kvtier.HostKvCache(**DIMS, format="nhd")
    with pytest.raises(ValueError, match="expected one of"):
        layer_shape("hnd", 1, 1, 1, 1)
