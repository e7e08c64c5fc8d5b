#include "kvtier/common/logging.h"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>

namespace kvtier {

Status SetLogLevel(std::string_view level) {
  spdlog::level::level_enum parsed = spdlog::level::from_str(std::string(level));
  // from_str maps unknown names to "off"; only accept "off" when it was asked for.
  if (parsed == spdlog::level::off && level != "off") {
    return Status::InvalidArgument(fmt::format(
        "unknown log level '{}': use trace, debug, info, warn, error, critical or off", level));
  }
  spdlog::set_level(parsed);
  return Status::OK();
}

Status InitLogging(std::string_view level) {
  auto logger = spdlog::get("kvtier");
  if (!logger) logger = spdlog::stderr_color_mt("kvtier");
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%L%$ [%t] %s:%# %v");
  spdlog::set_default_logger(logger);
  return SetLogLevel(level);
}

}  // namespace kvtier
