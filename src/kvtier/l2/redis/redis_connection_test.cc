// RedisConnection: the RESP bulk-header parser, and streaming bulk reads mixed with ordinary
// replies on one pipelined connection against a real redis-server.
#include "kvtier/l2/redis/redis_connection.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kvtier/l2/redis/redis_test_util.h"

namespace kvtier::l2 {
namespace {

using Kind = RespBulkHeader::Kind;

TEST(RespBulkHeaderTest, ParsesBulkLengths) {
  RespBulkHeader h = ParseRespBulkHeader("$5\r\nhello\r\n");
  EXPECT_EQ(h.kind, Kind::kBulk);
  EXPECT_EQ(h.length, 5u);
  EXPECT_EQ(h.header_size, 4u);
  h = ParseRespBulkHeader("$0\r\n\r\n");
  EXPECT_EQ(h.kind, Kind::kBulk);
  EXPECT_EQ(h.length, 0u);
  h = ParseRespBulkHeader("$536870912\r\n");
  EXPECT_EQ(h.kind, Kind::kBulk);
  EXPECT_EQ(h.length, 536870912u);
  EXPECT_EQ(h.header_size, 12u);
}

TEST(RespBulkHeaderTest, WaitsForACompleteLine) {
  for (const char* partial : {"", "$", "$12", "$12\r"}) {
    EXPECT_EQ(ParseRespBulkHeader(partial).kind, Kind::kNeedMore) << partial;
  }
}

TEST(RespBulkHeaderTest, LeavesOtherRepliesToHiredis) {
  for (const char* other : {"$-1\r\n", "$-", "-ERR x\r\n", "+OK\r\n", ":1\r\n", "*2\r\n"}) {
    EXPECT_EQ(ParseRespBulkHeader(other).kind, Kind::kOther) << other;
  }
}

TEST(RespBulkHeaderTest, RejectsMalformedLengths) {
  for (const char* bad :
       {"$\r\n", "$1x\r\n", "$ 1\r\n", "$1234567890123456789\r\n", "$123456789012345678901234"}) {
    EXPECT_EQ(ParseRespBulkHeader(bad).kind, Kind::kInvalid) << bad;
  }
}

class RedisConnectionTest : public redis_test::RedisServerTest {
 protected:
  std::unique_ptr<RedisConnection> Connect() {
    RedisConnectOptions o;
    o.port = server_->port();
    auto c = RedisConnection::Connect(o);
    EXPECT_TRUE(c) << c.error().ToString();
    return c ? std::move(*c) : nullptr;
  }
};

TEST_F(RedisConnectionTest, StreamsBulkRepliesBetweenOrdinaryOnes) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  // Values around hiredis's 16 KiB read size, and one far above it.
  const std::vector<size_t> sizes = {0, 1, 16383, 16384, 16385, 3 << 20};
  std::vector<std::vector<uint8_t>> values;
  for (size_t i = 0; i < sizes.size(); ++i) {
    values.push_back(redis_test::MakeObject(sizes[i], i));
    std::vector<uint8_t> header = {'h'};
    c->AppendSetNx(fmt::format("k{}", i), header, values.back());
  }
  ASSERT_TRUE(c->Flush().ok());
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto r = c->ReadReply();
    ASSERT_TRUE(r);
    EXPECT_EQ((*r)->type, REDIS_REPLY_STATUS);
  }
  // GET each, with a PING and a missing key between: all pipelined at once.
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::string key = fmt::format("k{}", i);
    c->Append({"GET", key});
    c->Append({"PING"});
    c->Append({"GET", "missing"});
  }
  ASSERT_TRUE(c->Flush().ok());
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto start = c->ReadBulkStart();
    ASSERT_TRUE(start) << start.error().ToString();
    ASSERT_TRUE(std::holds_alternative<uint64_t>(*start));
    ASSERT_EQ(std::get<uint64_t>(*start), sizes[i] + 1);
    uint8_t h;
    ASSERT_TRUE(c->ReadBulkBody(std::span(&h, 1)).ok());
    EXPECT_EQ(h, 'h');
    std::vector<uint8_t> got(sizes[i]);
    // Two pieces, to cross the boundary between buffered and socket bytes anywhere.
    size_t half = got.size() / 2;
    ASSERT_TRUE(c->ReadBulkBody(std::span(got).first(half)).ok());
    ASSERT_TRUE(c->ReadBulkBody(std::span(got).subspan(half)).ok());
    ASSERT_TRUE(c->FinishBulk().ok());
    EXPECT_TRUE(got == values[i]) << "value " << i;

    auto pong = c->ReadBulkStart();  // not a bulk string: parsed whole
    ASSERT_TRUE(pong);
    ASSERT_TRUE(std::holds_alternative<RedisReply>(*pong));
    EXPECT_EQ(std::string(std::get<RedisReply>(*pong)->str), "PONG");
    auto nil = c->ReadBulkStart();
    ASSERT_TRUE(nil);
    ASSERT_TRUE(std::holds_alternative<RedisReply>(*nil));
    EXPECT_EQ(std::get<RedisReply>(*nil)->type, REDIS_REPLY_NIL);
  }
  // Skipping a body keeps the stream in sync.
  c->Append({"GET", "k5"});
  c->Append({"PING"});
  ASSERT_TRUE(c->Flush().ok());
  auto start = c->ReadBulkStart();
  ASSERT_TRUE(start && std::holds_alternative<uint64_t>(*start));
  ASSERT_TRUE(c->SkipBulkBody(std::get<uint64_t>(*start)).ok());
  ASSERT_TRUE(c->FinishBulk().ok());
  auto pong = c->ReadReply();
  ASSERT_TRUE(pong);
  EXPECT_EQ(std::string((*pong)->str), "PONG");
  EXPECT_FALSE(c->broken());
}

TEST_F(RedisConnectionTest, ServerGoingAwayBreaksTheConnection) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(server_->Kill().ok());
  auto r = c->Command({"PING"});
  ASSERT_FALSE(r);
  EXPECT_TRUE(r.error().retryable());
  EXPECT_TRUE(c->broken());
  EXPECT_FALSE(c->Command({"PING"}));
}

TEST(RedisConnectionOpenTest, RefusedConnectionIsUnavailable) {
  RedisConnectOptions o;
  o.port = 1;  // nothing listens on port 1
  auto c = RedisConnection::Connect(o);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(c.error().retryable());
}

}  // namespace
}  // namespace kvtier::l2
