"""kvtier's exceptions and status codes.

Every error of the client or the server carries a stable numeric status code
(src/kvtier/common/status.h); the code picks the exception class. Every class derives from
KvtierError, and those with an obvious builtin counterpart derive from it too (InvalidArgument
is a ValueError, RequestTimeout a TimeoutError, Unavailable a ConnectionError, NotFound a
LookupError), so generic handlers work.
"""

from __future__ import annotations

import enum
import re


class StatusCode(enum.IntEnum):
    """The stable status codes (src/kvtier/common/status.h); append-only."""

    OK = 0
    INVALID_ARGUMENT = 1
    NOT_FOUND = 2
    ALREADY_EXISTS = 3
    OUT_OF_MEMORY = 4
    TIMEOUT = 5
    INTERNAL = 6
    UNAVAILABLE = 7
    CANCELLED = 8
    NOT_SUPPORTED = 9
    FAILED_PRECONDITION = 10
    RESOURCE_EXHAUSTED = 11
    IO_ERROR = 12
    CORRUPTION = 13
    OUT_OF_RANGE = 14
    PERMISSION_DENIED = 15
    LOCK_TIMEOUT = 100
    FUTURE_ALREADY_SET = 101
    FUTURE_BROKEN = 102
    INVALID_KEY = 200
    HASH_ERROR = 201
    POOL_CREATE_FAILED = 300
    ALLOCATION_FAILED = 301
    L1_KEY_NOT_EXIST = 400
    L1_KEY_NOT_READABLE = 401
    L1_KEY_NOT_WRITABLE = 402
    L1_KEY_IN_WRONG_STATE = 403
    L1_KEY_IS_LOCKED = 404
    PROTOCOL_ERROR = 800
    UNSUPPORTED_VERSION = 801
    UNKNOWN_OPCODE = 802


def enum_name(cpp_name: str) -> str:
    """'InvalidArgument' -> 'INVALID_ARGUMENT', 'IOError' -> 'IO_ERROR', 'L1KeyNotExist' -> 'L1_KEY_NOT_EXIST'."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", cpp_name).upper()


class KvtierError(Exception):
    """Base of every kvtier error.

    Attributes:
        code: the status code (a StatusCode member, or a plain int for a code this package
            does not know).
        message: the error's message, as the client or server wrote it.
        retryable: whether trying the same operation again later may succeed.
    """

    code: int = StatusCode.INTERNAL
    message: str = ""
    retryable: bool = False


class InvalidArgument(KvtierError, ValueError):
    """A request or option the client or server refused (code 1)."""


class NotFound(KvtierError, LookupError):
    """What the request names does not exist (code 2), e.g. an unknown prefetch request id."""


class RequestTimeout(KvtierError, TimeoutError):
    """No reply within the request's deadline (code 5); a late reply is dropped."""


class Unavailable(KvtierError, ConnectionError):
    """No server answered (code 7), e.g. nothing listens at the endpoint."""


class Cancelled(KvtierError):
    """The client was closed before the reply came (code 8)."""


class ResourceExhausted(KvtierError):
    """Too many requests pending in the client (max_pending) or the server is busy (code 11)."""


class ProtocolError(KvtierError):
    """A malformed message (codes 800 and 802)."""


class UnsupportedVersion(ProtocolError):
    """The server speaks another protocol version (code 801)."""


_CLASSES: dict[int, type[KvtierError]] = {
    StatusCode.INVALID_ARGUMENT: InvalidArgument,
    StatusCode.NOT_FOUND: NotFound,
    StatusCode.TIMEOUT: RequestTimeout,
    StatusCode.UNAVAILABLE: Unavailable,
    StatusCode.CANCELLED: Cancelled,
    StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    StatusCode.PROTOCOL_ERROR: ProtocolError,
    StatusCode.UNKNOWN_OPCODE: ProtocolError,
    StatusCode.UNSUPPORTED_VERSION: UnsupportedVersion,
}


def error_class(code: int) -> type[KvtierError]:
    """The exception class for a status code (KvtierError for codes without their own)."""
    return _CLASSES.get(code, KvtierError)


def error_from_status(code: int, message: str, retryable: bool = False) -> KvtierError:
    """The exception for a status (used by the extension module to raise)."""
    error = error_class(code)(message)
    try:
        error.code = StatusCode(code)
    except ValueError:
        error.code = code
    error.message = message
    error.retryable = retryable
    return error
