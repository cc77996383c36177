// Chooses the instruction-set level of the CPU loops (cpu_capability.h).
#include "cpu_capability.h"

#include <cctype>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace fused_accum {
namespace cpu {

namespace {

constexpr const char* kEnvVar = "FUSED_ACCUM_CPU_CAPABILITY";
constexpr CpuCapability kLevels[] = {CpuCapability::kDefault, CpuCapability::kAvx2,
                                     CpuCapability::kAvx512};

bool cpu_supports(CpuCapability capability) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // libgcc sets these only when the OS also saves the wider registers (XCR0).
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  switch (capability) {
    case CpuCapability::kDefault:
      return true;
    case CpuCapability::kAvx2:
      return avx2;
    case CpuCapability::kAvx512:
      return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
#else
  return capability == CpuCapability::kDefault;
#endif
}

// setup.py compiles the AVX loops (cpu/isa/) only for x86-64 and then says so.
bool compiled(CpuCapability capability) {
#ifdef FUSED_ACCUM_WITH_AVX_LOOPS
  return true;
#else
  return capability == CpuCapability::kDefault;
#endif
}

std::string names_of(const std::vector<CpuCapability>& levels) {
  std::string names;
  for (CpuCapability level : levels) {
    if (!names.empty()) names += ", ";
    names += cpu_capability_name(level);
  }
  return names;
}

// The level in use, or why the one asked for cannot be.
struct Choice {
  CpuCapability capability = CpuCapability::kDefault;
  std::string error;
};

Choice choose() {
  std::vector<CpuCapability> usable;
  for (CpuCapability level : kLevels) {
    if (cpu_supports(level) && compiled(level)) usable.push_back(level);
  }
  Choice choice;
  choice.capability = usable.back();
  const char* value = std::getenv(kEnvVar);
  if (value == nullptr || *value == '\0') return choice;
  std::string asked(value);
  for (char& c : asked) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (CpuCapability level : kLevels) {
    if (asked != cpu_capability_name(level)) continue;
    for (CpuCapability ok : usable) {
      if (ok == level) {
        choice.capability = level;
        return choice;
      }
    }
    choice.error = std::string(kEnvVar) + "=" + value + ": " +
                   (cpu_supports(level) ? "this build of fused_accum has no " + asked + " loops"
                                        : "this CPU does not support " + asked) +
                   " (usable on this CPU: " + names_of(usable) + ")";
    return choice;
  }
  choice.error = std::string(kEnvVar) + "='" + value +
                 "' is not one of default, avx2, avx512 (usable on this CPU: " +
                 names_of(usable) + ")";
  return choice;
}

const Choice& choice() {
  static const Choice chosen = choose();
  return chosen;
}

}  // namespace

const char* cpu_capability_name(CpuCapability capability) {
  switch (capability) {
    case CpuCapability::kDefault:
      return "default";
    case CpuCapability::kAvx2:
      return "avx2";
    case CpuCapability::kAvx512:
      return "avx512";
  }
  return "unknown";
}

std::vector<CpuCapability> cpu_capabilities_supported() {
  std::vector<CpuCapability> levels;
  for (CpuCapability level : kLevels) {
    if (cpu_supports(level)) levels.push_back(level);
  }
  return levels;
}

std::vector<CpuCapability> cpu_capabilities_compiled() {
  std::vector<CpuCapability> levels;
  for (CpuCapability level : kLevels) {
    if (compiled(level)) levels.push_back(level);
  }
  return levels;
}

CpuCapability cpu_capability() {
  const Choice& c = choice();
  if (!c.error.empty()) throw std::runtime_error(c.error);
  return c.capability;
}

AdamPieceKernel adam_piece_kernel() {
  switch (cpu_capability()) {
#ifdef FUSED_ACCUM_WITH_AVX_LOOPS
    case CpuCapability::kAvx512:
      return &isa_avx512::adam_piece;
    case CpuCapability::kAvx2:
      return &isa_avx2::adam_piece;
#endif
    default:
      return &isa_default::adam_piece;
  }
}

}  // namespace cpu
}  // namespace fused_accum
