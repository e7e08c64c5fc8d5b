// Hostile and malformed input: every failure is a clean protocol error naming the field, never a
// crash; truncated and mutated frames of every message type are rejected or decode to a message
// that round-trips.
#include <functional>
#include <random>

#include <gtest/gtest.h>
#include <msgpack.hpp>

#include "kvtier/controller/codec.h"
#include "kvtier/controller/codec_test_util.h"

namespace kvtier::controller {
namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;
using Value = std::function<void(Packer&)>;
using Fields = std::vector<std::pair<std::string, Value>>;

Value U(uint64_t v) {
  return [v](Packer& p) { p.pack_uint64(v); };
}
Value I(int64_t v) {
  return [v](Packer& p) { p.pack_int64(v); };
}
Value S(const std::string& s) {
  return [s](Packer& p) { p.pack(s); };
}
Value Nil() {
  return [](Packer& p) { p.pack_nil(); };
}
Value B(bool b) {
  return [b](Packer& p) { b ? p.pack_true() : p.pack_false(); };
}
// A bin of `bytes` bytes.
Value Bin(size_t bytes) {
  return [bytes](Packer& p) {
    const std::string raw(bytes, '\xab');
    p.pack_bin(static_cast<uint32_t>(bytes));
    p.pack_bin_body(raw.data(), static_cast<uint32_t>(bytes));
  };
}
Value Map(const Fields& fields) {
  return [fields](Packer& p) {
    p.pack_map(static_cast<uint32_t>(fields.size()));
    for (const auto& [key, value] : fields) {
      p.pack(key);
      value(p);
    }
  };
}
Value Array(const std::vector<Value>& values) {
  return [values](Packer& p) {
    p.pack_array(static_cast<uint32_t>(values.size()));
    for (const auto& v : values) v(p);
  };
}

Fields With(Fields fields, const std::string& key, Value value) {
  for (auto& [k, v] : fields) {
    if (k == key) {
      v = std::move(value);
      return fields;
    }
  }
  fields.emplace_back(key, std::move(value));
  return fields;
}
Fields Without(Fields fields, const std::string& key) {
  std::erase_if(fields, [&](const auto& f) { return f.first == key; });
  return fields;
}

std::vector<uint8_t> Frame(MessageType type, const std::vector<uint8_t>& body, uint8_t flags = 0) {
  std::vector<uint8_t> out = EncodeHeader(Header{.flags = flags, .type = type, .request_id = 1});
  out.insert(out.end(), body.begin(), body.end());
  return out;
}
std::vector<uint8_t> Frame(MessageType type, const Value& body, uint8_t flags = 0) {
  msgpack::sbuffer buffer;
  Packer p(buffer);
  body(p);
  return Frame(type, std::vector<uint8_t>(buffer.data(), buffer.data() + buffer.size()), flags);
}

Fields Group() {
  return {{"model", S("m")}, {"cache_salt", S("")},  {"world_size", U(2)},
          {"rank", U(1)},    {"object_group", U(0)}, {"hashes", Bin(64)}};
}
Fields Admit(std::vector<Value> groups = {Map(Group())}) {
  return {{"instance_id", S("node-a")}, {"worker_id", U(0)}, {"registration_id", U(9)},
          {"location", S("L1")},        {"seq", U(1)},       {"groups", Array(std::move(groups))}};
}

// Decodes `frame` as its header's class and returns the error (OK if it decoded).
Status DecodeError(const std::vector<uint8_t>& frame) {
  Result<Header> h = DecodeHeader(frame);
  if (!h) return h.error();
  if ((h->flags & kFlagReply) != 0) {
    auto r = DecodeReply(frame);
    return r ? Status::OK() : r.error();
  }
  if (IsEvent(h->type)) {
    auto r = DecodeEvent(frame);
    return r ? Status::OK() : r.error();
  }
  auto r = DecodeRequest(frame);
  return r ? Status::OK() : r.error();
}

#define EXPECT_REJECTED(frame, text)                                                   \
  do {                                                                                 \
    const Status s_ = DecodeError(frame);                                              \
    EXPECT_EQ(s_.code(), StatusCode::kProtocolError) << s_.ToString();                 \
    EXPECT_NE(s_.message().find(text), std::string::npos) << "got: " << s_.ToString(); \
  } while (0)

TEST(ControllerCodecHostileTest, ValidBaselineDecodes) {
  EXPECT_TRUE(DecodeError(Frame(MessageType::kAdmit, Map(Admit()))).ok());
}

TEST(ControllerCodecHostileTest, HashesMustBeWholeChunkHashes) {
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(Admit({Map(With(Group(), "hashes", Bin(33)))}))),
                  "field 'groups[0].hashes' is 33 bytes, not a multiple of 32");
  EXPECT_REJECTED(
      Frame(MessageType::kAdmit, Map(Admit({Map(Group()), Map(With(Group(), "hashes", S("x")))}))),
      "field 'groups[1].hashes' must be bin");
  EXPECT_REJECTED(Frame(MessageType::kFindKv, Map(With(Group(), "hash", Bin(64)))),
                  "field 'hash' holds 2 hashes");
  EXPECT_REJECTED(Frame(MessageType::kFindKv, Map(With(Group(), "hash", Bin(0)))),
                  "field 'hash' must be exactly one");
}

TEST(ControllerCodecHostileTest, KeyCountsAreBounded) {
  // Two groups of 2^15 + 1 keys: the message's limit is 2^16.
  const size_t half = kMaxKeysPerMessage / 2 + 1;
  EXPECT_REJECTED(
      Frame(MessageType::kAdmit, Map(Admit({Map(With(Group(), "hashes", Bin(32 * half))),
                                            Map(With(Group(), "hashes", Bin(32 * half)))}))),
      "field 'groups[1].hashes' holds 32769 hashes, more than the 32767 left");
  std::vector<Value> groups(kMaxKeyGroups + 1, Map(With(Group(), "hashes", Bin(0))));
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(Admit(groups))),
                  "field 'groups' has 1025 elements, the limit is 1024");
  EXPECT_REJECTED(Frame(MessageType::kLookup, Map(With(Without(Group(), "rank"), "hashes",
                                                       Bin(32 * (kMaxKeysPerMessage + 1))))),
                  "field 'hashes' holds 65537 hashes");
}

TEST(ControllerCodecHostileTest, WrongFieldTypesNameTheField) {
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(With(Admit(), "worker_id", S("0")))),
                  "field 'worker_id' must be an unsigned integer, got str");
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(With(Admit(), "seq", I(-5)))),
                  "field 'seq' must be in [1, 18446744073709551615], got -5");
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(With(Admit(), "seq", U(0)))), "field 'seq'");
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(With(Admit(), "registration_id", U(0)))),
                  "field 'registration_id' must be in [1,");
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(With(Admit(), "worker_id", U(1ULL << 32)))),
                  "field 'worker_id' must be in [0, 4294967295]");
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(With(Admit(), "groups", Map({})))),
                  "field 'groups' must be an array, got a map");
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(Admit({U(3)}))),
                  "field 'groups[0]' must be a map, got a non-negative integer");
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(Admit({Map(With(Group(), "rank", U(2)))}))),
                  "field 'groups[0].rank' must be in [0, 1], got 2");
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(Admit({Map(With(Group(), "world_size", U(0)))}))),
                  "field 'groups[0].world_size' must be in [1, 65535], got 0");
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(Admit({Map(Without(Group(), "model"))}))),
                  "missing required field 'groups[0].model'");
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(Without(Admit(), "location"))),
                  "missing required field 'location'");
  EXPECT_REJECTED(Frame(MessageType::kDeregister, Map(With(Admit(), "worker_id", Nil()))),
                  "field 'worker_id' must be an unsigned integer, got nil");
  EXPECT_REJECTED(Frame(MessageType::kDeregister, Map(With(Admit(), "worker_id", B(true)))),
                  "got bool");
}

TEST(ControllerCodecHostileTest, NamesAndIdsAreChecked) {
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(With(Admit(), "instance_id", S("node a")))),
                  "field 'instance_id' has byte 0x20 at offset 4");
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(With(Admit(), "instance_id", S("")))),
                  "field 'instance_id' must not be empty");
  EXPECT_REJECTED(
      Frame(MessageType::kAdmit, Map(With(Admit(), "location", S(std::string(65, 'x'))))),
      "field 'location' is 65 bytes, the limit is 64");
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(With(Admit(), "location", S("L\x01")))),
                  "has byte 0x01");
  EXPECT_REJECTED(Frame(MessageType::kAdmit, Map(Admit({Map(With(Group(), "model", S("a@b")))}))),
                  "field 'groups[0].model' must not contain '@'");
  EXPECT_REJECTED(
      Frame(MessageType::kAdmit, Map(Admit({Map(With(Group(), "model", S("bad\xc3\x28utf8")))}))),
      "field 'groups[0].model' is not valid UTF-8");
  EXPECT_REJECTED(
      Frame(MessageType::kAdmit, Map(Admit({Map(With(Group(), "cache_salt", S("a/b")))}))),
      "field 'groups[0].cache_salt' must not contain");
  EXPECT_REJECTED(
      Frame(MessageType::kAdmit,
            Map(Admit({Map(
                With(Group(), "model", S(std::string(keys::kMaxModelNameLength + 1, 'm'))))}))),
      "is 257 bytes, the limit is 256");
}

TEST(ControllerCodecHostileTest, AbsurdCountsAreRejected) {
  const Fields start = {{"instance_id", S("n")}, {"worker_id", U(0)}, {"registration_id", U(1)},
                        {"location", S("L1")},   {"sync_id", U(1)},   {"base_seq", U(0)},
                        {"total_batches", U(2)}, {"total_keys", U(3)}};
  EXPECT_TRUE(DecodeError(Frame(MessageType::kFullSyncStart, Map(start))).ok());
  EXPECT_REJECTED(
      Frame(MessageType::kFullSyncStart, Map(With(start, "total_batches", U(kMaxSyncBatches + 1)))),
      "field 'total_batches' must be in [0, 1048576]");
  EXPECT_REJECTED(Frame(MessageType::kFullSyncStart,
                        Map(With(start, "total_keys", U(2 * kMaxKeysPerMessage + 1)))),
                  "field 'total_keys' must be in [0, 131072]");
  EXPECT_REJECTED(Frame(MessageType::kFullSyncStart, Map(With(start, "sync_id", U(0)))),
                  "field 'sync_id'");
  const Fields status = {{"state", S("missing")},
                         {"total_batches", U(10)},
                         {"received_batches", U(8)},
                         {"missing_batches", Array({U(2), U(5)})},
                         {"reason", S("")}};
  EXPECT_TRUE(DecodeError(Frame(MessageType::kFullSyncStatus, Map(status), kFlagReply)).ok());
  EXPECT_REJECTED(Frame(MessageType::kFullSyncStatus,
                        Map(With(status, "missing_batches", Array({U(5), U(2)}))), kFlagReply),
                  "field 'missing_batches[1]' must be greater than the previous entry");
  EXPECT_REJECTED(Frame(MessageType::kFullSyncStatus,
                        Map(With(status, "missing_batches", Array({U(10)}))), kFlagReply),
                  "field 'missing_batches[0]' must be a batch index below total_batches (10)");
  EXPECT_REJECTED(
      Frame(MessageType::kFullSyncStatus,
            Map(With(status, "missing_batches", Array({U(1), U(2), U(3)}))), kFlagReply),
      "lists 3 batches, but only 2 of 10 are missing");
  EXPECT_REJECTED(
      Frame(MessageType::kFullSyncStatus, Map(With(status, "received_batches", U(11))), kFlagReply),
      "field 'received_batches' must be in [0, 10]");
  EXPECT_REJECTED(
      Frame(MessageType::kFullSyncStatus, Map(With(status, "state", S("done"))), kFlagReply),
      "field 'state' is 'done', expected one of");
}

TEST(ControllerCodecHostileTest, RequestRulesAreChecked) {
  const Fields reg = {{"instance_id", S("n")},
                      {"worker_id", U(0)},
                      {"address", S("")},
                      {"locations", Array({S("L1"), S("fs")})},
                      {"hash_algorithm", S("sha256")},
                      {"chunk_size", U(256)}};
  EXPECT_TRUE(DecodeError(Frame(MessageType::kRegister, Map(reg))).ok());
  EXPECT_REJECTED(Frame(MessageType::kRegister, Map(With(reg, "locations", Array({})))),
                  "field 'locations' must name at least one location");
  EXPECT_REJECTED(
      Frame(MessageType::kRegister, Map(With(reg, "locations", Array({S("L1"), S("L1")})))),
      "field 'locations[1]' repeats locations[0] ('L1')");
  EXPECT_REJECTED(Frame(MessageType::kRegister, Map(With(reg, "locations", Array({U(1)})))),
                  "field 'locations[0]' must be str");
  EXPECT_REJECTED(Frame(MessageType::kRegister, Map(With(reg, "chunk_size", U(0)))),
                  "field 'chunk_size' must be in [1, 1048576]");
  EXPECT_REJECTED(Frame(MessageType::kClear, Map({{"worker_id", U(1)}})),
                  "field 'worker_id' needs an instance_id");
  EXPECT_TRUE(DecodeError(Frame(MessageType::kClear, Map({}))).ok());
  const Fields hb = {
      {"instance_id", S("n")},
      {"worker_id", U(0)},
      {"registration_id", U(1)},
      {"locations",
       Array({Map({{"location", S("L1")}, {"last_seq", U(1)}, {"key_count", U(1)}}),
              Map({{"location", S("L1")}, {"last_seq", U(1)}, {"key_count", U(1)}})})}};
  EXPECT_REJECTED(Frame(MessageType::kHeartbeat, Map(hb)),
                  "field 'locations[1].location' repeats locations[0]");
  EXPECT_REJECTED(Frame(MessageType::kHeartbeat, Map(hb), kFlagReply), "HEARTBEAT reply");
  const Fields cmd = {{"controller_epoch", U(1)},
                      {"heartbeat_interval_ms", U(1000)},
                      {"commands", Array({Map({{"command", S("full_sync")}})})}};
  EXPECT_REJECTED(Frame(MessageType::kHeartbeat, Map(cmd), kFlagReply),
                  "field 'commands[0].location' is required by full_sync");
}

TEST(ControllerCodecHostileTest, BrokenStructureIsRejected) {
  const auto raw = [](std::initializer_list<int> bytes) {
    std::vector<uint8_t> out;
    for (int b : bytes) out.push_back(static_cast<uint8_t>(b));
    return Frame(MessageType::kPing, out);
  };
  EXPECT_REJECTED(Frame(MessageType::kPing, std::vector<uint8_t>{}), "empty body");
  EXPECT_REJECTED(raw({0x90}), "the body must be a msgpack map, got an array");
  EXPECT_REJECTED(raw({0x05}), "the body must be a msgpack map, got an integer");
  EXPECT_REJECTED(raw({0x80, 0x80}), "1 trailing bytes after the body map");
  EXPECT_REJECTED(raw({0x81, 0xa1, 'a'}), "truncated msgpack");
  EXPECT_REJECTED(raw({0xc1}), "malformed msgpack");
  EXPECT_REJECTED(raw({0x81, 0x01, 0x02}), "map keys must be str");
  // A duplicate of a field the message reads (duplicates of unknown fields are ignored).
  EXPECT_TRUE(DecodeError(raw({0x82, 0xa1, 'a', 0x01, 0xa1, 'a', 0x02})).ok());
  EXPECT_REJECTED(Frame(MessageType::kPing,
                        Map({{"controller_epoch", U(1)}, {"controller_epoch", U(2)}}), kFlagReply),
                  "field 'controller_epoch' appears more than once");
  // {"a": [[[[[[[[[ ...]]]]]]]]]}: deeper than 8 levels.
  std::vector<uint8_t> deep = {0x81, 0xa1, 'a'};
  for (int i = 0; i < 9; ++i) deep.push_back(0x91);
  deep.push_back(0x00);
  EXPECT_REJECTED(Frame(MessageType::kPing, deep), "nested deeper than 8 levels");
  // An array declaring 2^32 - 1 elements in a 20-byte body.
  EXPECT_REJECTED(raw({0x81, 0xa1, 'a', 0xdd, 0xff, 0xff, 0xff, 0xff, 1, 2}),
                  "more than the body's 10 bytes can hold");
  // A bin declaring 4 GiB.
  EXPECT_REJECTED(raw({0x81, 0xa1, 'a', 0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2}), "truncated msgpack");
  // Legitimate but too many elements for an event or request (each one byte: a nil).
  std::vector<uint8_t> many = {0x81, 0xa1, 'a', 0xdd, 0x00, 0x01, 0x00, 0x00};
  many.resize(many.size() + 65536, 0xc0);
  EXPECT_REJECTED(Frame(MessageType::kPing, many), "containers hold more than 32768 elements");
}

// Every prefix of every sample frame, and deterministic single-byte mutations, decode to an
// error or to a message that round-trips.
std::vector<std::vector<uint8_t>> AllSampleFrames() {
  std::vector<std::vector<uint8_t>> frames;
  for (const auto& [name, e] : testing::SampleEvents()) frames.push_back(EncodeEvent(e));
  for (const auto& [name, r] : testing::SampleRequests()) frames.push_back(EncodeRequest(1, r));
  const auto requests = testing::SampleRequests();
  const auto replies = testing::SampleReplies();
  for (size_t i = 0; i < requests.size(); ++i) {
    frames.push_back(EncodeReply(TypeOf(requests[i].second), 2, replies[i].second));
  }
  frames.push_back(EncodeReply(MessageType::kPing, 2, replies.back().second));
  return frames;
}

void CheckRoundTripOrError(const std::vector<uint8_t>& frame) {
  Result<Header> h = DecodeHeader(frame);
  if (!h) return;
  if ((h->flags & kFlagReply) != 0) {
    auto r = DecodeReply(frame);
    if (!r) {
      EXPECT_EQ(r.error().code(), StatusCode::kProtocolError) << r.error().ToString();
      return;
    }
    auto again = DecodeReply(EncodeReply(r->header.type, r->header.request_id, r->body));
    ASSERT_TRUE(again.has_value()) << again.error().ToString();
    EXPECT_EQ(again->body, r->body);
  } else if (IsEvent(h->type)) {
    auto e = DecodeEvent(frame);
    if (!e) {
      EXPECT_EQ(e.error().code(), StatusCode::kProtocolError) << e.error().ToString();
      return;
    }
    auto again = DecodeEvent(EncodeEvent(e->body));
    ASSERT_TRUE(again.has_value()) << again.error().ToString();
    EXPECT_EQ(again->body, e->body);
  } else {
    auto r = DecodeRequest(frame);
    if (!r) {
      EXPECT_EQ(r.error().code(), StatusCode::kProtocolError) << r.error().ToString();
      return;
    }
    auto again = DecodeRequest(EncodeRequest(r->header.request_id, r->body));
    ASSERT_TRUE(again.has_value()) << again.error().ToString();
    EXPECT_EQ(again->body, r->body);
  }
}

TEST(ControllerCodecHostileTest, TruncatedFramesAreRejected) {
  for (const auto& frame : AllSampleFrames()) {
    for (size_t cut = 0; cut < frame.size(); ++cut) {
      const std::vector<uint8_t> prefix(frame.begin(), frame.begin() + cut);
      EXPECT_FALSE(DecodeError(prefix).ok()) << "a " << cut << "-byte prefix decoded";
    }
  }
}

TEST(ControllerCodecHostileTest, MutatedFramesFailCleanlyOrRoundTrip) {
  std::mt19937 rng(7);
  for (const auto& frame : AllSampleFrames()) {
    for (size_t pos = 0; pos < frame.size(); ++pos) {
      std::vector<uint8_t> mutated = frame;
      mutated[pos] = static_cast<uint8_t>(rng());
      CheckRoundTripOrError(mutated);
    }
  }
}

}  // namespace
}  // namespace kvtier::controller
