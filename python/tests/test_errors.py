"""Exceptions and status codes; connecting to nothing (no server needed)."""

import time

import pytest

import kvtier
from kvtier import StatusCode, _errors, _kvtier


def test_status_codes_match_the_cpp_enum() -> None:
    cpp = {_errors.enum_name(name): value for name, value in _kvtier._status_codes().items()}
    assert cpp == {code.name: code.value for code in StatusCode}


@pytest.mark.parametrize(
    ("code", "cls", "builtin"),
    [
        (1, kvtier.InvalidArgument, ValueError),
        (2, kvtier.NotFound, LookupError),
        (5, kvtier.RequestTimeout, TimeoutError),
        (7, kvtier.Unavailable, ConnectionError),
        (8, kvtier.Cancelled, None),
        (11, kvtier.ResourceExhausted, None),
        (800, kvtier.ProtocolError, None),
        (801, kvtier.UnsupportedVersion, kvtier.ProtocolError),
        (802, kvtier.ProtocolError, None),
        (6, kvtier.KvtierError, None),
        (404, kvtier.KvtierError, None),
    ],
)
def test_error_from_status_picks_the_class(code: int, cls: type, builtin: type | None) -> None:
    error = _errors.error_from_status(code, "what happened", True)
    assert type(error) is cls
    assert isinstance(error, kvtier.KvtierError)
    if builtin is not None:
        assert isinstance(error, builtin)
    assert error.code == code
    assert isinstance(error.code, StatusCode)
    assert error.message == "what happened"
    assert str(error) == "what happened"
    assert error.retryable is True


def test_unknown_code_stays_a_plain_int() -> None:
    error = _errors.error_from_status(555, "new in a later server")
    assert type(error) is kvtier.KvtierError
    assert error.code == 555 and not isinstance(error.code, StatusCode)
    assert error.retryable is False


def test_enum_name() -> None:
    assert _errors.enum_name("InvalidArgument") == "INVALID_ARGUMENT"
    assert _errors.enum_name("IOError") == "IO_ERROR"
    assert _errors.enum_name("L1KeyNotExist") == "L1_KEY_NOT_EXIST"
    assert _errors.enum_name("Ok") == "OK"


def test_connecting_to_nothing_is_unavailable_within_the_connect_timeout(tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/nobody-listens"
    start = time.monotonic()
    with pytest.raises(kvtier.Unavailable) as info:
        kvtier.Client(endpoint, connect_timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 5.3
    assert info.value.code == StatusCode.UNAVAILABLE
    assert info.value.retryable
    assert endpoint in str(info.value)
    assert isinstance(info.value, ConnectionError)


@pytest.mark.parametrize("endpoint", ["not an endpoint", "foo://bar", "tcp://"])
def test_malformed_endpoint_is_invalid_argument(endpoint: str) -> None:
    with pytest.raises(kvtier.InvalidArgument, match="invalid endpoint") as info:
        kvtier.Client(endpoint, connect_timeout=0.1)
    assert info.value.code == StatusCode.INVALID_ARGUMENT
    assert isinstance(info.value, ValueError)


def test_bad_options() -> None:
    with pytest.raises(kvtier.InvalidArgument, match="connect_timeout"):
        kvtier.Client("tcp://127.0.0.1:1", connect_timeout=0)
    with pytest.raises(kvtier.InvalidArgument, match="request_timeout"):
        kvtier.Client("tcp://127.0.0.1:1", request_timeout=-1)
    with pytest.raises(kvtier.InvalidArgument, match="max_pending"):
        kvtier.Client("tcp://127.0.0.1:1", max_pending=0)
    with pytest.raises(TypeError, match="request_timeout must be a number of seconds"):
        kvtier.Client("tcp://127.0.0.1:1", request_timeout="30s")
    with pytest.raises(ValueError, match="connect_timeout must be a finite number"):
        kvtier.Client("tcp://127.0.0.1:1", connect_timeout=float("nan"))
