// Dynamic scheduling over at::parallel_for, for kd_loss.cpp and gmm_prior.cpp
// (not for the ISA-specific files: it includes ATen).
#pragma once

#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>

namespace slimkit {
namespace cpu {

// Calls fn(b) for every block b in [0, nblocks), on the intra-op threads. Blocks
// are handed out one at a time from a shared counter rather than split into one
// fixed range per thread as at::parallel_for does: on a machine shared with other
// processes a descheduled thread then delays the op by at most one block instead
// of its whole share. Which thread runs a block does not change its result.
template <typename F>
void parallel_blocks(int64_t nblocks, const F& fn) {
  if (nblocks <= 0) return;
  const int64_t threads = at::get_num_threads();
  const int64_t workers = threads < nblocks ? threads : nblocks;
  if (workers <= 1 || at::in_parallel_region()) {
    for (int64_t b = 0; b < nblocks; ++b) fn(b);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t b = next.fetch_add(1, std::memory_order_relaxed); b < nblocks;
         b = next.fetch_add(1, std::memory_order_relaxed)) {
      fn(b);
    }
  });
}

}  // namespace cpu
}  // namespace slimkit
