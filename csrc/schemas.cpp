// Operator schemas of the fused_accum namespace. Mutated lists carry alias
// annotations so functionalization, torch.compile and opcheck see the writes.
#include <torch/library.h>

#include "adam_schemas.h"

TORCH_LIBRARY(fused_accum, m) {
  fused_accum::define_adam_schemas(m);
  // buffers[i] += scale * grads[i], computed in float32.
  m.def("accumulate_(Tensor(a!)[] buffers, Tensor[] grads, *, float scale=1.0) -> ()");
  // The same, returning the float32 sum of squares of the updated buffers.
  m.def("accumulate_sumsq_(Tensor(a!)[] buffers, Tensor[] grads, *, float scale=1.0) -> Tensor");
  // Sum of squares of all elements of all tensors, as a 0-d float32 tensor.
  m.def("sum_of_squares(Tensor[] tensors) -> Tensor");
}
