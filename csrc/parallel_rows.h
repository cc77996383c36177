// Host work over the rows of a call: checks, step counts, layouts, data pointers.
//
// With thousands of small tensors each row is a few dependent cache misses on
// tensor metadata that the previous step's data pushed out, and the element
// loop's second thread waits meanwhile. Split by rows, both threads keep misses
// in flight, and each walks the rows whose elements it will step (the element
// loop splits tensors of one size by rows alike).
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

namespace fused_accum {

// Below this many rows a call's row walks stay on one thread. Split from here
// on, a step over 100 rows of 1024 elements measured as fast as unsplit, and one
// over 300 rows of 256 elements 7% faster.
constexpr int64_t kRowGrain = 64;

// fn(begin, end) over row ranges covering [0, rows).
template <typename Fn>
void parallel_for_rows(size_t rows, const Fn& fn) {
  at::parallel_for(0, static_cast<int64_t>(rows), kRowGrain, fn);
}

}  // namespace fused_accum
