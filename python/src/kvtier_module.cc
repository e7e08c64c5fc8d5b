// kvtier._kvtier: the Python binding of the C++ client (include/kvtier/client.h). The package
// `kvtier` (python/kvtier/__init__.py) re-exports it; docs/client.md describes the Python API and
// python/kvtier/_kvtier.pyi its types.
//
// Python values are converted once, by conversions.h, with clear errors. Errors of the client and
// the server raise kvtier's exceptions (python/kvtier/_errors.py), chosen by status code. Every
// call that may block (connecting, waiting, closing, submitting) releases the GIL; no client
// thread ever takes it.
#include <functional>
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

#include "conversions.h"

namespace kvtier::python {
namespace {

using protocol::Key;

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
