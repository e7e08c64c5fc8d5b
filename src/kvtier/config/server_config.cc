// The server config as YAML: parsing a file into a ServerConfig (types, units, single-field
// rules and unknown keys, with file positions), dumping one back, and listing the key paths.
// The schema and its rules are server_config_rules.h; ValidateServerConfig is in
// server_config_rules.cc.
#include "kvtier/config/server_config.h"

#include <limits>
#include <map>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "kvtier/common/units.h"
#include "kvtier/config/l2_adapter_config.h"
#include "kvtier/config/server_config_rules.h"
#include "kvtier/config/yaml_reader.h"
#include "kvtier/keys/token_hasher.h"

namespace kvtier::config {

using internal::CheckAdapterNames;
using internal::Invalid;
using internal::MapReader;
using internal::VisitServerConfig;
using internal::YamlSource;

namespace {

// Finds where in an adapter's YAML an error of the l2 parsers points: the first 'quoted' word
// of the message that is a key of the adapter (or of its "eviction" / "inner" block).
YAML::Mark LocateAdapterError(const YAML::Node& item, std::string_view message) {
  YAML::Mark mark = item.Mark();
  YAML::Node map = item;
  size_t pos = 0;
  // storage::ParseL2EvictionOptions' section names no key: "eviction of L2 adapter '<name>'".
  if (message.starts_with("eviction of L2 adapter") && item["eviction"].IsMap()) {
    for (auto it = item.begin(); it != item.end(); ++it) {
      if (it->first.IsScalar() && it->first.Scalar() == "eviction") mark = it->first.Mark();
    }
    map.reset(item["eviction"]);
  }
  while (map.IsMap()) {
    size_t open = message.find('\'', pos);
    if (open == std::string_view::npos) break;
    size_t close = message.find('\'', open + 1);
    if (close == std::string_view::npos) break;
    const std::string word(message.substr(open + 1, close - open - 1));
    pos = close + 1;
    for (auto it = map.begin(); it != map.end(); ++it) {
      if (!it->first.IsScalar() || it->first.Scalar() != word) continue;
      mark = it->first.Mark();
      if ((word == "eviction" || word == "inner") && it->second.IsMap()) {
        // The rest of the message is about this block. reset() rebinds: assigning a Node
        // would write through to the document.
        map.reset(it->second);
        break;
      }
      return mark;
    }
  }
  return mark;
}

// JsonConfig reports "unknown setting 'x' (known: a, b, c)": add the closest known key.
std::string WithSuggestion(std::string_view message) {
  constexpr std::string_view kUnknown = "unknown setting '";
  constexpr std::string_view kKnown = "(known: ";
  size_t u = message.find(kUnknown);
  size_t k = message.rfind(kKnown);
  if (u == std::string_view::npos || k == std::string_view::npos) return std::string(message);
  size_t end = message.find('\'', u + kUnknown.size());
  size_t close = message.find(')', k);
  if (end == std::string_view::npos || close == std::string_view::npos) {
    return std::string(message);
  }
  std::string_view word = message.substr(u + kUnknown.size(), end - u - kUnknown.size());
  std::vector<std::string> known;
  std::string_view list = message.substr(k + kKnown.size(), close - k - kKnown.size());
  while (!list.empty()) {
    size_t comma = list.find(", ");
    known.emplace_back(list.substr(0, comma));
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 2);
  }
  return std::string(message) + internal::DidYouMean(word, known);
}

// ---- visitors ----

// Reads YAML into a ServerConfig: types, units, single-field rules and unknown keys, with file
// positions.
class Reader {
 public:
  explicit Reader(const YamlSource* source) : source_(source) {}

  Status Run(const YAML::Node& root, ServerConfig* config) {
    Result<MapReader> top = MapReader::Open(source_, root, "");
    if (!top) return top.error();
    stack_.push_back(std::move(*top));
    VisitServerConfig(*this, *config);
    if (status_.ok()) status_ = stack_.back().Finish();
    stack_.pop_back();
    return status_;
  }

  template <typename F>
  void Section(std::string_view key, F body) {
    if (!status_.ok()) return;
    YAML::Node node = top().Get(key);
    Result<MapReader> reader = MapReader::Open(source_, node, top().PathOf(key));
    if (!reader) {
      status_ = reader.error();
      return;
    }
    stack_.push_back(std::move(*reader));
    body();
    if (status_.ok()) status_ = stack_.back().Finish();
    stack_.pop_back();
  }

  template <typename Rule>
  void String(std::string_view key, std::string& value, Rule rule) {
    if (!status_.ok()) return;
    status_ = top().String(key, &value);
    Checked(key, rule(value));
  }
  void Bool(std::string_view key, bool& value) {
    if (!status_.ok()) return;
    status_ = top().Bool(key, &value);
  }
  template <typename T, typename Rule>
  void Count(std::string_view key, T& value, Rule rule) {
    if (!status_.ok()) return;
    uint64_t v = value;
    status_ = top().Unsigned(key, std::numeric_limits<T>::max(), &v);
    if (!status_.ok()) return;
    value = static_cast<T>(v);
    Checked(key, rule(v));
  }
  template <typename Rule>
  void Size(std::string_view key, uint64_t& value, Rule rule) {
    if (!status_.ok()) return;
    status_ = top().Size(key, &value);
    Checked(key, rule(value));
  }
  template <typename Rule>
  void Duration(std::string_view key, kvtier::Duration& value, Rule rule) {
    if (!status_.ok()) return;
    status_ = top().Duration(key, &value);
    Checked(key, rule(value));
  }
  template <typename Rule>
  void Double(std::string_view key, double& value, Rule rule) {
    if (!status_.ok()) return;
    status_ = top().Double(key, &value);
    Checked(key, rule(value));
  }
  template <typename ItemRule, typename Rule>
  void StringList(std::string_view key, std::vector<std::string>& value, ItemRule item_rule,
                  Rule rule) {
    if (!status_.ok()) return;
    status_ = top().StringList(key, &value);
    if (!status_.ok() || !top().Has(key)) return;
    const YAML::Node node = top().Get(key);
    for (size_t i = 0; i < value.size(); ++i) {
      Status s = item_rule(value[i]);
      if (s.ok()) continue;
      // A single scalar stands for a list of one.
      status_ =
          node.IsSequence()
              ? source_->Error(node[i], fmt::format("{}[{}]", top().PathOf(key), i), s.message())
              : top().ErrorAt(key, s.message());
      return;
    }
    Checked(key, rule(value));
  }
  void Hash(std::string_view key, keys::HashAlgorithm& value) {
    if (!status_.ok()) return;
    std::string name;
    status_ = top().String(key, &name);
    if (!status_.ok() || !top().Has(key)) return;
    Result<keys::HashAlgorithm> hash = keys::ParseHashAlgorithm(name);
    if (!hash) {
      status_ = top().ErrorAt(key, hash.error().message());
      return;
    }
    value = *hash;
  }
  void Adapters(std::string_view key, std::vector<nlohmann::json>& value) {
    if (!status_.ok()) return;
    status_ = ReadAdapters(key, &value);
  }

 private:
  MapReader& top() { return stack_.back(); }

  void Checked(std::string_view key, const Status& rule_status) {
    if (status_.ok()) status_ = top().Check(key, rule_status);
  }

  Status ReadAdapters(std::string_view key, std::vector<nlohmann::json>* out) {
    YAML::Node list = top().Get(key);
    if (!top().Has(key)) return Status::OK();
    const std::string path = top().PathOf(key);
    if (!list.IsSequence()) {
      return top().ErrorAt(key, fmt::format("expected a list of adapter configs, got {}",
                                            internal::NodeKindName(list)));
    }
    std::vector<nlohmann::json> adapters;
    std::vector<YAML::Node> items;
    size_t i = 0;
    for (const YAML::Node& item : list) {
      const std::string item_path = fmt::format("{}[{}]", path, i);
      if (!item.IsMap()) {
        return source_->Error(item, item_path,
                              fmt::format("expected an adapter config (a mapping with a 'type'), "
                                          "got {}",
                                          internal::NodeKindName(item)));
      }
      KVT_ASSIGN_OR_RETURN(nlohmann::json json, internal::YamlToJson(*source_, item, item_path));
      if (Status s = ValidateL2AdapterConfig(json, i); !s.ok()) {
        return source_->Error(LocateAdapterError(item, s.message()), item_path,
                              WithSuggestion(s.message()));
      }
      adapters.push_back(std::move(json));
      items.push_back(item);
      ++i;
    }
    size_t duplicate = 0;
    if (Status s = CheckAdapterNames(adapters, &duplicate); !s.ok()) {
      return source_->Error(items[duplicate], fmt::format("{}[{}]", path, duplicate), s.message());
    }
    *out = std::move(adapters);
    return Status::OK();
  }

  const YamlSource* source_;
  std::vector<MapReader> stack_;
  Status status_;
};

// Writes every key as YAML.
class Dumper {
 public:
  explicit Dumper(YAML::Emitter* out) : out_(*out) {}

  template <typename F>
  void Section(std::string_view key, F body) {
    Key(key);
    out_ << YAML::BeginMap;
    body();
    out_ << YAML::EndMap;
  }
  template <typename Rule>
  void String(std::string_view key, const std::string& value, Rule) {
    Key(key);
    internal::EmitString(out_, value);
  }
  void Bool(std::string_view key, bool value) {
    Key(key);
    out_ << (value ? "true" : "false");
  }
  template <typename T, typename Rule>
  void Count(std::string_view key, T value, Rule) {
    Key(key);
    out_ << static_cast<uint64_t>(value);
  }
  template <typename Rule>
  void Size(std::string_view key, uint64_t value, Rule) {
    Key(key);
    out_ << internal::FormatSizeForYaml(value);
  }
  template <typename Rule>
  void Duration(std::string_view key, kvtier::Duration value, Rule) {
    Key(key);
    out_ << FormatDuration(value);
  }
  template <typename Rule>
  void Double(std::string_view key, double value, Rule) {
    Key(key);
    out_ << internal::FormatDoubleForYaml(value);
  }
  template <typename ItemRule, typename Rule>
  void StringList(std::string_view key, const std::vector<std::string>& value, ItemRule, Rule) {
    Key(key);
    out_ << YAML::BeginSeq;
    for (const std::string& s : value) internal::EmitString(out_, s);
    out_ << YAML::EndSeq;
  }
  void Hash(std::string_view key, keys::HashAlgorithm value) {
    Key(key);
    out_ << std::string(keys::HashAlgorithmName(value));
  }
  void Adapters(std::string_view key, const std::vector<nlohmann::json>& adapters) {
    Key(key);
    if (adapters.empty()) {
      out_ << YAML::Flow << YAML::BeginSeq << YAML::EndSeq;
      return;
    }
    out_ << YAML::BeginSeq;
    for (const nlohmann::json& a : adapters) {
      if (!a.is_object()) {
        internal::EmitJson(out_, a);
        continue;
      }
      // "type" and "name" first, "eviction" last; the type's keys in between.
      out_ << YAML::BeginMap;
      auto emit = [&](const std::string& k, const nlohmann::json& v) {
        out_ << YAML::Key;
        internal::EmitString(out_, k);
        out_ << YAML::Value;
        internal::EmitJson(out_, v);
      };
      for (const char* first : {"type", "name"}) {
        if (a.contains(first)) emit(first, a[first]);
      }
      for (const auto& [k, v] : a.items()) {
        if (k != "type" && k != "name" && k != "eviction") emit(k, v);
      }
      if (a.contains("eviction")) emit("eviction", a["eviction"]);
      out_ << YAML::EndMap;
    }
    out_ << YAML::EndSeq;
  }

 private:
  void Key(std::string_view key) { out_ << YAML::Key << std::string(key) << YAML::Value; }

  YAML::Emitter& out_;
};

// Lists every key path.
class PathLister {
 public:
  std::vector<std::string> paths;

  template <typename F>
  void Section(std::string_view key, F body) {
    prefix_.emplace_back(key);
    body();
    prefix_.pop_back();
  }
  template <typename T, typename Rule>
  void String(std::string_view key, const T&, Rule) {
    Add(key);
  }
  void Bool(std::string_view key, bool) { Add(key); }
  template <typename T, typename Rule>
  void Count(std::string_view key, T, Rule) {
    Add(key);
  }
  template <typename Rule>
  void Size(std::string_view key, uint64_t, Rule) {
    Add(key);
  }
  template <typename Rule>
  void Duration(std::string_view key, kvtier::Duration, Rule) {
    Add(key);
  }
  template <typename Rule>
  void Double(std::string_view key, double, Rule) {
    Add(key);
  }
  template <typename ItemRule, typename Rule>
  void StringList(std::string_view key, const std::vector<std::string>&, ItemRule, Rule) {
    Add(key);
  }
  void Hash(std::string_view key, keys::HashAlgorithm) { Add(key); }
  void Adapters(std::string_view key, const std::vector<nlohmann::json>&) { Add(key); }

 private:
  void Add(std::string_view key) {
    std::string path;
    for (const std::string& p : prefix_) path = internal::JoinPath(path, p);
    paths.push_back(internal::JoinPath(path, key));
  }
  std::vector<std::string> prefix_;
};

}  // namespace

storage::StorageOptions DefaultStorageOptions() {
  storage::StorageOptions options;
  options.l1.capacity_bytes = kDefaultL1Capacity;
  return options;
}

Result<ServerConfig> ParseServerConfigYaml(std::string_view yaml_text,
                                           std::string_view source_name) {
  const YamlSource source{std::string(source_name)};
  try {
    KVT_ASSIGN_OR_RETURN(YAML::Node root, LoadOneDocument(source, yaml_text));
    ServerConfig config;
    Reader reader(&source);
    KVT_RETURN_IF_ERROR(reader.Run(root, &config));
    return config;
  } catch (const YAML::Exception& e) {
    return MakeError(source.Error(e.mark, "", fmt::format("invalid YAML: {}", e.msg)));
  } catch (const std::exception& e) {
    return MakeError(Invalid(fmt::format("{}: {}", source.name(), e.what())));
  } catch (...) {
    return MakeError(
        Invalid(fmt::format("{}: unexpected error while reading YAML", source.name())));
  }
}

Result<ServerConfig> LoadServerConfigFile(const std::string& path) {
  KVT_ASSIGN_OR_RETURN(std::string text, internal::ReadConfigFile(path));
  return ParseServerConfigYaml(text, path);
}

std::string DumpServerConfigYaml(const ServerConfig& config) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  Dumper dumper(&out);
  VisitServerConfig(dumper, config);
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::vector<std::string> ServerConfigKeyPaths() {
  PathLister lister;
  const ServerConfig config;
  VisitServerConfig(lister, config);
  return std::move(lister.paths);
}

}  // namespace kvtier::config
