// KeyTable and NodeList: the compact storage shared by the eviction policies (internal).
//
// A KeyTable maps keys to nodes addressed by 32-bit indices. Nodes live in fixed-size blocks
// that never move, and freed nodes are reused through a free list, so a node index stays valid
// until Erase(). The hash index holds only the 4-byte node index and reaches the key through the
// node (heterogeneous lookup), so a tracked ObjectKey costs about sizeof(Node) + ~6 bytes.
//
// Every node carries prev/next links: a NodeList threads a doubly linked list through the nodes
// of one table, and a node sits in at most one list at a time.
//
// A KeyTable holds a pointer to itself in its hash functors: it can be neither copied nor moved.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include <absl/container/flat_hash_set.h>

#include "kvtier/common/check.h"
#include "kvtier/keys/object_key.h"

namespace kvtier::eviction::internal {

inline constexpr uint32_t kNilIndex = std::numeric_limits<uint32_t>::max();

struct NoExtra {};

// A 32-bit summary of a key, for ghost lists that remember evicted keys without storing them. Two
// keys share one with probability 2^-32, which at worst misplaces a key as a ghost hit.
using Fingerprint = uint32_t;
inline Fingerprint FingerprintOf(const keys::ObjectKey& key) {
  return static_cast<Fingerprint>(key.Hash() >> 32);
}

// The hash a KeyTable indexes by.
inline size_t KeyHashOf(const keys::ObjectKey& key) { return key.Hash(); }
inline size_t KeyHashOf(Fingerprint fingerprint) {
  return static_cast<size_t>(fingerprint * 0x9e3779b97f4a7c15ULL);  // spread to 64 bits
}

// K: keys::ObjectKey or a Fingerprint. Extra: per-node policy state (empty costs
// nothing).
template <typename K, typename Extra = NoExtra>
class KeyTable {
 public:
  struct Node {
    K key{};
    uint32_t prev = kNilIndex;
    uint32_t next = kNilIndex;
    [[no_unique_address]] Extra extra{};
  };

  KeyTable() : index_(0, IndexHash{this}, IndexEq{this}) {}
  KeyTable(const KeyTable&) = delete;
  KeyTable& operator=(const KeyTable&) = delete;

  size_t size() const { return index_.size(); }

  // The node holding `key`, or kNilIndex.
  uint32_t Find(const K& key) const {
    auto it = index_.find(key);
    return it == index_.end() ? kNilIndex : it->index;
  }

  // Finds `key`, or adds an unlinked node for it with a value-initialised `extra`. Returns the
  // node and whether it was added.
  std::pair<uint32_t, bool> FindOrInsert(const K& key) {
    bool inserted = false;
    auto it = index_.lazy_emplace(key, [&](const auto& construct) {
      inserted = true;
      construct(Slot{Allocate(key)});
    });
    return {it->index, inserted};
  }

  // Takes `key` out of the index and returns its node, or kNilIndex. The node keeps its contents
  // (and its place in a list) until the caller unlinks it and calls Free().
  uint32_t Remove(const K& key) {
    auto it = index_.find(key);
    if (it == index_.end()) return kNilIndex;
    const uint32_t index = it->index;
    index_.erase(it);
    return index;
  }

  // Returns a node taken out by Remove() to the free list. It must be unlinked.
  void Free(uint32_t index) {
    Node& n = node(index);
    KVT_DCHECK(n.prev == kNilIndex && n.next == kNilIndex);
    n.next = free_head_;
    free_head_ = index;
  }

  // Remove() and Free() of an unlinked node.
  void Erase(uint32_t index) {
    [[maybe_unused]] const uint32_t removed = Remove(node(index).key);
    KVT_DCHECK(removed == index);
    Free(index);
  }

  Node& node(uint32_t index) { return blocks_[index >> kBlockShift][index & kBlockMask]; }
  const Node& node(uint32_t index) const {
    return blocks_[index >> kBlockShift][index & kBlockMask];
  }

  // Approximate heap bytes: node blocks (free nodes included) and the hash index.
  size_t MemoryBytes() const {
    return blocks_.size() * kBlockNodes * sizeof(Node) +
           blocks_.capacity() * sizeof(std::unique_ptr<Node[]>) +
           // absl's flat layout: one control byte per slot, plus a cloned group at the end.
           (index_.capacity() > 0 ? index_.capacity() * (sizeof(Slot) + 1) + 16 : 0);
  }

 private:
  static constexpr uint32_t kBlockShift = 12;
  static constexpr uint32_t kBlockNodes = 1u << kBlockShift;
  static constexpr uint32_t kBlockMask = kBlockNodes - 1;

  struct Slot {
    uint32_t index;
  };
  struct IndexHash {
    using is_transparent = void;
    const KeyTable* table;
    size_t operator()(Slot s) const { return KeyHashOf(table->node(s.index).key); }
    size_t operator()(const K& key) const { return KeyHashOf(key); }
  };
  struct IndexEq {
    using is_transparent = void;
    const KeyTable* table;
    bool operator()(Slot a, Slot b) const { return a.index == b.index; }
    bool operator()(Slot a, const K& key) const { return table->node(a.index).key == key; }
    bool operator()(const K& key, Slot a) const { return table->node(a.index).key == key; }
  };

  uint32_t Allocate(const K& key) {
    uint32_t index;
    if (free_head_ != kNilIndex) {
      index = free_head_;
      free_head_ = node(index).next;
    } else {
      KVT_CHECK_MSG(next_unused_ < kNilIndex, "eviction KeyTable is full ({} nodes)", next_unused_);
      if ((next_unused_ >> kBlockShift) == blocks_.size()) {
        blocks_.push_back(std::make_unique<Node[]>(kBlockNodes));
      }
      index = next_unused_++;
    }
    node(index) = Node{key, kNilIndex, kNilIndex, Extra{}};
    return index;
  }

  std::vector<std::unique_ptr<Node[]>> blocks_;
  uint32_t next_unused_ = 0;
  uint32_t free_head_ = kNilIndex;
  absl::flat_hash_set<Slot, IndexHash, IndexEq> index_;
};

// A doubly linked list over the nodes of one KeyTable. Front = oldest (evicted first), back =
// newest. The list stores no table pointer: every call names the table the nodes belong to.
class NodeList {
 public:
  uint32_t front() const { return front_; }
  uint32_t back() const { return back_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // `index` must not be in any list.
  template <typename Table>
  void PushBack(Table& table, uint32_t index) {
    auto& n = table.node(index);
    n.prev = back_;
    n.next = kNilIndex;
    if (back_ != kNilIndex) {
      table.node(back_).next = index;
    } else {
      front_ = index;
    }
    back_ = index;
    ++size_;
  }

  // `index` must be in this list.
  template <typename Table>
  void Unlink(Table& table, uint32_t index) {
    auto& n = table.node(index);
    if (n.prev != kNilIndex) {
      table.node(n.prev).next = n.next;
    } else {
      KVT_DCHECK(front_ == index);
      front_ = n.next;
    }
    if (n.next != kNilIndex) {
      table.node(n.next).prev = n.prev;
    } else {
      KVT_DCHECK(back_ == index);
      back_ = n.prev;
    }
    n.prev = kNilIndex;
    n.next = kNilIndex;
    KVT_DCHECK(size_ > 0);
    --size_;
  }

  template <typename Table>
  void MoveToBack(Table& table, uint32_t index) {
    if (back_ == index) return;
    Unlink(table, index);
    PushBack(table, index);
  }

  // Unlinks and returns the front node; kNilIndex when empty.
  template <typename Table>
  uint32_t PopFront(Table& table) {
    uint32_t index = front_;
    if (index != kNilIndex) Unlink(table, index);
    return index;
  }

 private:
  uint32_t front_ = kNilIndex;
  uint32_t back_ = kNilIndex;
  size_t size_ = 0;
};

}  // namespace kvtier::eviction::internal
