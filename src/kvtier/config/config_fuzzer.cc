// Fuzzes ParseServerConfigYaml with arbitrary bytes: it must never crash or throw, every error
// must be kInvalidArgument, and a config that parses must dump to YAML that parses back to the
// same dump (what `kvtier server --print-config` promises). Seed corpus:
// fuzz_corpus/server_config/.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"
#include "kvtier/config/server_config.h"

namespace kvtier::config {
namespace {

void CheckParse(std::string_view text) {
  Result<ServerConfig> config = ParseServerConfigYaml(text, "fuzz.yaml");
  if (!config) {
    KVT_CHECK_MSG(config.error().code() == StatusCode::kInvalidArgument, "{}",
                  config.error().ToString());
    return;
  }
  Status valid = ValidateServerConfig(*config);
  KVT_CHECK_MSG(valid.ok() || valid.code() == StatusCode::kInvalidArgument, "{}", valid.ToString());
  const std::string dumped = DumpServerConfigYaml(*config);
  Result<ServerConfig> again = ParseServerConfigYaml(dumped, "dump.yaml");
  KVT_CHECK_MSG(again.has_value(), "the dump does not parse: {}\n{}",
                again ? "" : again.error().ToString(), dumped);
  const std::string redumped = DumpServerConfigYaml(*again);
  KVT_CHECK_MSG(redumped == dumped, "the dump changed:\n{}\n---\n{}", dumped, redumped);
  KVT_CHECK(again->storage.l2_adapters == config->storage.l2_adapters);
}

}  // namespace
}  // namespace kvtier::config

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // The redis config parser logs when $KVT_REDIS_PASSWORD is overridden; keep the output quiet.
  kvtier::InitLogging("off").IgnoreError();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::config::CheckParse(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
