#include "memory_overlap.h"

#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <string>

namespace fused_accum {

namespace {

std::string argument_name(const char* name, int64_t index) {
  return index < 0 ? std::string(name) : std::string(name) + "[" + std::to_string(index) + "]";
}

}  // namespace

std::string MemoryOverlapCheck::describe(const Span& s) const {
  const Argument& a = arguments_[s.argument];
  return argument_name(a.name, a.index);
}

void MemoryOverlapCheck::add_tensor(const at::Tensor& t, const char* name, int64_t index,
                                    bool written) {
  // Meta tensors have no memory, and an empty tensor touches none.
  if (!t.defined() || t.is_meta() || t.numel() == 0) return;
  TORCH_CHECK(!written || at::has_internal_overlap(t) != at::MemOverlap::Yes, op_, ": ",
              argument_name(name, index), " is written, but some of its elements share memory (an expanded or "
              "self-overlapping view, strides ", t.strides(),
              "); give it memory of its own, e.g. with .clone()");
  int64_t low = 0;
  int64_t high = 0;
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t reach = t.stride(d) * (t.size(d) - 1);
    (reach < 0 ? low : high) += reach;
  }
  const auto base = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const auto item = static_cast<intptr_t>(t.element_size());
  spans_.push_back({base + low * item, base + high * item + item,
                    static_cast<uint32_t>(arguments_.size()), written});
  arguments_.push_back({name, index});
}

void MemoryOverlapCheck::add(at::TensorList list, const char* name, bool written) {
  spans_.reserve(spans_.size() + list.size());
  arguments_.reserve(arguments_.size() + list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    add_tensor(list[i], name, static_cast<int64_t>(i), written);
  }
}

void MemoryOverlapCheck::add_read(const std::optional<at::Tensor>& t, const char* name) {
  if (t.has_value()) add_tensor(*t, name, -1, false);
}

void MemoryOverlapCheck::check() {
  // Sorted by start, a span meets an earlier one exactly when it starts before the
  // furthest end seen so far: one pass finds every conflict of a written span.
  // Ties in order of addition, so the message does not depend on the sort.
  std::sort(spans_.begin(), spans_.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.argument < b.argument;
  });
  const Span* furthest = nullptr;          // of all spans so far
  const Span* furthest_written = nullptr;  // of the written ones
  for (const Span& s : spans_) {
    const Span* other = s.written ? furthest : furthest_written;
    if (other != nullptr && s.begin < other->end) {
      TORCH_CHECK(false, op_, ": ", describe(*other), " and ", describe(s),
                  " share memory, and the operator writes ",
                  s.written && other->written ? "both" : "one of them",
                  "; every written tensor needs memory of its own");
    }
    if (furthest == nullptr || s.end > furthest->end) furthest = &s;
    if (s.written && (furthest_written == nullptr || s.end > furthest_written->end)) {
      furthest_written = &s;
    }
  }
}

}  // namespace fused_accum
