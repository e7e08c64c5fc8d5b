// kvtier._kvtier: the Python binding of the C++ client (include/kvtier/client.h). The package
// `kvtier` (python/kvtier/__init__.py) re-exports it; docs/client.md describes the Python API and
// python/kvtier/_kvtier.pyi its types.
//
// Python values are converted here, once, with clear errors: TypeError for a wrong type or a
// missing or unknown field, ValueError for a value out of range. Errors of the client and the
// server raise kvtier's exceptions (python/kvtier/_errors.py), chosen by status code. Every call
// that may block (connecting, waiting, closing, submitting) releases the GIL; no client thread
// ever takes it.
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "kvtier/client.h"
#include "kvtier/common/status.h"
#include "kvtier/protocol/messages.h"

namespace py = pybind11;

namespace kvtier::python {
namespace {

using protocol::Key;

constexpr uint64_t kU16Max = std::numeric_limits<uint16_t>::max();
constexpr uint64_t kU32Max = std::numeric_limits<uint32_t>::max();
constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();
// Longer than any sensible timeout; beyond it a duration would overflow nanoseconds.
constexpr double kMaxSeconds = 1e9;

// ---- Errors -----------------------------------------------------------------------------

// kvtier._errors.error_from_status: the exception object for `status`.
py::object ErrorObject(const Status& status) {
  return py::module_::import("kvtier._errors")
      .attr("error_from_status")(static_cast<int>(status.code()), std::string(status.message()),
                                 status.retryable());
}

[[noreturn]] void Raise(const Status& status) {
  py::object error = ErrorObject(status);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
  throw py::error_already_set();
}

std::string TypeName(py::handle h) { return Py_TYPE(h.ptr())->tp_name; }

// ---- Plain values -----------------------------------------------------------------------

// An int in [min, max] from a Python int or anything with __index__ (numpy integers); bool
// and float are refused.
uint64_t ToUint(py::handle value, const std::string& what, uint64_t min, uint64_t max) {
  if (PyBool_Check(value.ptr()) || !PyIndex_Check(value.ptr())) {
    throw py::type_error(fmt::format("{} must be an int, not {}", what, TypeName(value)));
  }
  py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(value.ptr()));
  if (!index) throw py::error_already_set();
  const uint64_t u = PyLong_AsUnsignedLongLong(index.ptr());
  if (u == static_cast<uint64_t>(-1) && PyErr_Occurred()) {
    PyErr_Clear();  // negative (OverflowError) or beyond 64 bits
    throw py::value_error(fmt::format("{} must be in [{}, {}], got {}", what, min, max,
                                      py::str(index).cast<std::string>()));
  }
  if (u < min || u > max) {
    throw py::value_error(fmt::format("{} must be in [{}, {}], got {}", what, min, max, u));
  }
  return u;
}

std::string ToString(py::handle value, const std::string& what) {
  if (!py::isinstance<py::str>(value)) {
    throw py::type_error(fmt::format("{} must be a str, not {}", what, TypeName(value)));
  }
  return value.cast<std::string>();
}

// Seconds (int or float) as a Duration; None is `none`.
Duration ToDuration(py::handle value, const std::string& what, Duration none) {
  if (value.is_none()) return none;
  if (PyBool_Check(value.ptr()) || !(PyFloat_Check(value.ptr()) || PyIndex_Check(value.ptr()))) {
    throw py::type_error(
        fmt::format("{} must be a number of seconds, not {}", what, TypeName(value)));
  }
  const double seconds = value.cast<double>();
  if (!std::isfinite(seconds) || std::abs(seconds) > kMaxSeconds) {
    throw py::value_error(
        fmt::format("{} must be a finite number of seconds (at most {:g}), got {}", what,
                    kMaxSeconds, seconds));
  }
  return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(seconds));
}

// A wait bound: None waits forever, a negative wait is a single check.
Timeout ToTimeout(py::handle value) {
  if (value.is_none()) return kWaitForever;
  return std::max(ToDuration(value, "timeout", Duration::zero()), Duration::zero());
}

// Whole milliseconds (rounded up) for the protocol's timeout_ms fields; None is 0.
uint32_t ToMillis(py::handle value, const std::string& what) {
  const Duration d = ToDuration(value, what, Duration::zero());
  if (d < Duration::zero()) throw py::value_error(fmt::format("{} must not be negative", what));
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(d).count();
  return static_cast<uint32_t>(std::min<int64_t>(ms, kU32Max));
}

bool NumpyLoaded() {
  return py::module_::import("sys").attr("modules").cast<py::dict>().contains("numpy");
}

bool Less(py::handle a, py::handle b) {
  const int r = PyObject_RichCompareBool(a.ptr(), b.ptr(), Py_LT);
  if (r < 0) throw py::error_already_set();
  return r == 1;
}

// A list of uint32 from a numpy integer array (one dimension) or any iterable of ints.
std::vector<uint32_t> ToU32Vector(py::handle value, const std::string& what) {
  if (py::isinstance<py::str>(value) || py::isinstance<py::bytes>(value) ||
      PyByteArray_Check(value.ptr())) {
    throw py::type_error(fmt::format(
        "{} must be a sequence of ints or a numpy integer array, not {}", what, TypeName(value)));
  }
  if (NumpyLoaded() && py::isinstance<py::array>(value)) {
    auto array = py::reinterpret_borrow<py::array>(value);
    if (array.ndim() != 1) {
      throw py::value_error(
          fmt::format("{} must be one-dimensional, got {} dimensions", what, array.ndim()));
    }
    const char kind = array.dtype().kind();
    if (kind != 'i' && kind != 'u') {
      throw py::type_error(fmt::format("{} must hold integers, got a numpy array of {}", what,
                                       py::str(array.dtype()).cast<std::string>()));
    }
    std::vector<uint32_t> out(static_cast<size_t>(array.size()));
    if (out.empty()) return out;
    if (kind == 'i' || array.itemsize() > 4) {  // values may not fit: check before casting
      py::object lo = array.attr("min")();
      py::object hi = array.attr("max")();
      if (Less(lo, py::int_(0)) || Less(py::int_(kU32Max), hi)) {
        throw py::value_error(fmt::format("{} values must be in [0, {}], got values from {} to {}",
                                          what, kU32Max, py::str(lo).cast<std::string>(),
                                          py::str(hi).cast<std::string>()));
      }
    }
    auto u32 = py::array_t<uint32_t, py::array::c_style | py::array::forcecast>::ensure(array);
    if (!u32) throw py::error_already_set();
    std::memcpy(out.data(), u32.data(), out.size() * sizeof(uint32_t));
    return out;
  }
  py::object iterator = py::reinterpret_steal<py::object>(PyObject_GetIter(value.ptr()));
  if (!iterator) {
    PyErr_Clear();
    throw py::type_error(fmt::format(
        "{} must be a sequence of ints or a numpy integer array, not {}", what, TypeName(value)));
  }
  std::vector<uint32_t> out;
  const Py_ssize_t hint = PyObject_LengthHint(value.ptr(), 0);
  if (hint > 0) out.reserve(static_cast<size_t>(hint));
  while (PyObject* raw = PyIter_Next(iterator.ptr())) {
    py::object item = py::reinterpret_steal<py::object>(raw);
    // Fast path for plain ints; anything else (or out of range) goes the careful way.
    if (PyLong_CheckExact(item.ptr())) {
      const uint64_t v = PyLong_AsUnsignedLongLong(item.ptr());
      if (!(v == static_cast<uint64_t>(-1) && PyErr_Occurred()) && v <= kU32Max) {
        out.push_back(static_cast<uint32_t>(v));
        continue;
      }
      PyErr_Clear();
    }
    out.push_back(static_cast<uint32_t>(
        ToUint(item, fmt::format("{} item {}", what, out.size()), 0, kU32Max)));
  }
  if (PyErr_Occurred()) throw py::error_already_set();
  return out;
}

std::vector<uint64_t> ToU64Vector(py::handle value, const std::string& what) {
  if (py::isinstance<py::str>(value) || py::isinstance<py::bytes>(value)) {
    throw py::type_error(
        fmt::format("{} must be a sequence of ints, not {}", what, TypeName(value)));
  }
  py::object iterator = py::reinterpret_steal<py::object>(PyObject_GetIter(value.ptr()));
  if (!iterator) {
    PyErr_Clear();
    throw py::type_error(
        fmt::format("{} must be a sequence of ints, not {}", what, TypeName(value)));
  }
  std::vector<uint64_t> out;
  while (PyObject* raw = PyIter_Next(iterator.ptr())) {
    py::object item = py::reinterpret_steal<py::object>(raw);
    out.push_back(ToUint(item, fmt::format("{} item {}", what, out.size()), 0, kU64Max));
  }
  if (PyErr_Occurred()) throw py::error_already_set();
  return out;
}

bool IsMapping(py::handle value) {
  py::object mapping = py::module_::import("collections.abc").attr("Mapping");
  const int r = PyObject_IsInstance(value.ptr(), mapping.ptr());
  if (r < 0) throw py::error_already_set();
  return r == 1;
}

// (name, value) pairs of a mapping, names checked to be str.
std::vector<std::pair<std::string, py::object>> Items(py::handle mapping, const std::string& what) {
  std::vector<std::pair<std::string, py::object>> out;
  for (py::handle item : mapping.attr("items")()) {
    py::tuple pair = py::reinterpret_borrow<py::tuple>(item);
    if (!py::isinstance<py::str>(pair[0])) {
      throw py::type_error(
          fmt::format("{} field names must be str, not {}", what, TypeName(pair[0])));
    }
    out.emplace_back(pair[0].cast<std::string>(), py::reinterpret_borrow<py::object>(pair[1]));
  }
  return out;
}

// ---- Keys -------------------------------------------------------------------------------

constexpr const char* kKeyFields =
    "model, request_id, tokens, world_size, worker_rank, cache_salt, start, end, object_group";

// Which ranks an operation is about (protocol.md, "Key").
enum class Rank {
  kAny,    // a Key built on its own
  kOne,    // STORE, RETRIEVE: worker_rank required
  kEvery,  // LOOKUP, FREE_LOOKUP_LOCKS: worker_rank must be None
};

struct KeyBuilder {
  Key key;
  bool has_model = false;
  bool has_request_id = false;
  bool has_tokens = false;

  void Set(const std::string& name, py::handle v) {
    const std::string what = fmt::format("key field '{}'", name);
    if (name == "model") {
      key.model = ToString(v, what);
      has_model = true;
    } else if (name == "request_id") {
      key.request_id = ToString(v, what);
      has_request_id = true;
    } else if (name == "tokens") {
      key.tokens = ToU32Vector(v, what);
      has_tokens = true;
    } else if (name == "world_size") {
      key.world_size = static_cast<uint16_t>(ToUint(v, what, 1, kU16Max));
    } else if (name == "worker_rank") {
      if (v.is_none()) {
        key.worker_rank.reset();
      } else {
        key.worker_rank = static_cast<uint16_t>(ToUint(v, what, 0, kU16Max - 1));
      }
    } else if (name == "cache_salt") {
      key.cache_salt = ToString(v, what);
    } else if (name == "start") {
      key.start = static_cast<uint32_t>(ToUint(v, what, 0, kU32Max));
    } else if (name == "end") {
      if (v.is_none()) {
        key.end.reset();
      } else {
        key.end = static_cast<uint32_t>(ToUint(v, what, 0, kU32Max));
      }
    } else if (name == "object_group") {
      key.object_group = static_cast<uint32_t>(ToUint(v, what, 0, kU32Max));
    } else {
      throw py::type_error(
          fmt::format("unknown key field '{}' (key fields: {})", name, kKeyFields));
    }
  }
};

// The key of `op` from `key` (a kvtier.Key, a mapping, or None) with `fields` on top.
Key ToKey(py::handle key, const py::kwargs& fields, const char* op, Rank rank) {
  KeyBuilder b;
  if (py::isinstance<Key>(key)) {
    b.key = key.cast<Key>();
    b.has_model = b.has_request_id = b.has_tokens = true;
  } else if (!key.is_none()) {
    if (!IsMapping(key)) {
      throw py::type_error(
          fmt::format("{}: key must be a kvtier.Key or a dict, not {}", op, TypeName(key)));
    }
    for (const auto& [name, value] : Items(key, "key")) b.Set(name, value);
  }
  for (const auto& [name, value] : fields) b.Set(name.cast<std::string>(), value);
  for (const auto& [has, name] :
       {std::pair{b.has_model, "model"}, std::pair{b.has_request_id, "request_id"},
        std::pair{b.has_tokens, "tokens"}}) {
    if (!has) throw py::type_error(fmt::format("{}: key field '{}' is required", op, name));
  }
  const Key& k = b.key;
  if (rank == Rank::kOne && !k.worker_rank) {
    throw py::type_error(fmt::format(
        "{}: key field 'worker_rank' is required ({} is about one worker's rank)", op, op));
  }
  if (rank == Rank::kEvery && k.worker_rank) {
    throw py::value_error(
        fmt::format("{}: key field 'worker_rank' must be None ({} covers every rank)", op, op));
  }
  if (k.worker_rank && *k.worker_rank >= k.world_size) {
    throw py::value_error(fmt::format("{}: worker_rank {} must be less than world_size {}", op,
                                      *k.worker_rank, k.world_size));
  }
  return b.key;
}

py::array_t<uint32_t> TokensArray(const std::vector<uint32_t>& tokens) {
  py::array_t<uint32_t> a(static_cast<py::ssize_t>(tokens.size()));
  if (!tokens.empty()) {
    std::memcpy(a.mutable_data(), tokens.data(), tokens.size() * sizeof(uint32_t));
  }
  return a;
}

std::string KeyRepr(const Key& k) {
  return fmt::format(
      "Key(model={}, request_id={}, tokens=<{} tokens>, world_size={}, worker_rank={}, "
      "cache_salt={}, start={}, end={}, object_group={})",
      py::repr(py::str(k.model)).cast<std::string>(),
      py::repr(py::str(k.request_id)).cast<std::string>(), k.tokens.size(), k.world_size,
      k.worker_rank ? std::to_string(*k.worker_rank) : "None",
      py::repr(py::str(k.cache_salt)).cast<std::string>(), k.start,
      k.end ? std::to_string(*k.end) : "None", k.object_group);
}

// ---- REGISTER_KV_CACHE ------------------------------------------------------------------

protocol::Layout ToLayout(py::handle layout) {
  if (!IsMapping(layout)) {
    throw py::type_error(fmt::format("layout must be a dict, not {}", TypeName(layout)));
  }
  protocol::Layout out;
  bool seen[8] = {};
  for (const auto& [name, v] : Items(layout, "layout")) {
    const std::string what = fmt::format("layout field '{}'", name);
    if (name == "num_layers") {
      out.num_layers = static_cast<uint32_t>(ToUint(v, what, 0, kU32Max));
      seen[0] = true;
    } else if (name == "num_blocks") {
      out.num_blocks = static_cast<uint32_t>(ToUint(v, what, 0, kU32Max));
      seen[1] = true;
    } else if (name == "block_size") {
      out.block_size = static_cast<uint32_t>(ToUint(v, what, 0, kU32Max));
      seen[2] = true;
    } else if (name == "num_kv_heads") {
      out.num_kv_heads = static_cast<uint32_t>(ToUint(v, what, 0, kU32Max));
      seen[3] = true;
    } else if (name == "head_dim") {
      out.head_dim = static_cast<uint32_t>(ToUint(v, what, 0, kU32Max));
      seen[4] = true;
    } else if (name == "dtype") {
      const std::string s = ToString(v, what);
      std::optional<protocol::DType> d = protocol::DTypeFromName(s);
      if (!d) {
        throw py::value_error(
            fmt::format("{} is '{}'; expected one of {}", what, s, protocol::DTypeChoices()));
      }
      out.dtype = *d;
      seen[5] = true;
    } else if (name == "format") {
      const std::string s = ToString(v, what);
      std::optional<protocol::KvFormat> f = protocol::KvFormatFromName(s);
      if (!f) {
        throw py::value_error(
            fmt::format("{} is '{}'; expected one of {}", what, s, protocol::KvFormatChoices()));
      }
      out.format = *f;
      seen[6] = true;
    } else if (name == "layer_offsets") {
      out.layer_offsets = ToU64Vector(v, what);
      seen[7] = true;
    } else {
      throw py::type_error(fmt::format(
          "unknown layout field '{}' (layout fields: num_layers, num_blocks, block_size, "
          "num_kv_heads, head_dim, dtype, format, layer_offsets)",
          name));
    }
  }
  static constexpr const char* kNames[8] = {"num_layers",   "num_blocks",   "block_size",
                                            "num_kv_heads", "head_dim",     "dtype",
                                            "format",       "layer_offsets"};
  for (int i = 0; i < 8; ++i) {
    if (!seen[i]) throw py::type_error(fmt::format("layout field '{}' is required", kNames[i]));
  }
  return out;
}

py::dict LayoutDict(const protocol::Layout& l) {
  py::dict d;
  d["num_layers"] = l.num_layers;
  d["num_blocks"] = l.num_blocks;
  d["block_size"] = l.block_size;
  d["num_kv_heads"] = l.num_kv_heads;
  d["head_dim"] = l.head_dim;
  d["dtype"] = protocol::DTypeName(l.dtype);
  d["format"] = protocol::KvFormatName(l.format);
  d["layer_offsets"] = l.layer_offsets;
  return d;
}

// A bytes-like value of exactly N bytes (CUDA IPC handles, device UUIDs).
template <size_t N>
std::array<uint8_t, N> ToFixedBytes(py::handle value, const std::string& what) {
  if (!py::isinstance<py::bytes>(value) && !py::isinstance<py::bytearray>(value)) {
    throw py::type_error(fmt::format("{} must be bytes ({} bytes), got {}", what, N,
                                     std::string(py::str(py::type::of(value).attr("__name__")))));
  }
  const std::string bytes = py::isinstance<py::bytes>(value)
                                ? std::string(py::reinterpret_borrow<py::bytes>(value))
                                : std::string(py::bytes(py::reinterpret_borrow<py::object>(value)));
  if (bytes.size() != N) {
    throw py::value_error(
        fmt::format("{} must be exactly {} bytes, got {}", what, N, bytes.size()));
  }
  std::array<uint8_t, N> out;
  std::memcpy(out.data(), bytes.data(), N);
  return out;
}

std::optional<protocol::CudaIpcHandle> ToOptionalHandle(py::handle value, const std::string& what) {
  if (value.is_none()) return std::nullopt;
  return ToFixedBytes<protocol::kCudaIpcHandleBytes>(value, what);
}

py::object HandleToPython(const std::optional<protocol::CudaIpcHandle>& h) {
  if (!h) return py::none();
  return py::bytes(reinterpret_cast<const char*>(h->data()), h->size());
}

protocol::RegisterKvCacheRequest ToRegistration(const std::string& instance_id,
                                                const std::string& model, py::handle layout,
                                                const std::string& shm_name, py::handle shm_size,
                                                py::handle world_size, py::handle worker_rank,
                                                const std::string& backend, py::handle device_uuid,
                                                py::handle cuda_ipc_handles) {
  protocol::RegisterKvCacheRequest r;
  r.instance_id = instance_id;
  r.model = model;
  r.world_size = static_cast<uint16_t>(ToUint(world_size, "world_size", 1, kU16Max));
  r.worker_rank = static_cast<uint16_t>(ToUint(worker_rank, "worker_rank", 0, kU16Max - 1));
  if (r.worker_rank >= r.world_size) {
    throw py::value_error(
        fmt::format("worker_rank {} must be less than world_size {}", r.worker_rank, r.world_size));
  }
  r.backend = backend;
  r.layout = ToLayout(layout);
  r.shm_name = shm_name;
  r.shm_size = ToUint(shm_size, "shm_size", 0, kU64Max);
  if (backend == "cuda") {
    if (device_uuid.is_none() || cuda_ipc_handles.is_none()) {
      throw py::value_error("backend 'cuda' needs device_uuid and cuda_ipc_handles");
    }
    r.device_uuid = ToFixedBytes<protocol::kDeviceUuidBytes>(device_uuid, "device_uuid");
    size_t i = 0;
    for (py::handle h : cuda_ipc_handles) {
      r.cuda_ipc_handles.push_back(
          ToFixedBytes<protocol::kCudaIpcHandleBytes>(h, fmt::format("cuda_ipc_handles[{}]", i++)));
    }
  } else if (!device_uuid.is_none() || !cuda_ipc_handles.is_none()) {
    throw py::value_error("device_uuid and cuda_ipc_handles are for backend 'cuda' only");
  }
  return r;
}

py::dict RegistrationDict(const protocol::RegisterKvCacheRequest& r) {
  py::dict d;
  d["instance_id"] = r.instance_id;
  d["model"] = r.model;
  d["world_size"] = r.world_size;
  d["worker_rank"] = r.worker_rank;
  d["backend"] = r.backend;
  d["layout"] = LayoutDict(r.layout);
  d["shm_name"] = r.shm_name;
  d["shm_size"] = r.shm_size;
  if (r.backend == "cuda") {
    d["device_uuid"] =
        py::bytes(reinterpret_cast<const char*>(r.device_uuid.data()), r.device_uuid.size());
    py::list handles;
    for (const auto& h : r.cuda_ipc_handles) handles.append(HandleToPython(h));
    d["cuda_ipc_handles"] = handles;
  }
  return d;
}

// ---- Replies ----------------------------------------------------------------------------

// A read-only Python class for a reply struct: its fields, ==, repr and to_dict().
template <typename T>
class ReplyClass {
 public:
  ReplyClass(py::module_& m, const char* name, const char* doc) : cls_(m, name, doc), name_(name) {
    cls_.def(
        "__eq__", [](const T& a, const T& b) { return a == b; }, py::is_operator());
  }
  template <typename F>
  ReplyClass& Field(const char* field, F T::*member) {
    cls_.def_readonly(field, member);
    fields_->emplace_back(field, [member](const T& v) { return py::cast(v.*member); });
    return *this;
  }
  template <typename G>
  ReplyClass& Getter(const char* field, G get) {
    cls_.def_property_readonly(field, [get](const T& v) { return get(v); });
    fields_->emplace_back(field, [get](const T& v) { return py::object(get(v)); });
    return *this;
  }
  void Done() {
    auto fields = fields_;
    const std::string name = name_;
    cls_.def("__repr__", [fields, name](const T& v) {
      std::string s = name + "(";
      for (size_t i = 0; i < fields->size(); ++i) {
        const auto& [field, get] = (*fields)[i];
        s += fmt::format("{}{}={}", i ? ", " : "", field, std::string(py::repr(get(v))));
      }
      return s + ")";
    });
    cls_.def(
        "to_dict",
        [fields](const T& v) {
          py::dict d;
          for (const auto& [field, get] : *fields) d[py::str(field)] = get(v);
          return d;
        },
        "The fields as a dict.");
  }

 private:
  py::class_<T> cls_;
  std::string name_;
  std::shared_ptr<std::vector<std::pair<const char*, std::function<py::object(const T&)>>>>
      fields_ = std::make_shared<
          std::vector<std::pair<const char*, std::function<py::object(const T&)>>>>();
};

template <typename T>
py::object ToPython(T value) {
  if constexpr (std::is_same_v<T, protocol::EmptyReply>) {
    return py::none();
  } else {
    return py::cast(std::move(value));
  }
}

// ---- Futures ----------------------------------------------------------------------------

// What Python holds for one request: a kvtier.Future. Independent of the client's lifetime.
class Future {
 public:
  explicit Future(const char* op) : op_(op) {}
  virtual ~Future() = default;

  virtual bool Done() const = 0;
  // Waits (without the GIL) until the result is there or `timeout` passes.
  bool Wait(py::handle timeout) const {
    const Timeout t = ToTimeout(timeout);
    py::gil_scoped_release nogil;
    return WaitImpl(t);
  }
  py::object Result(py::handle timeout) {
    if (!Wait(timeout)) RaiseNotReady(timeout);
    return ResultImpl(/*raise=*/true);
  }
  py::object Exception(py::handle timeout) {
    if (!Wait(timeout)) RaiseNotReady(timeout);
    return ResultImpl(/*raise=*/false);
  }
  std::string Repr() const {
    return fmt::format("<kvtier.Future {} {}>", op_, Done() ? "done" : "pending");
  }

 protected:
  virtual bool WaitImpl(Timeout timeout) const = 0;
  // The reply (raise) or None, or the error: raised (raise) or returned.
  virtual py::object ResultImpl(bool raise) = 0;

 private:
  [[noreturn]] void RaiseNotReady(py::handle timeout) const {
    // The builtin TimeoutError, as concurrent.futures does: the request is still pending
    // (kvtier.RequestTimeout, a subclass, means the request itself expired).
    PyErr_SetString(PyExc_TimeoutError,
                    fmt::format("{} reply not available within {} s (the request is still pending)",
                                op_, py::str(timeout).cast<std::string>())
                        .c_str());
    throw py::error_already_set();
  }
  const char* op_;
};

template <typename T>
class TypedFuture final : public Future {
 public:
  TypedFuture(MessagingFuture<T> future, const char* op) : Future(op), future_(std::move(future)) {}
  bool Done() const override { return future_.Query(); }

 private:
  bool WaitImpl(Timeout timeout) const override { return future_.Wait(timeout); }
  py::object ResultImpl(bool raise) override {
    ::kvtier::Result<T> r = future_.Result(Duration::zero());  // ready: no wait
    if (!r) {
      if (raise) Raise(r.error());
      return ErrorObject(r.error());
    }
    return raise ? ToPython(std::move(*r)) : py::none();
  }

  MessagingFuture<T> future_;
};

template <typename T>
std::shared_ptr<Future> Wrap(MessagingFuture<T> f, const char* op) {
  return std::make_shared<TypedFuture<T>>(std::move(f), op);
}

// ---- Client -----------------------------------------------------------------------------

class PyClient {
 public:
  PyClient(const std::string& endpoint, const std::string& client_name, py::handle request_timeout,
           py::handle connect_timeout, size_t max_pending) {
    options_.endpoint = endpoint;
    options_.client_name = client_name;
    options_.request_timeout = ToDuration(request_timeout, "request_timeout", Duration::zero());
    options_.connect_timeout = ToDuration(connect_timeout, "connect_timeout", Duration::zero());
    options_.max_pending = max_pending;
    Result<std::unique_ptr<Client>> client;
    {
      py::gil_scoped_release nogil;
      client = Client::Connect(options_);
    }
    if (!client) Raise(client.error());
    client_ = std::move(*client);
  }
  // Closing joins the I/O thread, which never takes the GIL: safe with the GIL held.
  ~PyClient() = default;
  PyClient(const PyClient&) = delete;
  PyClient& operator=(const PyClient&) = delete;

  const std::string& endpoint() const { return options_.endpoint; }
  protocol::HelloReply server_info() const { return client_->server_info(); }
  size_t pending() const { return client_->pending(); }
  void Close() {
    py::gil_scoped_release nogil;
    client_->Close();
  }

  // Submits on the client without the GIL (the request is already converted).
  template <typename Fn>
  auto Submit(Fn&& fn) {
    py::gil_scoped_release nogil;
    return fn(*client_);
  }

  std::shared_ptr<Future> RegisterKvCache(const std::string& instance_id, const std::string& model,
                                          const py::object& layout, const std::string& shm_name,
                                          const py::object& shm_size, const py::object& world_size,
                                          const py::object& worker_rank, const std::string& backend,
                                          const py::object& device_uuid,
                                          const py::object& cuda_ipc_handles) {
    protocol::RegisterKvCacheRequest r =
        ToRegistration(instance_id, model, layout, shm_name, shm_size, world_size, worker_rank,
                       backend, device_uuid, cuda_ipc_handles);
    return Wrap(Submit([&](Client& c) { return c.RegisterKvCache(std::move(r)); }),
                "REGISTER_KV_CACHE");
  }
  std::shared_ptr<Future> UnregisterKvCache(std::string instance_id) {
    return Wrap(Submit([&](Client& c) { return c.UnregisterKvCache(std::move(instance_id)); }),
                "UNREGISTER_KV_CACHE");
  }
  std::shared_ptr<Future> GetChunkSize() {
    return Wrap(Submit([](Client& c) { return c.GetChunkSize(); }), "GET_CHUNK_SIZE");
  }
  std::shared_ptr<Future> Lookup(const py::object& key, const py::object& read_locks,
                                 const py::object& timeout, const py::kwargs& fields) {
    protocol::LookupRequest r;
    r.key = ToKey(key, fields, "lookup", Rank::kEvery);
    r.read_locks = static_cast<uint32_t>(ToUint(read_locks, "read_locks", 0, kU32Max));
    r.timeout_ms = ToMillis(timeout, "timeout");
    return Wrap(Submit([&](Client& c) { return c.Lookup(std::move(r)); }), "LOOKUP");
  }
  std::shared_ptr<Future> QueryPrefetchStatus(std::string request_id) {
    return Wrap(Submit([&](Client& c) { return c.QueryPrefetchStatus(std::move(request_id)); }),
                "QUERY_PREFETCH_STATUS");
  }
  std::shared_ptr<Future> WaitPrefetchStatus(std::string request_id, const py::object& wait) {
    const Duration d = ToDuration(wait, "wait", Duration::zero());
    if (d < Duration::zero()) throw py::value_error("wait must not be negative");
    return Wrap(Submit([&](Client& c) { return c.WaitPrefetchStatus(std::move(request_id), d); }),
                "WAIT_PREFETCH_STATUS");
  }
  std::shared_ptr<Future> QueryPrefetchLookupHits(std::string request_id) {
    return Wrap(Submit([&](Client& c) { return c.QueryPrefetchLookupHits(std::move(request_id)); }),
                "QUERY_PREFETCH_LOOKUP_HITS");
  }
  std::shared_ptr<Future> Store(const std::string& instance_id, const py::object& block_ids,
                                const py::object& key, const py::object& event_ipc_handle,
                                const py::kwargs& fields) {
    protocol::StoreRequest r;
    r.instance_id = instance_id;
    r.key = ToKey(key, fields, "store", Rank::kOne);
    r.block_ids = ToU32Vector(block_ids, "block_ids");
    r.event_ipc_handle = ToOptionalHandle(event_ipc_handle, "event_ipc_handle");
    return Wrap(Submit([&](Client& c) { return c.Store(std::move(r)); }), "STORE");
  }
  std::shared_ptr<Future> Retrieve(const std::string& instance_id, const py::object& block_ids,
                                   const py::object& key, const py::object& skip_first_n_tokens,
                                   const py::object& event_ipc_handle, const py::kwargs& fields) {
    protocol::RetrieveRequest r;
    r.instance_id = instance_id;
    r.key = ToKey(key, fields, "retrieve", Rank::kOne);
    r.block_ids = ToU32Vector(block_ids, "block_ids");
    r.event_ipc_handle = ToOptionalHandle(event_ipc_handle, "event_ipc_handle");
    r.skip_first_n_tokens =
        static_cast<uint32_t>(ToUint(skip_first_n_tokens, "skip_first_n_tokens", 0, kU32Max));
    return Wrap(Submit([&](Client& c) { return c.Retrieve(std::move(r)); }), "RETRIEVE");
  }
  std::shared_ptr<Future> FreeLookupLocks(const py::object& key, const py::kwargs& fields) {
    Key k = ToKey(key, fields, "free_lookup_locks", Rank::kEvery);
    return Wrap(Submit([&](Client& c) { return c.FreeLookupLocks(std::move(k)); }),
                "FREE_LOOKUP_LOCKS");
  }
  std::shared_ptr<Future> EndSession(std::string request_id) {
    return Wrap(Submit([&](Client& c) { return c.EndSession(std::move(request_id)); }),
                "END_SESSION");
  }
  std::shared_ptr<Future> Ping(std::optional<std::string> instance_id) {
    return Wrap(Submit([&](Client& c) { return c.Ping(std::move(instance_id)); }), "PING");
  }
  std::shared_ptr<Future> Clear(bool force) {
    return Wrap(Submit([&](Client& c) { return c.Clear(force); }), "CLEAR");
  }
  std::shared_ptr<Future> Noop() {
    return Wrap(Submit([](Client& c) { return c.Noop(); }), "NOOP");
  }

 private:
  ClientOptions options_;
  std::unique_ptr<Client> client_;
};

// Every StatusCode, for kvtier.StatusCode (python/kvtier/_errors.py checks itself against it).
py::dict StatusCodes() {
  static constexpr StatusCode kCodes[] = {
      StatusCode::kOk,
      StatusCode::kInvalidArgument,
      StatusCode::kNotFound,
      StatusCode::kAlreadyExists,
      StatusCode::kOutOfMemory,
      StatusCode::kTimeout,
      StatusCode::kInternal,
      StatusCode::kUnavailable,
      StatusCode::kCancelled,
      StatusCode::kNotSupported,
      StatusCode::kFailedPrecondition,
      StatusCode::kResourceExhausted,
      StatusCode::kIOError,
      StatusCode::kCorruption,
      StatusCode::kOutOfRange,
      StatusCode::kPermissionDenied,
      StatusCode::kLockTimeout,
      StatusCode::kFutureAlreadySet,
      StatusCode::kFutureBroken,
      StatusCode::kInvalidKey,
      StatusCode::kHashError,
      StatusCode::kPoolCreateFailed,
      StatusCode::kAllocationFailed,
      StatusCode::kL1KeyNotExist,
      StatusCode::kL1KeyNotReadable,
      StatusCode::kL1KeyNotWritable,
      StatusCode::kL1KeyInWrongState,
      StatusCode::kL1KeyIsLocked,
      StatusCode::kProtocolError,
      StatusCode::kUnsupportedVersion,
      StatusCode::kUnknownOpcode,
  };
  py::dict d;
  for (StatusCode c : kCodes) d[py::str(StatusCodeName(c))] = static_cast<int>(c);
  return d;
}

void Init(py::module_& m) {
  m.doc() = "The kvtier C++ client, bound for Python (use the kvtier package, not this module).";
  m.attr("PROTOCOL_VERSION") = protocol::kProtocolVersion;
  m.def("_status_codes", &StatusCodes, "Every StatusCode: {'InvalidArgument': 1, ...}.");

  ReplyClass<protocol::HelloReply>(m, "HelloReply", "What the server said in HELLO.")
      .Field("protocol_version", &protocol::HelloReply::protocol_version)
      .Field("server_id", &protocol::HelloReply::server_id)
      .Field("server_version", &protocol::HelloReply::server_version)
      .Field("chunk_size", &protocol::HelloReply::chunk_size)
      .Field("hash_algorithm", &protocol::HelloReply::hash_algorithm)
      .Done();
  ReplyClass<protocol::RegisterKvCacheReply>(m, "RegisterKvCacheReply", "REGISTER_KV_CACHE reply.")
      .Field("object_size", &protocol::RegisterKvCacheReply::object_size)
      .Done();
  ReplyClass<protocol::ChunkSizeReply>(m, "ChunkSizeReply", "GET_CHUNK_SIZE reply.")
      .Field("chunk_size", &protocol::ChunkSizeReply::chunk_size)
      .Done();
  ReplyClass<protocol::PrefetchStatusReply>(m, "PrefetchStatusReply",
                                            "QUERY_/WAIT_PREFETCH_STATUS reply.")
      .Field("done", &protocol::PrefetchStatusReply::done)
      .Field("hit_chunks", &protocol::PrefetchStatusReply::hit_chunks)
      .Done();
  ReplyClass<protocol::LookupHitsReply>(m, "LookupHitsReply", "QUERY_PREFETCH_LOOKUP_HITS reply.")
      .Field("known", &protocol::LookupHitsReply::known)
      .Field("hit_chunks", &protocol::LookupHitsReply::hit_chunks)
      .Done();
  ReplyClass<protocol::StoreReply>(m, "StoreReply", "STORE reply.")
      .Field("stored_chunks", &protocol::StoreReply::stored_chunks)
      .Field("present_chunks", &protocol::StoreReply::present_chunks)
      .Field("failed_chunks", &protocol::StoreReply::failed_chunks)
      .Getter("event_ipc_handle",
              [](const protocol::StoreReply& r) { return HandleToPython(r.event_ipc_handle); })
      .Done();
  ReplyClass<protocol::RetrieveReply>(m, "RetrieveReply", "RETRIEVE reply.")
      .Field("retrieved_chunks", &protocol::RetrieveReply::retrieved_chunks)
      .Getter("event_ipc_handle",
              [](const protocol::RetrieveReply& r) { return HandleToPython(r.event_ipc_handle); })
      .Done();
  ReplyClass<protocol::FreeLookupLocksReply>(m, "FreeLookupLocksReply", "FREE_LOOKUP_LOCKS reply.")
      .Field("released", &protocol::FreeLookupLocksReply::released)
      .Done();
  ReplyClass<protocol::EndSessionReply>(m, "EndSessionReply", "END_SESSION reply.")
      .Field("touched_keys", &protocol::EndSessionReply::touched_keys)
      .Done();
  ReplyClass<protocol::PingReply>(m, "PingReply", "PING reply.")
      .Field("ok", &protocol::PingReply::ok)
      .Done();
  ReplyClass<protocol::ClearReply>(m, "ClearReply", "CLEAR reply.")
      .Field("cleared", &protocol::ClearReply::cleared)
      .Done();

  py::class_<Key>(m, "Key",
                  "Which tokens an operation is about (protocol.md, 'Key'). Built once, converted "
                  "once: pass it to several calls instead of re-sending a token list.")
      .def(py::init([](const py::kwargs& fields) {
             return ToKey(py::none(), fields, "Key", Rank::kAny);
           }),
           "Key(*, model, request_id, tokens, world_size=1, worker_rank=None, cache_salt='', "
           "start=0, end=None, object_group=0)")
      .def(
          "replace",
          [](const Key& k, const py::kwargs& fields) {
            return ToKey(py::cast(k), fields, "Key.replace", Rank::kAny);
          },
          "A copy with the given fields changed.")
      .def_property_readonly("model", [](const Key& k) { return k.model; })
      .def_property_readonly("request_id", [](const Key& k) { return k.request_id; })
      .def_property_readonly(
          "tokens", [](const Key& k) { return TokensArray(k.tokens); },
          "A numpy uint32 copy of the token ids.")
      .def_property_readonly("num_tokens", [](const Key& k) { return k.tokens.size(); })
      .def_property_readonly("world_size", [](const Key& k) { return k.world_size; })
      .def_property_readonly("worker_rank", [](const Key& k) { return k.worker_rank; })
      .def_property_readonly("cache_salt", [](const Key& k) { return k.cache_salt; })
      .def_property_readonly("start", [](const Key& k) { return k.start; })
      .def_property_readonly("end", [](const Key& k) { return k.end; })
      .def_property_readonly("object_group", [](const Key& k) { return k.object_group; })
      .def(
          "__eq__", [](const Key& a, const Key& b) { return a == b; }, py::is_operator())
      .def("__repr__", &KeyRepr);

  py::class_<Future, std::shared_ptr<Future>>(
      m, "Future",
      "The pending reply of one request. result() returns it (or raises the request's error); "
      "the GIL is released while waiting.")
      .def("done", &Future::Done, "True once the reply (or an error) is there. Never blocks.")
      .def("wait", &Future::Wait, py::arg("timeout") = py::none(),
           "Waits up to `timeout` seconds (None: forever); True when done.")
      .def("result", &Future::Result, py::arg("timeout") = py::none(),
           "The reply (None for requests without one), waiting up to `timeout` seconds. Raises "
           "the request's kvtier error, or the builtin TimeoutError when not done in time.")
      .def("exception", &Future::Exception, py::arg("timeout") = py::none(),
           "The request's kvtier error, or None when it succeeded; waits like result().")
      .def("__repr__", &Future::Repr);

  py::class_<PyClient>(m, "Client",
                       "A connection to a kvtier server (one DEALER socket and a background I/O "
                       "thread). Connects in the constructor. Thread-safe.")
      .def(py::init<const std::string&, const std::string&, py::handle, py::handle, size_t>(),
           py::arg("endpoint") = "tcp://127.0.0.1:5555", py::arg("client_name") = "kvtier-python",
           py::arg("request_timeout") = 30.0, py::arg("connect_timeout") = 10.0,
           py::arg("max_pending") = 65536)
      .def_property_readonly("endpoint", &PyClient::endpoint)
      .def_property_readonly("server_info", &PyClient::server_info)
      .def_property_readonly("pending", &PyClient::pending)
      .def("close", &PyClient::Close,
           "Cancels everything pending (kvtier.Cancelled) and stops the client. Idempotent.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__",
           [](PyClient& c, const py::args&) {
             c.Close();
             return false;
           })
      .def("register_kv_cache", &PyClient::RegisterKvCache, py::kw_only(), py::arg("instance_id"),
           py::arg("model"), py::arg("layout"), py::arg("shm_name") = "", py::arg("shm_size") = 0,
           py::arg("world_size") = 1, py::arg("worker_rank") = 0, py::arg("backend") = "host",
           py::arg("device_uuid") = py::none(), py::arg("cuda_ipc_handles") = py::none())
      .def("unregister_kv_cache", &PyClient::UnregisterKvCache, py::arg("instance_id"))
      .def("get_chunk_size", &PyClient::GetChunkSize)
      .def("lookup", &PyClient::Lookup, py::arg("key") = py::none(), py::kw_only(),
           py::arg("read_locks") = 1, py::arg("timeout") = py::none())
      .def("query_prefetch_status", &PyClient::QueryPrefetchStatus, py::arg("request_id"))
      .def("wait_prefetch_status", &PyClient::WaitPrefetchStatus, py::arg("request_id"),
           py::arg("wait"))
      .def("query_prefetch_lookup_hits", &PyClient::QueryPrefetchLookupHits, py::arg("request_id"))
      .def("store", &PyClient::Store, py::arg("instance_id"), py::arg("block_ids"),
           py::arg("key") = py::none(), py::kw_only(), py::arg("event_ipc_handle") = py::none())
      .def("retrieve", &PyClient::Retrieve, py::arg("instance_id"), py::arg("block_ids"),
           py::arg("key") = py::none(), py::kw_only(), py::arg("skip_first_n_tokens") = 0,
           py::arg("event_ipc_handle") = py::none())
      .def("free_lookup_locks", &PyClient::FreeLookupLocks, py::arg("key") = py::none())
      .def("end_session", &PyClient::EndSession, py::arg("request_id"))
      .def("ping", &PyClient::Ping, py::arg("instance_id") = py::none())
      .def("clear", &PyClient::Clear, py::arg("force") = false)
      .def("noop", &PyClient::Noop);

  m.def(
      "_registration",
      [](const std::string& instance_id, const std::string& model, const py::object& layout,
         const std::string& shm_name, const py::object& shm_size, const py::object& world_size,
         const py::object& worker_rank, const std::string& backend, const py::object& device_uuid,
         const py::object& cuda_ipc_handles) {
        return RegistrationDict(ToRegistration(instance_id, model, layout, shm_name, shm_size,
                                               world_size, worker_rank, backend, device_uuid,
                                               cuda_ipc_handles));
      },
      py::kw_only(), py::arg("instance_id"), py::arg("model"), py::arg("layout"),
      py::arg("shm_name") = "", py::arg("shm_size") = 0, py::arg("world_size") = 1,
      py::arg("worker_rank") = 0, py::arg("backend") = "host", py::arg("device_uuid") = py::none(),
      py::arg("cuda_ipc_handles") = py::none(),
      "The REGISTER_KV_CACHE request register_kv_cache() would send, as a dict (for tests).");
}

}  // namespace
}  // namespace kvtier::python

PYBIND11_MODULE(_kvtier, m) { kvtier::python::Init(m); }
