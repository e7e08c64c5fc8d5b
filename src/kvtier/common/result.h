// Result<T>: a value or a Status (tl::expected from Debian's libexpected-dev).
#pragma once

#include <utility>

#include <tl/expected.hpp>

#include "kvtier/common/status.h"

namespace kvtier {

template <typename T>
using Result = tl::expected<T, Status>;

// `return MakeError(Status::NotFound("..."));` from a function returning Result<T>.
inline tl::unexpected<Status> MakeError(Status status) {
  return tl::unexpected<Status>(std::move(status));
}

// Converts a Result<void> into a Status.
inline Status ToStatus(const Result<void>& r) { return r ? Status() : r.error(); }

namespace internal {
// The early return of the KVT_ macros: converts to Status or to any Result<T>, so the macros
// work in functions returning either.
struct ReturnedError {
  Status status;
  operator Status() && { return std::move(status); }  // NOLINT(google-explicit-constructor)
  template <typename T>
  operator tl::expected<T, Status>() && {  // NOLINT(google-explicit-constructor)
    return tl::unexpected<Status>(std::move(status));
  }
};
}  // namespace internal

}  // namespace kvtier

#define KVT_CONCAT_INNER(a, b) a##b
#define KVT_CONCAT(a, b) KVT_CONCAT_INNER(a, b)

// Returns the Status from the enclosing function (returning Status or any Result<T>) when
// `expr` (a Status) is not OK.
#define KVT_RETURN_IF_ERROR(expr)                                                            \
  do {                                                                                       \
    ::kvtier::Status kvt_status_ = (expr);                                                   \
    if (!kvt_status_.ok()) return ::kvtier::internal::ReturnedError{std::move(kvt_status_)}; \
  } while (0)

// The same, spelled for functions returning Status (KVT_RETURN_IF_ERROR works there too).
#define KVT_RETURN_STATUS_IF_ERROR(expr)       \
  do {                                         \
    ::kvtier::Status kvt_status_ = (expr);     \
    if (!kvt_status_.ok()) return kvt_status_; \
  } while (0)

// `KVT_ASSIGN_OR_RETURN(auto x, MakeX());` — unwraps a Result or returns its error. Works in
// functions returning Status or Result<U> (any U).
#define KVT_ASSIGN_OR_RETURN(lhs, expr) \
  KVT_ASSIGN_OR_RETURN_IMPL(KVT_CONCAT(kvt_result_, __LINE__), lhs, expr)
// NOLINTNEXTLINE(bugprone-macro-parentheses): `lhs` is a declaration, `tmp` a name.
#define KVT_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr)                             \
  auto tmp = (expr);                                                          \
  if (!tmp) return ::kvtier::internal::ReturnedError{std::move(tmp).error()}; \
  lhs = std::move(*tmp)
