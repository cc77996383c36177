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

// The same hint for element i of a tensor's stream that ends at `end`, where the
// loop goes on to the `next` tensor's stream (null: nothing follows). Near the
// end the hint points into the next tensor's start, which would otherwise arrive
// unasked: the hardware prefetchers stop at page boundaries. Measured over 2000
// float32 tensors of 1024 elements, a step went from 1.14-1.21 ms to 1.08-1.12.
template <typename T>
inline void prefetch_ahead(const T* stream, int64_t i, int64_t end, const T* next) {
  constexpr int64_t kAhead = kPrefetchBytes / static_cast<int64_t>(sizeof(T));
  const int64_t ahead = i + kAhead;
  const T* at = ahead < end || next == nullptr ? stream + ahead : next + (ahead - end);
  __builtin_prefetch(at, /*rw=*/0, /*locality=*/3);
}

}  // namespace cpu
}  // namespace fused_accum
