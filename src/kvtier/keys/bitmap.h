// Bitmap: a dynamic bit set used for per-key results (lookup hits, load successes).
// Bit i answers for the i-th key of a request; requests are ordered chunk-major, so
// CountLeadingOnes() is the length of the usable prefix.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvtier::keys {

class Bitmap {
 public:
  Bitmap() = default;
  explicit Bitmap(size_t size, bool value = false);

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // Keeps existing bits; new bits take `value`.
  void Resize(size_t size, bool value = false);

  // Index checks are KVT_DCHECKs: out-of-range access is a bug.
  void Set(size_t i, bool value = true);
  void Reset(size_t i) { Set(i, false); }
  bool Test(size_t i) const;
  void SetAll();
  void ResetAll();

  size_t PopCount() const;
  // Number of consecutive set bits starting at bit 0 (0 when bit 0 is clear).
  size_t CountLeadingOnes() const;
  bool All() const { return PopCount() == size_; }
  bool Any() const { return PopCount() != 0; }
  bool None() const { return !Any(); }
  // Indices of the set bits, ascending.
  std::vector<size_t> SetIndices() const;

  // Element-wise on equal sizes (KVT_CHECK on a size mismatch).
  Bitmap& operator&=(const Bitmap& other);
  Bitmap& operator|=(const Bitmap& other);
  // Complement within size().
  Bitmap operator~() const;

  // "1101..." with bit 0 first.
  std::string ToString() const;

  friend bool operator==(const Bitmap& a, const Bitmap& b);

 private:
  void ClearTail();
  std::vector<uint64_t> words_;
  size_t size_ = 0;
};

inline Bitmap operator&(Bitmap a, const Bitmap& b) { return a &= b; }
inline Bitmap operator|(Bitmap a, const Bitmap& b) { return a |= b; }

}  // namespace kvtier::keys
