#include "kvtier/admin/prometheus.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>

namespace kvtier::admin {
namespace {

bool IsNameStart(char c, bool allow_colon) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':');
}
bool IsNameChar(char c, bool allow_colon) {
  return IsNameStart(c, allow_colon) || (c >= '0' && c <= '9');
}
bool IsValidName(std::string_view name, bool allow_colon) {
  if (name.empty() || !IsNameStart(name[0], allow_colon)) return false;
  return std::all_of(name.begin() + 1, name.end(),
                     [allow_colon](char c) { return IsNameChar(c, allow_colon); });
}

// Label values escape backslash, double quote and newline; HELP text only the first and last.
std::string Escape(std::string_view text, bool quote) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

}  // namespace

bool IsValidMetricName(std::string_view name) { return IsValidName(name, /*allow_colon=*/true); }
bool IsValidLabelName(std::string_view name) { return IsValidName(name, /*allow_colon=*/false); }

std::string FormatPrometheusValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // Every integral double below 2^63 converts exactly (and -0 prints as "0").
  if (value == std::trunc(value) && std::fabs(value) < 9.2e18) {
    return std::to_string(static_cast<int64_t>(value));
  }
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  return ec == std::errc() ? std::string(buf, end) : "NaN";  // 64 bytes always suffice
}

void PrometheusWriter::Counter(std::string_view name, std::string_view help, double value,
                               const PrometheusLabels& labels) {
  Add(Type::kCounter, name, help, value, labels);
}

void PrometheusWriter::Gauge(std::string_view name, std::string_view help, double value,
                             const PrometheusLabels& labels) {
  Add(Type::kGauge, name, help, value, labels);
}

void PrometheusWriter::Reject(Status why) {
  ++rejected_;
  last_error_ = std::move(why);
}

bool PrometheusWriter::RenderLabels(std::string_view name, const PrometheusLabels& labels,
                                    std::string* rendered, std::string* series_key) {
  rendered->clear();
  for (size_t i = 0; i < labels.size(); ++i) {
    const std::string& label = labels[i].first;
    if (!IsValidLabelName(label) || label.starts_with("__") || label == "le") {
      Reject(Status::InvalidArgument("metric " + Quoted(name) + ": invalid label name " +
                                     Quoted(label)));
      return false;
    }
    for (size_t j = 0; j < i; ++j) {
      if (labels[j].first == label) {
        Reject(Status::InvalidArgument("metric " + Quoted(name) + ": label " + Quoted(label) +
                                       " given twice"));
        return false;
      }
    }
    *rendered += rendered->empty() ? "{" : ",";
    *rendered += label + "=\"" + Escape(labels[i].second, /*quote=*/true) + "\"";
  }
  if (!rendered->empty()) *rendered += "}";
  // The same series may come with its labels in another order: compare sorted label sets.
  PrometheusLabels sorted = labels;
  std::sort(sorted.begin(), sorted.end());
  series_key->clear();
  for (const auto& [label, label_value] : sorted) {
    *series_key += label + "=\"" + Escape(label_value, /*quote=*/true) + "\",";
  }
  return true;
}

PrometheusWriter::Family* PrometheusWriter::FamilyFor(Type type, std::string_view name,
                                                      std::string_view help,
                                                      const std::string& series_key,
                                                      const std::string& rendered) {
  auto it = families_.find(name);
  if (it == families_.end()) {
    it = families_.emplace(std::string(name), Family{type, Escape(help, /*quote=*/false), {}, {}})
             .first;
    order_.emplace_back(name);
  } else if (it->second.type != type) {
    Reject(Status::InvalidArgument("metric " + Quoted(name) + " is already a " +
                                   TypeName(it->second.type)));
    return nullptr;
  }
  if (!it->second.series.insert(series_key).second) {
    Reject(Status::InvalidArgument("metric " + Quoted(name) + ": series " +
                                   (rendered.empty() ? "{}" : rendered) + " written twice"));
    return nullptr;
  }
  return &it->second;
}

const char* PrometheusWriter::TypeName(Type type) {
  switch (type) {
    case Type::kCounter:
      return "counter";
    case Type::kGauge:
      return "gauge";
    case Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

void PrometheusWriter::Add(Type type, std::string_view name, std::string_view help, double value,
                           const PrometheusLabels& labels) {
  if (!IsValidMetricName(name)) {
    return Reject(Status::InvalidArgument("invalid metric name " + Quoted(name)));
  }
  if (type == Type::kCounter && !(value >= 0)) {
    return Reject(Status::InvalidArgument("counter " + Quoted(name) + " must be >= 0, got " +
                                          FormatPrometheusValue(value)));
  }
  std::string rendered, series_key;
  if (!RenderLabels(name, labels, &rendered, &series_key)) return;
  Family* family = FamilyFor(type, name, help, series_key, rendered);
  if (family == nullptr) return;
  family->samples.push_back(std::string(name) + rendered + " " + FormatPrometheusValue(value));
}

void PrometheusWriter::Histogram(std::string_view name, std::string_view help,
                                 std::span<const double> upper_bounds,
                                 std::span<const uint64_t> cumulative, double sum,
                                 const PrometheusLabels& labels) {
  if (!IsValidMetricName(name)) {
    return Reject(Status::InvalidArgument("invalid metric name " + Quoted(name)));
  }
  if (cumulative.size() != upper_bounds.size() + 1) {
    return Reject(Status::InvalidArgument("histogram " + Quoted(name) +
                                          ": needs one count per bound plus +Inf"));
  }
  for (size_t i = 0; i < upper_bounds.size(); ++i) {
    if ((i > 0 && !(upper_bounds[i] > upper_bounds[i - 1])) || cumulative[i] > cumulative[i + 1]) {
      return Reject(Status::InvalidArgument(
          "histogram " + Quoted(name) + ": bounds must increase and counts must be cumulative"));
    }
  }
  std::string rendered, series_key;
  if (!RenderLabels(name, labels, &rendered, &series_key)) return;
  Family* family = FamilyFor(Type::kHistogram, name, help, series_key, rendered);
  if (family == nullptr) return;
  // {a="x"} -> {a="x",le="..."}; {} -> {le="..."}
  const std::string open = rendered.empty() ? "{" : rendered.substr(0, rendered.size() - 1) + ",";
  const std::string n(name);
  for (size_t i = 0; i <= upper_bounds.size(); ++i) {
    const std::string le =
        i < upper_bounds.size() ? FormatPrometheusValue(upper_bounds[i]) : "+Inf";
    family->samples.push_back(n + "_bucket" + open + "le=\"" + le + "\"} " +
                              FormatPrometheusValue(static_cast<double>(cumulative[i])));
  }
  family->samples.push_back(n + "_sum" + rendered + " " + FormatPrometheusValue(sum));
  family->samples.push_back(n + "_count" + rendered + " " +
                            FormatPrometheusValue(static_cast<double>(cumulative.back())));
}

std::string PrometheusWriter::Finish() {
  std::string out;
  for (const std::string& name : order_) {
    const Family& family = families_.at(name);
    if (!family.help.empty()) out += "# HELP " + name + " " + family.help + "\n";
    out += "# TYPE " + name + " " + TypeName(family.type) + "\n";
    for (const std::string& sample : family.samples) out += sample + "\n";
  }
  order_.clear();
  families_.clear();
  rejected_ = 0;
  last_error_ = Status::OK();
  return out;
}

namespace {

std::string SanitizeKey(std::string_view key) {
  std::string out(key);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    } else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
      c = '_';
    }
  }
  return out;
}

// An array of objects that each carry a string "name": one labelled sample per element.
bool IsLabelledSet(const nlohmann::json& node) {
  if (!node.is_array() || node.empty()) return false;
  return std::all_of(node.begin(), node.end(), [](const nlohmann::json& element) {
    if (!element.is_object()) return false;
    auto name = element.find("name");
    return name != element.end() && name->is_string();
  });
}

// `path` is the JSON path for the HELP text ("l1.used_bytes", "adapters[].reads").
void Flatten(PrometheusWriter& writer, const std::string& metric, const std::string& path,
             const nlohmann::json& node, const PrometheusLabels& labels) {
  auto child_path = [&path](std::string_view key) {
    return path.empty() ? std::string(key) : path + "." + std::string(key);
  };
  switch (node.type()) {
    case nlohmann::json::value_t::object:
      for (const auto& [key, child] : node.items()) {
        if (!labels.empty() && key == "name") continue;  // already the label
        Flatten(writer, metric + "_" + SanitizeKey(key), child_path(key), child, labels);
      }
      return;
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
    case nlohmann::json::value_t::number_float:
      writer.Gauge(metric, "kvtier status field " + path, node.get<double>(), labels);
      return;
    case nlohmann::json::value_t::boolean:
      writer.Gauge(metric, "kvtier status field " + path + " (1 = true)",
                   node.get<bool>() ? 1.0 : 0.0, labels);
      return;
    case nlohmann::json::value_t::array:
      if (!labels.empty() || !IsLabelledSet(node)) return;
      for (const nlohmann::json& element : node) {
        Flatten(writer, metric, path + "[]", element,
                {{"name", element["name"].get<std::string>()}});
      }
      return;
    default:  // strings, null, binary
      return;
  }
}

}  // namespace

void AppendJsonAsGauges(PrometheusWriter& writer, std::string_view prefix,
                        const nlohmann::json& tree) {
  Flatten(writer, std::string(prefix), "", tree, {});
}

}  // namespace kvtier::admin
