// Reading a YAML config with errors that point into the file (internal to config/).
//
// Every error is kInvalidArgument, formatted "<source>:<line>:<col>: <key path>: <what>", with
// 1-based line and column. yaml-cpp throws: callers wrap every use of YAML::Node in a
// try/catch (ParseServerConfigYaml does) and turn what escapes into a Status.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "kvtier/common/clock.h"
#include "kvtier/common/result.h"

namespace kvtier::config::internal {

// Limits on what a config may hold beyond its known structure (the L2 adapter blocks): alias
// expansion can make a few bytes of YAML stand for an exponential number of nodes.
inline constexpr size_t kMaxJsonDepth = 32;
inline constexpr size_t kMaxJsonNodes = 100000;

// The file being read: its name, for error messages.
class YamlSource {
 public:
  explicit YamlSource(std::string name) : name_(std::move(name)) {}

  // "<name>:<line>:<col>: <path>: <what>" (the position is left out when the mark is unknown,
  // the path when empty).
  Status Error(const YAML::Mark& mark, std::string_view path, std::string_view what) const;
  Status Error(const YAML::Node& node, std::string_view path, std::string_view what) const {
    return Error(node.Mark(), path, what);
  }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

// The one YAML document of `yaml_text` (a null node when empty). A second document is an
// error pointing at its start. Throws what yaml-cpp throws on malformed YAML.
Result<YAML::Node> LoadOneDocument(const YamlSource& source, std::string_view yaml_text);

// "a.b" + "c" -> "a.b.c"; "" + "c" -> "c".
std::string JoinPath(std::string_view parent, std::string_view key);

// The choice closest to `word` by edit distance (or sharing a prefix), when close enough to be
// a likely typo; empty otherwise.
std::string ClosestMatch(std::string_view word, std::span<const std::string> choices);
// "; did you mean 'x'?" when ClosestMatch finds one, else "".
std::string DidYouMean(std::string_view word, std::span<const std::string> choices,
                       std::string_view prefix = "");

// "a mapping", "a sequence", "a scalar", "null".
std::string_view NodeKindName(const YAML::Node& node);

// How the reader types an untagged (plain) scalar for JSON: "true"/"false" -> bool, decimal
// integers -> integer, decimal floats -> number, anything else -> string. Quoted scalars are
// always strings.
nlohmann::json PlainScalarToJson(const std::string& text);

// Converts a YAML subtree to JSON (maps -> objects with string keys, sequences -> arrays,
// scalars typed as above, null -> null). Duplicate keys, non-scalar keys, nesting deeper than
// kMaxJsonDepth or more than kMaxJsonNodes nodes are errors.
Result<nlohmann::json> YamlToJson(const YamlSource& source, const YAML::Node& node,
                                  const std::string& path);

// The whole text of a config file: kNotFound when it does not exist, kInvalidArgument when it
// is not a regular file, kIOError when it cannot be read; each message names the path.
Result<std::string> ReadConfigFile(const std::string& path);

// Writes a string so that the reader reads the same string back (quoted when needed).
void EmitString(YAML::Emitter& out, const std::string& s);
// Writes `json` into `out` so that YamlToJson reads back an equal value (strings that would
// read as another type are quoted).
void EmitJson(YAML::Emitter& out, const nlohmann::json& json);

// Values as the dump writes them, each read back exactly by the parser: sizes as "20GiB" when
// a whole number of KiB/MiB/GiB/TiB, else plain bytes; durations by FormatDuration; doubles in
// their shortest round-trip form, always with a '.' or an exponent.
std::string FormatSizeForYaml(uint64_t bytes);
std::string FormatDoubleForYaml(double value);

// Scalar parsers of the reader; errors say what was expected and what was found (no position).
Result<uint64_t> ParseUnsigned(std::string_view text, uint64_t max);
Result<uint64_t> ParseSizeValue(std::string_view text);
Result<Duration> ParseDurationValue(std::string_view text);
Result<double> ParseDoubleValue(std::string_view text);
Result<bool> ParseBoolValue(std::string_view text);

// Reads one mapping of a known structure. Getters record the key as known and leave the output
// untouched when the key is absent or null (so defaults stay); Finish() reports the first
// key no getter asked for, naming its path and suggesting the closest known key.
class MapReader {
 public:
  // `node` must be a mapping, or null (an absent or empty section). Duplicate and non-scalar
  // keys are errors.
  static Result<MapReader> Open(const YamlSource* source, const YAML::Node& node, std::string path);

  // The value of `key` (an undefined node when absent); marks the key known.
  YAML::Node Get(std::string_view key);
  // Whether `key` is present with a non-null value.
  bool Has(std::string_view key) const;
  // An error at `key`'s value (or at the mapping when the key is absent).
  Status ErrorAt(std::string_view key, std::string_view what) const;
  // `status` with the position and path of `key` when it is an error and the key is present;
  // OK otherwise (an absent key kept its default, which ValidateServerConfig checks).
  Status Check(std::string_view key, const Status& status) const;

  Status String(std::string_view key, std::string* out);
  Status Bool(std::string_view key, bool* out);
  Status Unsigned(std::string_view key, uint64_t max, uint64_t* out);
  Status Size(std::string_view key, uint64_t* out);
  Status Duration(std::string_view key, kvtier::Duration* out);
  Status Double(std::string_view key, double* out);
  // A sequence of scalars, or one scalar (a list of one).
  Status StringList(std::string_view key, std::vector<std::string>* out);

  Status Finish() const;

  const std::string& path() const { return path_; }
  std::string PathOf(std::string_view key) const { return JoinPath(path_, key); }
  const YamlSource& source() const { return *source_; }
  const YAML::Node& node() const { return node_; }

 private:
  MapReader(const YamlSource* source, YAML::Node node, std::string path)
      : source_(source), node_(std::move(node)), path_(std::move(path)) {}
  // The scalar text of `key`, or an error naming what was found instead.
  Result<std::string> Scalar(std::string_view key, std::string_view expected) const;
  const YAML::Node* Find(std::string_view key) const;
  YAML::Mark KeyMark(std::string_view key) const;

  const YamlSource* source_;
  YAML::Node node_;
  std::string path_;
  std::vector<std::string> keys_;  // in file order
  std::vector<YAML::Node> values_;
  std::vector<YAML::Mark> key_marks_;
  std::vector<std::string> known_;
};

}  // namespace kvtier::config::internal
