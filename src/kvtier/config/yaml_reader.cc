#include "kvtier/config/yaml_reader.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/eventhandler.h>

#include "kvtier/common/units.h"

namespace kvtier::config::internal {
namespace {

// Optimal string alignment distance: insertions, deletions, substitutions and transpositions of
// neighbours each cost 1.
size_t EditDistance(std::string_view a, std::string_view b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[n][m];
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

bool AllDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), IsDigit);
}

// [-+]? digits ( . digits? )? ( [eE] [-+]? digits )?  or  [-+]? . digits (...)?
bool LooksLikeDecimalFloat(std::string_view s) {
  size_t i = 0;
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
  size_t int_digits = 0, frac_digits = 0;
  while (i < s.size() && IsDigit(s[i])) ++i, ++int_digits;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && IsDigit(s[i])) ++i, ++frac_digits;
  }
  if (int_digits + frac_digits == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    size_t exp_digits = 0;
    while (i < s.size() && IsDigit(s[i])) ++i, ++exp_digits;
    if (exp_digits == 0) return false;
  }
  return i == s.size();
}

// Well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF).
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;
    for (size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

Status NotUtf8(const YamlSource& source, const YAML::Node& node, std::string_view path) {
  return source.Error(node, path, "is not valid UTF-8");
}

bool IsNullWord(std::string_view s) {
  return s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL";
}

// Strings the dump can write without quotes and read back as the same string.
bool IsSafePlainString(const std::string& s) {
  if (s.empty() || IsNullWord(s)) return false;
  auto ok_first = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '/';
  };
  auto ok_rest = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '/' ||
           c == '-' || c == '+' || c == '@' || c == ':';
  };
  if (!ok_first(s.front()) || s.back() == ':') return false;
  if (!std::all_of(s.begin() + 1, s.end(), ok_rest)) return false;
  return PlainScalarToJson(s).is_string();
}

Result<nlohmann::json> YamlToJsonImpl(const YamlSource& source, const YAML::Node& node,
                                      const std::string& path, size_t depth, size_t* nodes) {
  if (++*nodes > kMaxJsonNodes) {
    return MakeError(source.Error(
        node, path, fmt::format("more than {} values (too many aliases?)", kMaxJsonNodes)));
  }
  if (depth > kMaxJsonDepth) {
    return MakeError(
        source.Error(node, path, fmt::format("nested more than {} levels deep", kMaxJsonDepth)));
  }
  if (!node.IsDefined() || node.IsNull()) return nlohmann::json(nullptr);
  if (node.IsScalar()) {
    if (!IsValidUtf8(node.Scalar())) return MakeError(NotUtf8(source, node, path));
    if (node.Tag() == "?") return PlainScalarToJson(node.Scalar());
    return nlohmann::json(node.Scalar());
  }
  if (node.IsSequence()) {
    nlohmann::json array = nlohmann::json::array();
    size_t i = 0;
    for (const YAML::Node& item : node) {
      KVT_ASSIGN_OR_RETURN(
          nlohmann::json value,
          YamlToJsonImpl(source, item, fmt::format("{}[{}]", path, i), depth + 1, nodes));
      array.push_back(std::move(value));
      ++i;
    }
    return array;
  }
  if (node.IsMap()) {
    nlohmann::json object = nlohmann::json::object();
    for (auto it = node.begin(); it != node.end(); ++it) {
      const YAML::Node key = it->first;  // a copy: it->first lives in a temporary
      if (!key.IsScalar()) {
        return MakeError(source.Error(
            key, path, fmt::format("keys must be strings, got {}", NodeKindName(key))));
      }
      const std::string& name = key.Scalar();
      if (!IsValidUtf8(name)) return MakeError(NotUtf8(source, key, path));
      if (object.contains(name)) {
        return MakeError(
            source.Error(key, "", fmt::format("duplicate key '{}'", JoinPath(path, name))));
      }
      KVT_ASSIGN_OR_RETURN(
          nlohmann::json value,
          YamlToJsonImpl(source, it->second, JoinPath(path, name), depth + 1, nodes));
      object[name] = std::move(value);
    }
    return object;
  }
  return MakeError(source.Error(node, path, "unsupported YAML node"));
}

}  // namespace

Status YamlSource::Error(const YAML::Mark& mark, std::string_view path,
                         std::string_view what) const {
  std::string where = name_;
  if (!mark.is_null() && mark.line >= 0) {
    where += fmt::format(":{}:{}", mark.line + 1, mark.column + 1);
  }
  if (path.empty()) return Status::InvalidArgument(fmt::format("{}: {}", where, what));
  return Status::InvalidArgument(fmt::format("{}: {}: {}", where, path, what));
}

std::string JoinPath(std::string_view parent, std::string_view key) {
  if (parent.empty()) return std::string(key);
  return fmt::format("{}.{}", parent, key);
}

std::string ClosestMatch(std::string_view word, std::span<const std::string> choices) {
  const std::string w = Lower(word);
  const size_t max_distance = w.size() < 5 ? 1 : (w.size() < 10 ? 2 : 3);
  std::string best;
  size_t best_distance = max_distance + 1;
  for (const std::string& choice : choices) {
    const size_t d = EditDistance(w, Lower(choice));
    if (d < best_distance) {
      best_distance = d;
      best = choice;
    }
  }
  if (!best.empty()) return best;
  // "capacity_bytes" for "capacity", "endpoint_list" for "endpoints": a shared prefix.
  for (const std::string& choice : choices) {
    const std::string c = Lower(choice);
    const size_t shorter = std::min(c.size(), w.size());
    if (shorter >= 4 && c.compare(0, shorter, w, 0, shorter) == 0) return choice;
  }
  return "";
}

std::string DidYouMean(std::string_view word, std::span<const std::string> choices,
                       std::string_view prefix) {
  std::string match = ClosestMatch(word, choices);
  if (match.empty()) return "";
  return fmt::format("; did you mean '{}'?", JoinPath(prefix, match));
}

std::string_view NodeKindName(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) return "null";
  if (node.IsMap()) return "a mapping";
  if (node.IsSequence()) return "a sequence";
  return "a scalar";
}

nlohmann::json PlainScalarToJson(const std::string& text) {
  if (text == "true" || text == "True" || text == "TRUE") return true;
  if (text == "false" || text == "False" || text == "FALSE") return false;
  std::string_view s = text;
  const bool plus = !s.empty() && s.front() == '+';
  if (plus) s.remove_prefix(1);
  const bool minus = !plus && !s.empty() && s.front() == '-';
  if (AllDigits(minus ? s.substr(1) : s)) {
    int64_t i = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), i);
    if (ec == std::errc() && p == s.data() + s.size()) return i;
    uint64_t u = 0;
    auto [pu, ecu] = std::from_chars(s.data(), s.data() + s.size(), u);
    if (ecu == std::errc() && pu == s.data() + s.size()) return u;
  }
  if (!plus && LooksLikeDecimalFloat(s)) {
    double d = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
    if (ec == std::errc() && p == s.data() + s.size() && std::isfinite(d)) return d;
  }
  return text;
}

Result<nlohmann::json> YamlToJson(const YamlSource& source, const YAML::Node& node,
                                  const std::string& path) {
  size_t nodes = 0;
  return YamlToJsonImpl(source, node, path, 0, &nodes);
}

void EmitString(YAML::Emitter& out, const std::string& s) {
  if (IsSafePlainString(s)) {
    out << s;
  } else {
    out << YAML::DoubleQuoted << s;
  }
}

void EmitJson(YAML::Emitter& out, const nlohmann::json& json) {
  switch (json.type()) {
    case nlohmann::json::value_t::object:
      out << YAML::BeginMap;
      for (const auto& [key, value] : json.items()) {
        out << YAML::Key;
        EmitString(out, key);
        out << YAML::Value;
        EmitJson(out, value);
      }
      out << YAML::EndMap;
      break;
    case nlohmann::json::value_t::array:
      out << YAML::BeginSeq;
      for (const auto& value : json) EmitJson(out, value);
      out << YAML::EndSeq;
      break;
    case nlohmann::json::value_t::string:
      EmitString(out, json.get<std::string>());
      break;
    case nlohmann::json::value_t::boolean:
      out << (json.get<bool>() ? "true" : "false");
      break;
    case nlohmann::json::value_t::number_integer:
      out << json.get<int64_t>();
      break;
    case nlohmann::json::value_t::number_unsigned:
      out << json.get<uint64_t>();
      break;
    case nlohmann::json::value_t::number_float:
      out << FormatDoubleForYaml(json.get<double>());
      break;
    default:  // null, binary, discarded
      out << YAML::Null;
      break;
  }
}

std::string FormatSizeForYaml(uint64_t bytes) {
  static constexpr struct {
    uint64_t factor;
    std::string_view name;
  } kUnits[] = {{kTiB, "TiB"}, {kGiB, "GiB"}, {kMiB, "MiB"}, {kKiB, "KiB"}};
  for (const auto& unit : kUnits) {
    if (bytes >= unit.factor && bytes % unit.factor == 0) {
      return fmt::format("{}{}", bytes / unit.factor, unit.name);
    }
  }
  return fmt::format("{}", bytes);
}

std::string FormatDoubleForYaml(double value) {
  std::string s = fmt::format("{}", value);
  if (std::isfinite(value) && s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

Result<uint64_t> ParseUnsigned(std::string_view text, uint64_t max) {
  if (!text.empty() && text.front() == '-') {
    return MakeError(Status::InvalidArgument(fmt::format("must not be negative, got '{}'", text)));
  }
  uint64_t value = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (!AllDigits(text) || p != text.data() + text.size()) {
    return MakeError(
        Status::InvalidArgument(fmt::format("expected a non-negative integer, got '{}'", text)));
  }
  if (ec != std::errc() || value > max) {
    return MakeError(
        Status::InvalidArgument(fmt::format("must be at most {}, got '{}'", max, text)));
  }
  return value;
}

Result<uint64_t> ParseSizeValue(std::string_view text) {
  if (!text.empty() && text.front() == '-') {
    return MakeError(Status::InvalidArgument(
        fmt::format("a size must not be negative, got '{}' (use e.g. 20GiB)", text)));
  }
  // Plain bytes exactly (ParseSize computes through a double).
  if (AllDigits(text)) return ParseUnsigned(text, UINT64_MAX);
  return ParseSize(text);
}

Result<Duration> ParseDurationValue(std::string_view text) {
  if (!text.empty() && text.front() == '-') {
    return MakeError(Status::InvalidArgument(
        fmt::format("a duration must not be negative, got '{}' (use e.g. 30s)", text)));
  }
  return ParseDuration(text);
}

Result<double> ParseDoubleValue(std::string_view text) {
  double value = 0;
  if (LooksLikeDecimalFloat(text) && text.front() != '+') {
    auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec == std::errc() && p == text.data() + text.size() && std::isfinite(value)) {
      return value;
    }
  }
  return MakeError(Status::InvalidArgument(fmt::format("expected a number, got '{}'", text)));
}

Result<bool> ParseBoolValue(std::string_view text) {
  if (text == "true" || text == "True" || text == "TRUE") return true;
  if (text == "false" || text == "False" || text == "FALSE") return false;
  return MakeError(Status::InvalidArgument(fmt::format("expected true or false, got '{}'", text)));
}

Result<MapReader> MapReader::Open(const YamlSource* source, const YAML::Node& node,
                                  std::string path) {
  MapReader reader(source, node, std::move(path));
  if (!node.IsDefined() || node.IsNull()) return reader;
  if (!node.IsMap()) {
    return MakeError(source->Error(node, reader.path_,
                                   fmt::format("expected a mapping, got {}", NodeKindName(node))));
  }
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;  // a copy: it->first lives in a temporary
    if (!key.IsScalar()) {
      return MakeError(source->Error(
          key, reader.path_, fmt::format("keys must be strings, got {}", NodeKindName(key))));
    }
    const std::string& name = key.Scalar();
    if (std::find(reader.keys_.begin(), reader.keys_.end(), name) != reader.keys_.end()) {
      return MakeError(
          source->Error(key, "", fmt::format("duplicate key '{}'", JoinPath(reader.path_, name))));
    }
    reader.keys_.push_back(name);
    reader.values_.push_back(it->second);
    reader.key_marks_.push_back(key.Mark());
  }
  return reader;
}

const YAML::Node* MapReader::Find(std::string_view key) const {
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (keys_[i] == key) return &values_[i];
  }
  return nullptr;
}

YAML::Mark MapReader::KeyMark(std::string_view key) const {
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (keys_[i] == key) return key_marks_[i];
  }
  return node_.Mark();
}

YAML::Node MapReader::Get(std::string_view key) {
  if (std::find(known_.begin(), known_.end(), key) == known_.end()) known_.emplace_back(key);
  const YAML::Node* value = Find(key);
  return value != nullptr ? *value : YAML::Node();
}

bool MapReader::Has(std::string_view key) const {
  const YAML::Node* value = Find(key);
  return value != nullptr && value->IsDefined() && !value->IsNull();
}

Status MapReader::ErrorAt(std::string_view key, std::string_view what) const {
  const YAML::Node* value = Find(key);
  const YAML::Mark mark = value != nullptr ? value->Mark() : node_.Mark();
  return source_->Error(mark, PathOf(key), what);
}

Status MapReader::Check(std::string_view key, const Status& status) const {
  if (status.ok() || !Has(key)) return Status::OK();
  return ErrorAt(key, status.message());
}

Result<std::string> MapReader::Scalar(std::string_view key, std::string_view expected) const {
  const YAML::Node* value = Find(key);
  if (!value->IsScalar()) {
    return MakeError(
        ErrorAt(key, fmt::format("expected {}, got {}", expected, NodeKindName(*value))));
  }
  if (!IsValidUtf8(value->Scalar())) return MakeError(ErrorAt(key, "is not valid UTF-8"));
  return value->Scalar();
}

Status MapReader::String(std::string_view key, std::string* out) {
  Get(key);
  if (!Has(key)) return Status::OK();
  KVT_ASSIGN_OR_RETURN(*out, Scalar(key, "a string"));
  return Status::OK();
}

Status MapReader::Bool(std::string_view key, bool* out) {
  Get(key);
  if (!Has(key)) return Status::OK();
  KVT_ASSIGN_OR_RETURN(std::string text, Scalar(key, "true or false"));
  Result<bool> value = ParseBoolValue(text);
  if (!value) return ErrorAt(key, value.error().message());
  *out = *value;
  return Status::OK();
}

Status MapReader::Unsigned(std::string_view key, uint64_t max, uint64_t* out) {
  Get(key);
  if (!Has(key)) return Status::OK();
  KVT_ASSIGN_OR_RETURN(std::string text, Scalar(key, "a non-negative integer"));
  Result<uint64_t> value = ParseUnsigned(text, max);
  if (!value) return ErrorAt(key, value.error().message());
  *out = *value;
  return Status::OK();
}

Status MapReader::Size(std::string_view key, uint64_t* out) {
  Get(key);
  if (!Has(key)) return Status::OK();
  KVT_ASSIGN_OR_RETURN(std::string text, Scalar(key, "a size such as 20GiB"));
  Result<uint64_t> value = ParseSizeValue(text);
  if (!value) return ErrorAt(key, value.error().message());
  *out = *value;
  return Status::OK();
}

Status MapReader::Duration(std::string_view key, kvtier::Duration* out) {
  Get(key);
  if (!Has(key)) return Status::OK();
  KVT_ASSIGN_OR_RETURN(std::string text, Scalar(key, "a duration such as 30s"));
  Result<kvtier::Duration> value = ParseDurationValue(text);
  if (!value) return ErrorAt(key, value.error().message());
  *out = *value;
  return Status::OK();
}

Status MapReader::Double(std::string_view key, double* out) {
  Get(key);
  if (!Has(key)) return Status::OK();
  KVT_ASSIGN_OR_RETURN(std::string text, Scalar(key, "a number"));
  Result<double> value = ParseDoubleValue(text);
  if (!value) return ErrorAt(key, value.error().message());
  *out = *value;
  return Status::OK();
}

Status MapReader::StringList(std::string_view key, std::vector<std::string>* out) {
  YAML::Node value = Get(key);
  if (!Has(key)) return Status::OK();
  if (value.IsScalar()) {
    if (!IsValidUtf8(value.Scalar())) return ErrorAt(key, "is not valid UTF-8");
    *out = {value.Scalar()};
    return Status::OK();
  }
  if (!value.IsSequence()) {
    return ErrorAt(key, fmt::format("expected a list of strings, got {}", NodeKindName(value)));
  }
  std::vector<std::string> items;
  size_t i = 0;
  for (const YAML::Node& item : value) {
    if (!item.IsScalar()) {
      return source_->Error(item, fmt::format("{}[{}]", PathOf(key), i),
                            fmt::format("expected a string, got {}", NodeKindName(item)));
    }
    if (!IsValidUtf8(item.Scalar())) {
      return NotUtf8(*source_, item, fmt::format("{}[{}]", PathOf(key), i));
    }
    items.push_back(item.Scalar());
    ++i;
  }
  *out = std::move(items);
  return Status::OK();
}

Status MapReader::Finish() const {
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (std::find(known_.begin(), known_.end(), keys_[i]) != known_.end()) continue;
    std::string valid;
    for (const std::string& k : known_) valid += (valid.empty() ? "" : ", ") + k;
    return source_->Error(
        key_marks_[i], "",
        fmt::format("unknown key '{}'{} (valid keys {}: {})", PathOf(keys_[i]),
                    DidYouMean(keys_[i], known_, path_),
                    path_.empty() ? "at the top level" : fmt::format("in '{}'", path_), valid));
  }
  return Status::OK();
}

namespace {

// Ignores every parser event but document starts, and remembers where a second one begins.
class DocumentStarts final : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override {
    if (count_++ == 1) second_ = mark;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

  const YAML::Mark& second() const { return second_; }

 private:
  int count_ = 0;
  YAML::Mark second_ = YAML::Mark::null_mark();
};

// Whether the text holds a second YAML document, and where it starts. YAML::LoadAll is not
// used: on some malformed inputs yaml-cpp 0.7's parser reports a new, empty document forever
// without consuming input, and LoadAll then grows its vector until memory runs out (found by
// config_fuzzer). Asking for at most two documents is bounded whatever the parser does.
std::optional<YAML::Mark> SecondDocument(const std::string& text) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentStarts starts;
  if (!parser.HandleNextDocument(starts) || !parser.HandleNextDocument(starts)) {
    return std::nullopt;
  }
  return starts.second();
}

}  // namespace

Result<YAML::Node> LoadOneDocument(const YamlSource& source, std::string_view yaml_text) {
  const std::string text(yaml_text);
  if (std::optional<YAML::Mark> second = SecondDocument(text)) {
    return MakeError(source.Error(*second, "", "expected one YAML document, found more"));
  }
  // A second parse: yaml-cpp builds nodes only through YAML::Load (its NodeBuilder is not
  // public). Config files are small and read once, at start-up.
  return YAML::Load(text);
}

Result<std::string> ReadConfigFile(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) {
    return MakeError(Status::NotFound(fmt::format("config file '{}' does not exist", path)));
  }
  if (!std::filesystem::is_regular_file(status)) {
    return MakeError(Status::InvalidArgument(fmt::format("config file '{}' is not a file", path)));
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) {
    return MakeError(Status::IOError(fmt::format("cannot read config file '{}'", path)));
  }
  return text.str();
}

}  // namespace kvtier::config::internal
