// Refuses calls whose written tensors share memory with anything else the
// operator touches, before the operator writes anything: an element stepped or
// zeroed twice, or read after another argument overwrote it, would give neither
// the reference's numbers nor an error.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fused_accum {

class MemoryOverlapCheck {
 public:
  explicit MemoryOverlapCheck(const char* op) : op_(op) {}

  // Every tensor of `list`; a written tensor must not overlap itself either (an
  // expanded view, stride 0).
  void add(at::TensorList list, const char* name, bool written);
  // A single (optional) tensor argument, read only.
  void add_read(const std::optional<at::Tensor>& t, const char* name);

  // Throws, naming both arguments and their indices, when a written tensor's
  // memory span meets that of any other argument. Spans are [lowest, highest]
  // addresses, so two interleaved strided views of one buffer are refused too.
  void check();

 private:
  // Sorted and swept; what names a span for the message is kept apart, so a sort
  // of the spans of thousands of tensors moves 24 bytes apiece.
  struct Span {
    uintptr_t begin;
    uintptr_t end;
    uint32_t argument;  // index in arguments_
    bool written;
  };
  struct Argument {
    const char* name;
    int64_t index;  // -1: not a list member
  };
  void add_tensor(const at::Tensor& t, const char* name, int64_t index, bool written);
  std::string describe(const Span& s) const;

  const char* op_;
  std::vector<Span> spans_;
  std::vector<Argument> arguments_;
};

}  // namespace fused_accum
