"""Key conversion: Python values to the protocol's key (no server needed)."""

import numpy as np
import pytest

import kvtier

BASE = {"model": "llama", "request_id": "req-1", "tokens": [1, 2, 3]}


def key(**fields) -> kvtier.Key:
    return kvtier.Key(**{**BASE, **fields})


def test_defaults_and_fields() -> None:
    k = key()
    assert (k.model, k.request_id, k.num_tokens) == ("llama", "req-1", 3)
    assert (k.world_size, k.worker_rank, k.cache_salt) == (1, None, "")
    assert (k.start, k.end, k.object_group) == (0, None, 0)
    assert k.tokens.dtype == np.uint32 and k.tokens.tolist() == [1, 2, 3]
    k = key(world_size=4, worker_rank=3, cache_salt="tenant", start=256, end=512, object_group=2)
    assert (k.world_size, k.worker_rank, k.cache_salt, k.start, k.end, k.object_group) == (
        4, 3, "tenant", 256, 512, 2,
    )
    assert "tokens=<3 tokens>" in repr(k)


@pytest.mark.parametrize(
    "tokens",
    [
        [7, 8, 4294967295],
        (7, 8, 4294967295),
        range(7, 10),
        np.array([7, 8, 4294967295], dtype=np.uint32),
        np.array([7, 8, 9], dtype=np.int64),
        np.array([7, 8, 9], dtype=np.uint8),
        np.array([0, 7, 8, 9, 10], dtype=np.uint32)[1::2],  # not contiguous
        [np.int32(7), np.uint64(8)],
    ],
)
def test_tokens_from_lists_and_numpy(tokens) -> None:
    expected = [int(t) for t in tokens]
    assert key(tokens=tokens).tokens.tolist() == expected


def test_empty_tokens() -> None:
    assert key(tokens=[]).num_tokens == 0
    assert key(tokens=np.array([], dtype=np.uint32)).num_tokens == 0


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"model": 3}, TypeError, "'model' must be a str"),
        ({"request_id": b"r"}, TypeError, "'request_id' must be a str"),
        ({"tokens": "abc"}, TypeError, "sequence of ints"),
        ({"tokens": b"\x01\x00\x00\x00"}, TypeError, "sequence of ints"),
        ({"tokens": 5}, TypeError, "sequence of ints"),
        ({"tokens": [1, 2.5]}, TypeError, r"'tokens' item 1 must be an int, not float"),
        ({"tokens": [1, None]}, TypeError, "must be an int, not NoneType"),
        ({"tokens": [True]}, TypeError, "must be an int, not bool"),
        ({"tokens": [-1]}, ValueError, r"item 0 must be in \[0, 4294967295\], got -1"),
        ({"tokens": [2**32]}, ValueError, "got 4294967296"),
        ({"tokens": [2**70]}, ValueError, "must be in"),
        ({"tokens": np.array([1, -5], dtype=np.int32)}, ValueError, "values from -5 to 1"),
        ({"tokens": np.array([2**33], dtype=np.uint64)}, ValueError, "must be in"),
        ({"tokens": np.zeros((2, 2), dtype=np.uint32)}, ValueError, "one-dimensional"),
        ({"tokens": np.zeros(3, dtype=np.float32)}, TypeError, "must hold integers"),
        ({"world_size": 0}, ValueError, "'world_size' must be in"),
        ({"world_size": 65536}, ValueError, "'world_size' must be in"),
        ({"world_size": 2, "worker_rank": 2}, ValueError, "worker_rank 2 must be less than world_size 2"),
        ({"worker_rank": "0"}, TypeError, "'worker_rank' must be an int"),
        ({"start": -1}, ValueError, "'start' must be in"),
        ({"end": 1.0}, TypeError, "'end' must be an int"),
        ({"object_group": 2**32}, ValueError, "'object_group' must be in"),
        ({"cache_salt": None}, TypeError, "'cache_salt' must be a str"),
        ({"tokenz": [1]}, TypeError, "unknown key field 'tokenz'"),
    ],
)
def test_conversion_errors(fields, error, match) -> None:
    with pytest.raises(error, match=match):
        key(**fields)


@pytest.mark.parametrize("missing", ["model", "request_id", "tokens"])
def test_required_fields(missing: str) -> None:
    fields = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(TypeError, match=f"key field '{missing}' is required"):
        kvtier.Key(**fields)


def test_replace_and_equality() -> None:
    k = key(world_size=2)
    ranked = k.replace(worker_rank=1)
    assert ranked.worker_rank == 1 and k.worker_rank is None
    assert ranked.replace(worker_rank=None) == k
    assert k == key(world_size=2)
    assert k != key(world_size=2, tokens=[1, 2, 4])
    assert k != "not a key"
    with pytest.raises(ValueError, match="less than world_size"):
        k.replace(worker_rank=2)
