// Run-time choice of the CPU instruction set. SPECDEC_CPU_ISA=amx|avx512vnni|avx512|avx2|generic forces
// one (tests run every path on one machine); asking for one the CPU lacks is an error, not a crash.
// `amx` (AVX-512 + VNNI/VBMI + AMX-INT8/BF16 tiles) and `avx512vnni` (the same without tiles: Ice Lake,
// Zen 4) only change kernels that have a tile or integer dot-product path (W4A16; tree attention on `amx`),
// through chosen_matrix_isa(); every other kernel runs its AVX-512 code there.
#pragma once
#include <c10/util/Exception.h>

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <cstdlib>
#include <cstring>

namespace specdec::cpu {

enum class Isa { kGeneric, kAvx2, kAvx512, kAvx512Vnni, kAmx };

// Linux keeps the AMX tile state off until the process asks for it (once; it then holds for every
// thread). Without the grant the first tile instruction faults, so AMX counts only once granted.
inline bool os_allows_tiles() {
#if defined(__linux__) && defined(__x86_64__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const bool granted = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  return granted;
#else
  return false;
#endif
}

inline bool cpu_has(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case Isa::kAmx:
      return cpu_has(Isa::kAvx512Vnni) && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-int8") &&
             __builtin_cpu_supports("amx-bf16") &&
             os_allows_tiles();
    case Isa::kAvx512Vnni:
      return cpu_has(Isa::kAvx512) && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni");
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
  switch (isa) {
    case Isa::kAmx: return "amx";
    case Isa::kAvx512Vnni: return "avx512vnni";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

// Read on every call (a getenv is ~100 ns) so that tests can switch paths inside one process.
inline Isa chosen_matrix_isa() {
  constexpr Isa kAll[] = {Isa::kAmx, Isa::kAvx512Vnni, Isa::kAvx512, Isa::kAvx2, Isa::kGeneric};
  const char* forced = std::getenv("SPECDEC_CPU_ISA");
  if (forced != nullptr && *forced != '\0') {
    for (Isa isa : kAll) {
      if (std::strcmp(forced, isa_name(isa)) == 0) {
        TORCH_CHECK(cpu_has(isa), "SPECDEC_CPU_ISA=", forced, " but this CPU does not support it");
        return isa;
      }
    }
    TORCH_CHECK(false, "SPECDEC_CPU_ISA must be amx, avx512vnni, avx512, avx2 or generic, got '", forced, "'");
  }
  for (Isa isa : kAll)
    if (cpu_has(isa)) return isa;
  return Isa::kGeneric;
}

// The vector ISA, for kernels without an integer dot-product path.
inline Isa chosen_isa() {
  const Isa isa = chosen_matrix_isa();
  return isa == Isa::kAmx || isa == Isa::kAvx512Vnni ? Isa::kAvx512 : isa;
}

}  // namespace specdec::cpu
