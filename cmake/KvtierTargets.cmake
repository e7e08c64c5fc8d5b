# Build flags live on interface targets; nothing edits global flags.
#
#   kvt_library(NAME <m> SRCS ... [DEPS ...])     -> kvtier_<m>, alias kvtier::<m>
#   kvt_test(NAME <t> SRCS ... [DEPS ...] [LABELS ...] [TIMEOUT s])
#                                                  tests labelled stress or concurrency are
#                                                  also built by `concurrency_tests` (what CI
#                                                  runs under TSan), gpu by `gpu_tests`
#   kvt_bench(NAME <b> SRCS ... [DEPS ...])        Google Benchmark micro-benchmark
#   kvt_fuzzer(NAME <f> SRCS ... [DEPS ...] [CORPUS dir] [RUNS n])
#                                                  libFuzzer target (KVT_BUILD_FUZZERS), also
#                                                  a ctest test (label fuzz): n seeded runs

add_library(kvtier_build_flags INTERFACE)
add_library(kvtier::build_flags ALIAS kvtier_build_flags)

set(_kvt_warnings -Wall -Wextra -Wshadow -Wnon-virtual-dtor -Wno-unused-parameter)
if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  # Clang's static lock analysis checks every KVT_GUARDED_BY / KVT_REQUIRES annotation.
  list(APPEND _kvt_warnings -Wthread-safety)
endif()
if(KVT_WERROR)
  list(APPEND _kvt_warnings -Werror)
endif()
target_compile_options(kvtier_build_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_kvt_warnings}>)

if(KVT_SANITIZE STREQUAL "address")
  set(_kvt_san -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
elseif(KVT_SANITIZE STREQUAL "thread")
  set(_kvt_san -fsanitize=thread -fno-omit-frame-pointer)
  target_compile_definitions(kvtier_build_flags INTERFACE KVT_TSAN=1)
elseif(NOT KVT_SANITIZE STREQUAL "")
  message(FATAL_ERROR "KVT_SANITIZE must be '', 'address' or 'thread' (got '${KVT_SANITIZE}')")
endif()
if(_kvt_san)
  target_compile_options(kvtier_build_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_kvt_san}>)
  target_link_options(kvtier_build_flags INTERFACE ${_kvt_san})
endif()
if(KVT_WITH_CUDA)
  target_compile_definitions(kvtier_build_flags INTERFACE KVT_WITH_CUDA=1)
endif()

function(kvt_library)
  cmake_parse_arguments(A "" "NAME" "SRCS;DEPS" ${ARGN})
  set(target kvtier_${A_NAME})
  add_library(${target} STATIC ${A_SRCS})
  add_library(kvtier::${A_NAME} ALIAS ${target})
  target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/include)
  target_link_libraries(${target} PUBLIC ${A_DEPS} PRIVATE kvtier::build_flags)
  set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  if(KVT_BUILD_FUZZERS)
    # Coverage instrumentation in every library, so a fuzzer linking one sees inside it. Tests
    # do not need it, and it costs compile time, so it stays off their own sources.
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=fuzzer-no-link>)
  endif()
endfunction()

function(kvt_test)
  if(NOT KVT_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(A "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 120)
  endif()
  if(NOT A_LABELS)
    set(A_LABELS unit)
  endif()
  add_executable(${A_NAME} ${A_SRCS})
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS} kvtier_test_main kvtier::build_flags)
  # One label per test: gtest_discover_tests's PROPERTIES cannot carry a list as one value.
  list(LENGTH A_LABELS n_labels)
  if(NOT n_labels EQUAL 1)
    message(FATAL_ERROR "kvt_test(${A_NAME}): give exactly one label (got '${A_LABELS}')")
  endif()
  gtest_discover_tests(${A_NAME}
    DISCOVERY_MODE PRE_TEST
    PROPERTIES LABELS "${A_LABELS}" TIMEOUT ${A_TIMEOUT})
  set_property(GLOBAL APPEND PROPERTY KVT_TESTS_${A_LABELS} ${A_NAME})
endfunction()

# Targets that build a subset of the tests, for CI stages that run only those labels:
#   concurrency_tests  every test executable labelled stress or concurrency (TSan stage)
#   gpu_tests          every test executable labelled gpu
# Call once, after every kvt_test.
function(kvt_add_label_targets)
  get_property(stress GLOBAL PROPERTY KVT_TESTS_stress)
  get_property(concurrency GLOBAL PROPERTY KVT_TESTS_concurrency)
  get_property(gpu GLOBAL PROPERTY KVT_TESTS_gpu)
  add_custom_target(concurrency_tests)
  if(stress OR concurrency)
    add_dependencies(concurrency_tests ${stress} ${concurrency})
  endif()
  add_custom_target(gpu_tests)
  if(gpu)
    add_dependencies(gpu_tests ${gpu})
  endif()
endfunction()

function(kvt_bench)
  if(NOT KVT_BUILD_BENCHMARKS)
    return()
  endif()
  cmake_parse_arguments(A "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${A_NAME} ${A_SRCS})
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS} benchmark::benchmark_main kvtier::build_flags)
endfunction()

function(kvt_fuzzer)
  if(NOT KVT_BUILD_FUZZERS)
    return()
  endif()
  cmake_parse_arguments(A "" "NAME;CORPUS;RUNS" "SRCS;DEPS" ${ARGN})
  add_executable(${A_NAME} ${A_SRCS})
  target_compile_options(${A_NAME} PRIVATE -fsanitize=fuzzer)
  target_link_options(${A_NAME} PRIVATE -fsanitize=fuzzer)
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS} kvtier::build_flags)
  if(KVT_BUILD_TESTS)
    if(NOT A_RUNS)
      set(A_RUNS 50000)
    endif()
    # libFuzzer writes new inputs into the first corpus directory: keep that in the build tree.
    set(work ${CMAKE_CURRENT_BINARY_DIR}/${A_NAME}_corpus)
    file(MAKE_DIRECTORY ${work})
    set(seeds "")
    if(A_CORPUS)
      set(seeds ${CMAKE_CURRENT_SOURCE_DIR}/${A_CORPUS})
    endif()
    # -timeout/-rss_limit_mb: a slow or memory-hungry input fails the test at once, saved as an
    # artifact in the build directory, instead of running into the ctest timeout.
    add_test(NAME ${A_NAME}
             COMMAND ${A_NAME} -runs=${A_RUNS} -seed=1 -max_len=4096 -timeout=20 -rss_limit_mb=1024
                     -artifact_prefix=${CMAKE_CURRENT_BINARY_DIR}/${A_NAME}- ${work} ${seeds})
    set_tests_properties(${A_NAME} PROPERTIES LABELS fuzz TIMEOUT 300)
  endif()
endfunction()
