// L2 adapter configs in the server config: checking them without building anything that does
// I/O, and the configs that the --l2-fs-path and --l2-redis flags add.
//
// An adapter config is the JSON object that l2::MakeL2Adapter takes (see l2/factory.h and
// docs/l2.md): "type", an optional "name", the type's own settings and an optional "eviction"
// block (storage::ParseL2EvictionOptions).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "kvtier/common/result.h"

namespace kvtier::config {

// Checks one adapter config as the factory and StorageManager would at start, building nothing
// (no disk, network or thread is touched): "fs", "redis" and "peer" settings go through their
// parsers (l2::ParseFsAdapterConfig, l2::RedisAdapterOptions::FromJson, which reads
// $KVT_REDIS_PASSWORD, l2::PeerAdapterOptions::FromJson); a "fault_inject" adapter's "inner" config
// is checked the same way, recursively. The "eviction" block is parsed and its policy name checked,
// and an adapter whose capacity is known must have one. `index` is the adapter's position in the
// list (its default name is "<type><index>"). The type must be one the factory knows; the settings
// of types without a parser that builds nothing ("mock", a fault_inject's own rates) are checked
// when the server starts.
Status ValidateL2AdapterConfig(const nlohmann::json& config, size_t index);

// The name the factory gives the adapter: its "name", or "<type><index>".
std::string L2AdapterName(const nlohmann::json& config, size_t index);

// {"type": "fs", "base_path": <base_path>}: an fs adapter with every other setting at its
// default (no capacity, so no L2 eviction).
nlohmann::json FsAdapterConfigForPath(const std::string& base_path);

// redis://[[user][:password]@]host[:port][/db] -> {"type": "redis", "host", "port"[, "username",
// "password", "db"]}. user and password may be percent-encoded; an IPv6 host is written in
// brackets; the port defaults to 6379 and the db to 0. rediss:// (TLS) is not supported.
Result<nlohmann::json> RedisAdapterConfigFromUrl(std::string_view url);

}  // namespace kvtier::config
