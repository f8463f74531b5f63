// Run-time choice of the CPU instruction set. SPECDEC_CPU_ISA=avx512|avx2|generic forces one
// (tests run every path on one machine); asking for one the CPU lacks is an error, not a crash.
#pragma once
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace specdec::cpu {

enum class Isa { kGeneric, kAvx2, kAvx512 };

inline bool cpu_has(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return true;
  }
#else
  return isa == Isa::kGeneric;
#endif
}

inline const char* isa_name(Isa isa) {
  return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "generic";
}

// Read on every call (a getenv is ~100 ns) so that tests can switch paths inside one process.
inline Isa chosen_isa() {
  const char* forced = std::getenv("SPECDEC_CPU_ISA");
  if (forced != nullptr && *forced != '\0') {
    for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kGeneric}) {
      if (std::strcmp(forced, isa_name(isa)) == 0) {
        TORCH_CHECK(cpu_has(isa), "SPECDEC_CPU_ISA=", forced, " but this CPU does not support it");
        return isa;
      }
    }
    TORCH_CHECK(false, "SPECDEC_CPU_ISA must be avx512, avx2 or generic, got '", forced, "'");
  }
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2})
    if (cpu_has(isa)) return isa;
  return Isa::kGeneric;
}

}  // namespace specdec::cpu
