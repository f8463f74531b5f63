// The operand of LDTILECFG (palette 1): per tile register its rows and bytes per row. Shared by the AMX
// kernels (w4a16_int8.cpp, tree_attention_amx.cpp), each of which loads its own shapes.
#pragma once
#include <cstdint>

namespace specdec::cpu {

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};

// LDTILECFG with the whole 64-byte operand visible to the compiler. GCC 12's _tile_loadconfig names only a
// pointer-sized operand, so stores to the config's later fields may be dropped or sunk past it (seen: every
// bytes_per_row left zero, LDTILECFG faulting).
inline void load_tile_config(const TileConfig& cfg) { asm volatile("ldtilecfg %0" : : "m"(cfg)); }

}  // namespace specdec::cpu
