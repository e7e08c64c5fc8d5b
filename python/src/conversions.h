// Conversions between Python values and kvtier's C++ types for the module kvtier._kvtier
// (kvtier_module.cc): call arguments to protocol::Key, Layout, CUDA IPC handles and
// REGISTER_KV_CACHE requests, and back (handles as bytes, a registration as a dict); a Status to
// the kvtier exception it raises.
//
// Python values are converted here, once, with clear errors: TypeError for a wrong type or a
// missing or unknown field, ValueError for a value out of range (raised as pybind11 exceptions).
// Every function needs the GIL.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
// Every file that converts STL types must see the same casters (pybind11's ODR rule).
#include <pybind11/stl.h>

#include "kvtier/client.h"
#include "kvtier/common/status.h"
#include "kvtier/protocol/messages.h"

namespace kvtier::python {

namespace py = pybind11;

inline constexpr uint64_t kU16Max = std::numeric_limits<uint16_t>::max();
inline constexpr uint64_t kU32Max = std::numeric_limits<uint32_t>::max();
inline constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

// ---- Errors -----------------------------------------------------------------------------

// kvtier._errors.error_from_status: the exception object for `status`.
py::object ErrorObject(const Status& status);
// Raises ErrorObject(status).
[[noreturn]] void Raise(const Status& status);

// ---- Plain values -----------------------------------------------------------------------

// An int in [min, max] from a Python int or anything with __index__ (numpy integers); bool
// and float are refused.
uint64_t ToUint(py::handle value, const std::string& what, uint64_t min, uint64_t max);
// Seconds (int or float) as a Duration; None is `none`.
Duration ToDuration(py::handle value, const std::string& what, Duration none);
// A wait bound: None waits forever, a negative wait is a single check.
Timeout ToTimeout(py::handle value);
// Whole milliseconds (rounded up) for the protocol's timeout_ms fields; None is 0.
uint32_t ToMillis(py::handle value, const std::string& what);
// A list of uint32 from a numpy integer array (one dimension) or any iterable of ints.
std::vector<uint32_t> ToU32Vector(py::handle value, const std::string& what);

// ---- Keys -------------------------------------------------------------------------------

// Which ranks an operation is about (protocol.md, "Key").
enum class Rank {
  kAny,    // a Key built on its own
  kOne,    // STORE, RETRIEVE: worker_rank required
  kEvery,  // LOOKUP, FREE_LOOKUP_LOCKS: worker_rank must be None
};

// The key of `op` from `key` (a kvtier.Key, a mapping, or None) with `fields` on top.
protocol::Key ToKey(py::handle key, const py::kwargs& fields, const char* op, Rank rank);
// The tokens as a numpy uint32 array (a copy).
py::array_t<uint32_t> TokensArray(const std::vector<uint32_t>& tokens);
std::string KeyRepr(const protocol::Key& k);

// ---- REGISTER_KV_CACHE and CUDA IPC handles ---------------------------------------------

// None, or bytes of exactly protocol::kCudaIpcHandleBytes.
std::optional<protocol::CudaIpcHandle> ToOptionalHandle(py::handle value, const std::string& what);
// None, or the handle's bytes.
py::object HandleToPython(const std::optional<protocol::CudaIpcHandle>& h);

// The request register_kv_cache() sends, from its arguments.
protocol::RegisterKvCacheRequest ToRegistration(const std::string& instance_id,
                                                const std::string& model, py::handle layout,
                                                const std::string& shm_name, py::handle shm_size,
                                                py::handle world_size, py::handle worker_rank,
                                                const std::string& backend, py::handle device_uuid,
                                                py::handle cuda_ipc_handles);
// The request as a dict, keyed as register_kv_cache()'s arguments.
py::dict RegistrationDict(const protocol::RegisterKvCacheRequest& r);

}  // namespace kvtier::python
