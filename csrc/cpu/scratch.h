// Per-thread scratch memory that outlives a kernel call.
//
// The sparse kernels need a few hundred KB of working memory per call (the padded,
// phase-split input image, the per-tile stage). Allocating it per call costs more than
// the arithmetic at high sparsity: blocks that size come from mmap, so every call
// page-faults its buffer in again (measured: +30-45 % on a 95 %-sparse 3x3 128->128
// conv at batch 1). So each thread keeps one grow-only block per slot and reuses it;
// a request above kMaxCachedBytes gets a block of its own, freed after the call, so
// the cache never holds more than a few such blocks per thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace slimkit {

// The buffers one thread may hold at the same time during a call.
enum class ScratchSlot : int { input = 0, stage = 1, plan = 2, output = 3, offsets = 4, count = 5 };

class Scratch {
 public:
  static constexpr int64_t kMaxCachedBytes = int64_t(64) << 20;

  // At least `count` elements of T for the calling thread, valid until the next
  // Scratch for the same slot on this thread is created (or this one is destroyed,
  // for a block over kMaxCachedBytes). Contents are unspecified.
  // The memory starts on a cache line (kAlign): malloc's 16-byte alignment (a large block is
  // mmap'd at 16 past a page) put every other 32-byte vector load of the kernels across two
  // cache lines.
  static constexpr size_t kAlign = 64;

  template <typename T>
  static T* get(ScratchSlot slot, int64_t count, std::unique_ptr<unsigned char[]>& owned) {
    const size_t bytes = size_t(count > 0 ? count : 1) * sizeof(T) + kAlign;
    if (int64_t(bytes) > kMaxCachedBytes) {
      owned.reset(new unsigned char[bytes]);
      return aligned<T>(owned.get());
    }
    Block& b = blocks()[static_cast<int>(slot)];
    if (b.bytes < bytes) {
      b.mem.reset();  // free the old block before taking the larger one
      b.mem.reset(new unsigned char[bytes]);
      b.bytes = bytes;
    }
    return aligned<T>(b.mem.get());
  }

 private:
  template <typename T>
  static T* aligned(unsigned char* p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    return reinterpret_cast<T*>((a + kAlign - 1) / kAlign * kAlign);
  }

  struct Block {
    std::unique_ptr<unsigned char[]> mem;
    size_t bytes = 0;
  };
  static Block* blocks() {
    thread_local Block slots[static_cast<int>(ScratchSlot::count)];
    return slots;
  }
};

// Scratch memory of one slot for the duration of a scope.
template <typename T>
class ScratchBuffer {
 public:
  ScratchBuffer(ScratchSlot slot, int64_t count) : ptr_(Scratch::get<T>(slot, count, owned_)) {}
  T* data() const { return ptr_; }

 private:
  std::unique_ptr<unsigned char[]> owned_;
  T* ptr_;
};

}  // namespace slimkit
