// Invariant checks. A broken invariant is a bug: it logs and aborts, in every build.
// KVT_DCHECK compiles away in release builds (NDEBUG).
#pragma once

#include <fmt/format.h>

namespace kvtier::internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* expr, const std::string& msg);
}  // namespace kvtier::internal

#define KVT_CHECK(cond)                                                          \
  do {                                                                           \
    if (__builtin_expect(!(cond), 0))                                            \
      ::kvtier::internal::CheckFailed(__FILE__, __LINE__, #cond, std::string()); \
  } while (0)

#define KVT_CHECK_MSG(cond, ...)                                                            \
  do {                                                                                      \
    if (__builtin_expect(!(cond), 0))                                                       \
      ::kvtier::internal::CheckFailed(__FILE__, __LINE__, #cond, fmt::format(__VA_ARGS__)); \
  } while (0)

#ifdef NDEBUG
#define KVT_DCHECK(cond) \
  do {                   \
  } while (false && (cond))
#define KVT_DCHECK_MSG(cond, ...) \
  do {                            \
  } while (false && (cond))
#else
#define KVT_DCHECK(cond) KVT_CHECK(cond)
#define KVT_DCHECK_MSG(cond, ...) KVT_CHECK_MSG(cond, __VA_ARGS__)
#endif
