// Prefetching the metadata of many tensors, one level of pointers at a time.
//
// An eager step reads, for every param, a chain of small objects: the Python
// tensor, its TensorImpl, the autograd metadata holding the grad, the grad's
// TensorImpl, the storages that hold the data pointers, the state dict and the
// state tensors. Between two steps the forward and backward passes evict them
// all, and walking them one param at a time waits on one cache miss after
// another. Prefetching one level for every tensor before the next level needs
// it keeps many misses in flight at once. Measured with 2000 params of 1024
// elements after streaming 400 MB through the caches: grouping and checks went
// from 1.36 to 0.85-0.96 ms (0.32 ms when cached), the whole step from 3.1 to
// 2.2 ms. Prefetches never fault, so an address past an object's end costs nothing.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "cpu/prefetch.h"

namespace fused_accum {

// Prefetches the `bytes` starting at `at`, one cache line at a time.
inline void prefetch_object(const void* at, int64_t bytes) {
  const char* first = static_cast<const char*>(at);
  for (int64_t offset = 0; offset < bytes; offset += cpu::kCacheLineBytes) {
    __builtin_prefetch(first + offset, /*rw=*/0, /*locality=*/3);
  }
}

inline void prefetch_impls(at::TensorList tensors) {
  for (const at::Tensor& t : tensors) {
    prefetch_object(t.unsafeGetTensorImpl(), sizeof(c10::TensorImpl));
  }
}

inline const c10::StorageImpl* storage_impl(const at::Tensor& t) {
  return t.unsafeGetTensorImpl()->unsafe_storage().unsafeGetStorageImpl();
}

// Reads each TensorImpl: call it once prefetch_impls has brought them in.
inline void prefetch_storage_impls(at::TensorList tensors) {
  for (const at::Tensor& t : tensors) {
    const c10::StorageImpl* storage = storage_impl(t);
    if (storage != nullptr) prefetch_object(storage, sizeof(c10::StorageImpl));
  }
}

// The first bytes of each tensor's data (a step count is all of it), to be
// written. Reads each StorageImpl: call it once prefetch_storage_impls has
// brought them in, on tensors whose data pointer may be read (checked CPU tensors).
inline void prefetch_data(at::TensorList tensors) {
  for (const at::Tensor& t : tensors) {
    const c10::StorageImpl* storage = storage_impl(t);
    if (storage != nullptr) __builtin_prefetch(storage->data(), /*rw=*/1, /*locality=*/3);
  }
}

}  // namespace fused_accum
