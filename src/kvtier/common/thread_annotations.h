// Clang thread-safety annotations (-Wthread-safety). No-ops for other compilers.
// Every guarded field carries KVT_GUARDED_BY; every function that needs a lock held says
// KVT_REQUIRES. See https://clang.llvm.org/docs/ThreadSafetyAnalysis.html.
#pragma once

#if defined(__clang__)
#define KVT_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define KVT_THREAD_ANNOTATION(x)
#endif

#define KVT_CAPABILITY(x) KVT_THREAD_ANNOTATION(capability(x))
#define KVT_SCOPED_CAPABILITY KVT_THREAD_ANNOTATION(scoped_lockable)
#define KVT_GUARDED_BY(x) KVT_THREAD_ANNOTATION(guarded_by(x))
#define KVT_PT_GUARDED_BY(x) KVT_THREAD_ANNOTATION(pt_guarded_by(x))
#define KVT_ACQUIRED_BEFORE(...) KVT_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
#define KVT_ACQUIRED_AFTER(...) KVT_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))
#define KVT_REQUIRES(...) KVT_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define KVT_REQUIRES_SHARED(...) KVT_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
#define KVT_ACQUIRE(...) KVT_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define KVT_ACQUIRE_SHARED(...) KVT_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#define KVT_RELEASE(...) KVT_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define KVT_RELEASE_SHARED(...) KVT_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
#define KVT_RELEASE_GENERIC(...) KVT_THREAD_ANNOTATION(release_generic_capability(__VA_ARGS__))
#define KVT_TRY_ACQUIRE(...) KVT_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define KVT_TRY_ACQUIRE_SHARED(...) \
  KVT_THREAD_ANNOTATION(try_acquire_shared_capability(__VA_ARGS__))
#define KVT_EXCLUDES(...) KVT_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define KVT_ASSERT_CAPABILITY(x) KVT_THREAD_ANNOTATION(assert_capability(x))
#define KVT_RETURN_CAPABILITY(x) KVT_THREAD_ANNOTATION(lock_returned(x))
#define KVT_NO_THREAD_SAFETY_ANALYSIS KVT_THREAD_ANNOTATION(no_thread_safety_analysis)
