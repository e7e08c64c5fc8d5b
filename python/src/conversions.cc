// The conversions of conversions.h: Python values to kvtier's C++ types and back.
#include "conversions.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <utility>

#include <fmt/format.h>

namespace kvtier::python {

using protocol::Key;

// ---- Errors -----------------------------------------------------------------------------

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

// ---- Plain values -----------------------------------------------------------------------

namespace {

// Longer than any sensible timeout; beyond it a duration would overflow nanoseconds.
constexpr double kMaxSeconds = 1e9;

std::string TypeName(py::handle h) { return Py_TYPE(h.ptr())->tp_name; }

std::string ToString(py::handle value, const std::string& what) {
  if (!py::isinstance<py::str>(value)) {
    throw py::type_error(fmt::format("{} must be a str, not {}", what, TypeName(value)));
  }
  return value.cast<std::string>();
}

bool NumpyLoaded() {
  return py::module_::import("sys").attr("modules").cast<py::dict>().contains("numpy");
}

bool Less(py::handle a, py::handle b) {
  const int r = PyObject_RichCompareBool(a.ptr(), b.ptr(), Py_LT);
  if (r < 0) throw py::error_already_set();
  return r == 1;
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

}  // namespace

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

Timeout ToTimeout(py::handle value) {
  if (value.is_none()) return kWaitForever;
  return std::max(ToDuration(value, "timeout", Duration::zero()), Duration::zero());
}

uint32_t ToMillis(py::handle value, const std::string& what) {
  const Duration d = ToDuration(value, what, Duration::zero());
  if (d < Duration::zero()) throw py::value_error(fmt::format("{} must not be negative", what));
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(d).count();
  return static_cast<uint32_t>(std::min<int64_t>(ms, kU32Max));
}

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

// ---- Keys -------------------------------------------------------------------------------

namespace {

constexpr const char* kKeyFields =
    "model, request_id, tokens, world_size, worker_rank, cache_salt, start, end, object_group";

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

}  // namespace

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

// ---- REGISTER_KV_CACHE and CUDA IPC handles ---------------------------------------------

namespace {

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

}  // namespace

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

}  // namespace kvtier::python
