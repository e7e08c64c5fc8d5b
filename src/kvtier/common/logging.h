// Logging through spdlog. One process-wide logger named "kvtier"; call InitLogging once from
// main(). Before that, the macros log to spdlog's default stderr logger at info level.
#pragma once

#include <string_view>

#include <spdlog/spdlog.h>

#include "kvtier/common/status.h"

namespace kvtier {

// level: trace, debug, info, warn, error, critical, off.
[[nodiscard]] Status InitLogging(std::string_view level);
[[nodiscard]] Status SetLogLevel(std::string_view level);

}  // namespace kvtier

#define KVT_LOG_TRACE(...) SPDLOG_TRACE(__VA_ARGS__)
#define KVT_LOG_DEBUG(...) SPDLOG_DEBUG(__VA_ARGS__)
#define KVT_LOG_INFO(...) SPDLOG_INFO(__VA_ARGS__)
#define KVT_LOG_WARN(...) SPDLOG_WARN(__VA_ARGS__)
#define KVT_LOG_ERROR(...) SPDLOG_ERROR(__VA_ARGS__)
