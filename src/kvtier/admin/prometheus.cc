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

void PrometheusWriter::Add(Type type, std::string_view name, std::string_view help, double value,
                           const PrometheusLabels& labels) {
  if (!IsValidMetricName(name)) {
    return Reject(Status::InvalidArgument("invalid metric name " + Quoted(name)));
  }
  if (type == Type::kCounter && !(value >= 0)) {
    return Reject(Status::InvalidArgument("counter " + Quoted(name) + " must be >= 0, got " +
                                          FormatPrometheusValue(value)));
  }
  std::string rendered;
  for (size_t i = 0; i < labels.size(); ++i) {
    const std::string& label = labels[i].first;
    if (!IsValidLabelName(label) || label.starts_with("__")) {
      return Reject(Status::InvalidArgument("metric " + Quoted(name) + ": invalid label name " +
                                            Quoted(label)));
    }
    for (size_t j = 0; j < i; ++j) {
      if (labels[j].first == label) {
        return Reject(Status::InvalidArgument("metric " + Quoted(name) + ": label " +
                                              Quoted(label) + " given twice"));
      }
    }
    rendered += rendered.empty() ? "{" : ",";
    rendered += label + "=\"" + Escape(labels[i].second, /*quote=*/true) + "\"";
  }
  if (!rendered.empty()) rendered += "}";

  // The same series may come with its labels in another order: compare sorted label sets.
  PrometheusLabels sorted = labels;
  std::sort(sorted.begin(), sorted.end());
  std::string series_key;
  for (const auto& [label, label_value] : sorted) {
    series_key += label + "=\"" + Escape(label_value, /*quote=*/true) + "\",";
  }

  auto it = families_.find(name);
  if (it == families_.end()) {
    it = families_.emplace(std::string(name), Family{type, Escape(help, /*quote=*/false), {}, {}})
             .first;
    order_.emplace_back(name);
  } else if (it->second.type != type) {
    return Reject(
        Status::InvalidArgument("metric " + Quoted(name) + " is already a " +
                                (it->second.type == Type::kCounter ? "counter" : "gauge")));
  }
  if (!it->second.series.insert(series_key).second) {
    return Reject(Status::InvalidArgument("metric " + Quoted(name) + ": series " +
                                          (rendered.empty() ? "{}" : rendered) + " written twice"));
  }
  it->second.samples.push_back(std::string(name) + rendered + " " + FormatPrometheusValue(value));
}

std::string PrometheusWriter::Finish() {
  std::string out;
  for (const std::string& name : order_) {
    const Family& family = families_.at(name);
    if (!family.help.empty()) out += "# HELP " + name + " " + family.help + "\n";
    out += "# TYPE " + name + (family.type == Type::kCounter ? " counter\n" : " gauge\n");
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
