#include "kvtier/keys/bitmap.h"

#include <bit>

#include "kvtier/common/check.h"

namespace kvtier::keys {
namespace {

constexpr size_t kWordBits = 64;
constexpr uint64_t kAllOnes = ~uint64_t{0};

size_t NumWords(size_t bits) { return (bits + kWordBits - 1) / kWordBits; }

}  // namespace

Bitmap::Bitmap(size_t size, bool value)
    : words_(NumWords(size), value ? kAllOnes : 0), size_(size) {
  ClearTail();
}

void Bitmap::Resize(size_t size, bool value) {
  if (size > size_ && value && size_ % kWordBits != 0) {
    // The partial last word's tail is zero; fill it before the new words are appended.
    words_.back() |= kAllOnes << (size_ % kWordBits);
  }
  words_.resize(NumWords(size), value ? kAllOnes : 0);
  size_ = size;
  ClearTail();
}

void Bitmap::Set(size_t i, bool value) {
  KVT_DCHECK_MSG(i < size_, "bit {} out of range (size {})", i, size_);
  uint64_t mask = uint64_t{1} << (i % kWordBits);
  if (value) {
    words_[i / kWordBits] |= mask;
  } else {
    words_[i / kWordBits] &= ~mask;
  }
}

bool Bitmap::Test(size_t i) const {
  KVT_DCHECK_MSG(i < size_, "bit {} out of range (size {})", i, size_);
  return (words_[i / kWordBits] >> (i % kWordBits)) & 1;
}

void Bitmap::SetAll() {
  for (uint64_t& w : words_) w = kAllOnes;
  ClearTail();
}

void Bitmap::ResetAll() {
  for (uint64_t& w : words_) w = 0;
}

size_t Bitmap::PopCount() const {
  size_t n = 0;
  for (uint64_t w : words_) n += static_cast<size_t>(std::popcount(w));
  return n;
}

size_t Bitmap::CountLeadingOnes() const {
  // The tail is zero, so the scan never counts past size().
  size_t n = 0;
  for (uint64_t w : words_) {
    if (w != kAllOnes) return n + static_cast<size_t>(std::countr_one(w));
    n += kWordBits;
  }
  return n;
}

std::vector<size_t> Bitmap::SetIndices() const {
  std::vector<size_t> out;
  out.reserve(PopCount());
  for (size_t wi = 0; wi < words_.size(); ++wi) {
    for (uint64_t w = words_[wi]; w != 0; w &= w - 1) {
      out.push_back(wi * kWordBits + static_cast<size_t>(std::countr_zero(w)));
    }
  }
  return out;
}

Bitmap& Bitmap::operator&=(const Bitmap& other) {
  KVT_CHECK_MSG(size_ == other.size_, "bitmap size mismatch: {} vs {}", size_, other.size_);
  for (size_t i = 0; i < words_.size(); ++i) words_[i] &= other.words_[i];
  return *this;
}

Bitmap& Bitmap::operator|=(const Bitmap& other) {
  KVT_CHECK_MSG(size_ == other.size_, "bitmap size mismatch: {} vs {}", size_, other.size_);
  for (size_t i = 0; i < words_.size(); ++i) words_[i] |= other.words_[i];
  return *this;
}

Bitmap Bitmap::operator~() const {
  Bitmap out = *this;
  for (uint64_t& w : out.words_) w = ~w;
  out.ClearTail();
  return out;
}

std::string Bitmap::ToString() const {
  std::string s(size_, '0');
  for (size_t i = 0; i < size_; ++i) {
    if (Test(i)) s[i] = '1';
  }
  return s;
}

bool operator==(const Bitmap& a, const Bitmap& b) {
  // Tails are always zero, so equal bits mean equal words.
  return a.size_ == b.size_ && a.words_ == b.words_;
}

void Bitmap::ClearTail() {
  if (size_ % kWordBits != 0) words_.back() &= ~(kAllOnes << (size_ % kWordBits));
}

}  // namespace kvtier::keys
