// The Redis adapter's operations on its control connection: Delete (UNLINK) and ListKeys
// (SCAN, then STRLEN), and the SCAN pattern escaping they rely on.
#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "kvtier/common/logging.h"
#include "kvtier/l2/redis/redis_adapter.h"
#include "kvtier/l2/redis/redis_adapter_internal.h"
#include "kvtier/l2/redis/redis_value.h"

namespace kvtier::l2 {
using internal::ReplyText;
using internal::UnexpectedReply;

namespace {

// One ListKeys call scans for at most this long, then returns what it has (maybe nothing) and a
// cursor to go on from.
constexpr Duration kListKeysBudget = std::chrono::seconds(1);

// The object bytes of a stored value of `stored_length` bytes (header included).
uint64_t PayloadSize(int64_t stored_length) {
  return stored_length > static_cast<int64_t>(kRedisValueHeaderSize)
             ? static_cast<uint64_t>(stored_length) - kRedisValueHeaderSize
             : 0;
}

}  // namespace

Result<RedisConnection*> RedisAdapter::ControlConnection() {
  if (control_ != nullptr && !control_->broken()) return control_.get();
  control_.reset();
  KVT_ASSIGN_OR_RETURN(control_, RedisConnection::Connect(options_.connect));
  return control_.get();
}

Result<Bitmap> RedisAdapter::DoDelete(std::span<const ObjectKey> keys, bool force) {
  Bitmap deleted(keys.size());
  std::vector<size_t> candidates;
  {
    MutexLock lock(&locks_mu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      if (force || !locks_.IsLocked(keys[i])) candidates.push_back(i);
    }
  }
  if (candidates.empty()) return deleted;
  if (!DoHealthy()) return MakeError(DownError());
  const std::string endpoint = options_.connect.Endpoint();
  std::vector<ObjectKey> unlinked, absent;
  Status refused;  // the first error reply; every reply is read all the same
  Status io;       // a failed connection: the keys whose reply was not read stay counted
  size_t confirmed = 0;
  sync::WriterLock order(&order_);  // until the deletion has reported
  {
    MutexLock lock(&control_mu_);
    KVT_ASSIGN_OR_RETURN(RedisConnection * c, ControlConnection());
    for (size_t i : candidates) c->Append({"UNLINK", RedisKey(keys[i])});
    io = c->Flush();
    for (; io.ok() && confirmed < candidates.size(); ++confirmed) {
      const size_t i = candidates[confirmed];
      Result<RedisReply> reply = c->ReadReply();
      if (!reply) {
        io = reply.error();
        break;
      }
      if ((*reply)->type != REDIS_REPLY_INTEGER) {
        if (refused.ok()) {
          refused = (*reply)->type == REDIS_REPLY_ERROR
                        ? RedisErrorReplyStatus(endpoint, "UNLINK", ReplyText(**reply))
                        : UnexpectedReply(endpoint, "UNLINK", **reply);
        }
        continue;
      }
      deleted.Set(i);  // not stored any more: deleted now (1) or absent already (0)
      ((*reply)->integer == 1 ? unlinked : absent).push_back(keys[i]);
    }
  }
  // What is known gone leaves the accounts and the listeners' tracking, whatever failed after.
  ReportGone(unlinked, absent);
  if (!io.ok()) {
    {
      MutexLock lock(&health_mu_);
      last_error_ = io.ToString();
    }
    if (confirmed == 0)
      return MakeError(io.WithContext(fmt::format("redis adapter {}: Delete", name())));
    // The UNLINKs whose replies were not read may or may not have run: those keys keep a clear
    // bit and stay counted (a later Delete finds them absent and reports them then).
    KVT_LOG_WARN(
        "redis adapter {}: Delete: the connection failed after {} of {} replies: {}; the other "
        "keys are reported as still stored",
        name(), confirmed, candidates.size(), io.ToString());
    return deleted;
  }
  if (!refused.ok()) return MakeError(std::move(refused));
  return deleted;
}

// Cursor: "<scan cursor>" or, when one SCAN batch held more matches than a page,
// "<scan cursor>:<matches of that batch already returned>".
Result<KeyPage> RedisAdapter::DoListKeys(std::string_view model_name, size_t page_size,
                                         std::string_view cursor) {
  std::string scan_cursor = "0";
  size_t skip = 0;
  if (!cursor.empty()) {
    std::string_view c = cursor;
    size_t colon = c.find(':');
    std::string_view scan = c.substr(0, colon);
    std::string_view skip_text = colon == std::string_view::npos ? "" : c.substr(colon + 1);
    auto digits = [](std::string_view t) {
      return !t.empty() && t.size() <= 20 &&
             std::all_of(t.begin(), t.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    };
    if (!digits(scan) || (colon != std::string_view::npos && !digits(skip_text))) {
      return MakeError(Status::InvalidArgument(
          fmt::format("redis adapter {}: invalid ListKeys cursor '{}'", name(), cursor)));
    }
    scan_cursor = std::string(scan);
    if (!skip_text.empty()) skip = std::stoull(std::string(skip_text));
  }
  if (!DoHealthy()) return MakeError(DownError());
  const std::string endpoint = options_.connect.Endpoint();
  const std::string pattern =
      RedisGlobEscape(options_.key_prefix + std::string(model_name) + "@") + "*";
  // SCAN's COUNT is a hint of keys examined before MATCH: half a page keeps most batches whole.
  const std::string count = std::to_string(std::max<size_t>(1, page_size / 2));
  const TimePoint budget_end = std::chrono::steady_clock::now() + kListKeysBudget;

  MutexLock lock(&control_mu_);
  KVT_ASSIGN_OR_RETURN(RedisConnection * c, ControlConnection());
  std::vector<std::string> names;
  std::string next_cursor;
  for (;;) {
    KVT_ASSIGN_OR_RETURN(RedisReply reply,
                         c->Command({"SCAN", scan_cursor, "MATCH", pattern, "COUNT", count}));
    if (reply->type == REDIS_REPLY_ERROR) {
      return MakeError(RedisErrorReplyStatus(endpoint, "SCAN", ReplyText(*reply)));
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_ARRAY) {
      return MakeError(UnexpectedReply(endpoint, "SCAN", *reply));
    }
    std::string after(reply->element[0]->str, reply->element[0]->len);
    std::vector<std::string> batch;
    const redisReply* found = reply->element[1];
    for (size_t i = 0; i < found->elements; ++i) {
      if (found->element[i]->type == REDIS_REPLY_STRING) {
        batch.emplace_back(found->element[i]->str, found->element[i]->len);
      }
    }
    // A stable order, so that a batch split across pages resumes where it stopped.
    std::sort(batch.begin(), batch.end());
    batch.erase(std::unique(batch.begin(), batch.end()), batch.end());
    if (skip > 0) batch.erase(batch.begin(), batch.begin() + std::min(skip, batch.size()));
    if (names.size() + batch.size() > page_size) {
      if (names.empty()) {
        // One batch alone overflows the page: return part of it and resume inside it.
        size_t taken = page_size;
        names.assign(batch.begin(), batch.begin() + taken);
        next_cursor = fmt::format("{}:{}", scan_cursor, skip + taken);
      } else {
        next_cursor = scan_cursor;  // this batch goes whole onto the next page
      }
      break;
    }
    names.insert(names.end(), batch.begin(), batch.end());
    skip = 0;
    scan_cursor = std::move(after);
    if (scan_cursor == "0") break;  // the whole keyspace has been seen
    if (names.size() == page_size || std::chrono::steady_clock::now() >= budget_end) {
      next_cursor = scan_cursor;
      break;
    }
  }

  KeyPage page;
  page.next_cursor = std::move(next_cursor);
  for (const std::string& n : names) c->Append({"STRLEN", n});
  KVT_RETURN_IF_ERROR(c->Flush());
  for (const std::string& n : names) {
    KVT_ASSIGN_OR_RETURN(RedisReply reply, c->ReadReply());
    if (reply->type != REDIS_REPLY_INTEGER || reply->integer == 0) continue;  // gone meanwhile
    const std::string_view text = n;
    Result<ObjectKey> key = ObjectKey::Parse(text.substr(options_.key_prefix.size()));
    if (!key) continue;  // not a kvtier key: leave it alone
    page.keys.emplace_back(*key, PayloadSize(reply->integer));
  }
  return page;
}

std::string RedisGlobEscape(std::string_view literal) {
  std::string out;
  out.reserve(literal.size());
  for (char ch : literal) {
    if (ch == '*' || ch == '?' || ch == '[' || ch == ']' || ch == '\\') out.push_back('\\');
    out.push_back(ch);
  }
  return out;
}

}  // namespace kvtier::l2
