// Software prefetch for the CPU loops that stream parameter-sized tensors.
#pragma once

#include <cstdint>

namespace fused_accum {
namespace cpu {

// The hardware prefetchers alone leave a streaming loop waiting on DRAM, more
// so a bfloat16 Adam step, whose arithmetic per byte is twice float32's. Each
// stream asks for its data 2 KB ahead. Measured on a 124M-element Adam step
// with two threads: bfloat16 10-15% faster, float32 2-9%; 1 KB and 4 KB did
// about as well. Past a tensor's end the hint is harmless: prefetches never fault.
constexpr int64_t kPrefetchBytes = 2048;
constexpr int64_t kCacheLineBytes = 64;

template <typename T>
inline void prefetch_ahead(const T* at) {
  __builtin_prefetch(reinterpret_cast<const char*>(at) + kPrefetchBytes, /*rw=*/0,
                     /*locality=*/3);
}

}  // namespace cpu
}  // namespace fused_accum
