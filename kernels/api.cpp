// Library identity (ABI version, compiled ISA), benchmark tuning knobs, per-thread scratch.
#include <cstdlib>
#include <cstring>

#include "common.hpp"
#include "sparsebench_kernels.h"

namespace sb {
namespace {
struct ScratchCache {
  void *ptr[kScratchSlots] = {};
  size_t cap[kScratchSlots] = {};
  ~ScratchCache() {
    for (void *p : ptr) std::free(p);
  }
};
thread_local ScratchCache t_scratch;
}  // namespace

float *scratch(ScratchSlot slot, size_t bytes) {
  ScratchCache &c = t_scratch;
  if (bytes > c.cap[slot] || !c.ptr[slot]) {
    const size_t rounded = (bytes + 4095) / 4096 * 4096;
    void *p = std::aligned_alloc(64, rounded);
    if (!p) return nullptr;
    std::free(c.ptr[slot]);
    c.ptr[slot] = p;
    c.cap[slot] = rounded;
  }
  return static_cast<float *>(c.ptr[slot]);
}
}  // namespace sb

extern "C" int sb_abi_version(void) { return SB_ABI_VERSION; }

extern "C" const char *sb_isa(void) {
#if SB_AVX512
  return "avx512";
#elif SB_AVX2
  return "avx2";
#else
  return "scalar";
#endif
}

extern "C" int sb_tuning(const char *key, int value) {
  int *knob = nullptr;
  if (!key) return -1;
  int pool_old = 0;
  if (sb::pool_tuning(key, value, &pool_old)) return pool_old;
  if (std::strcmp(key, "spmv_gather") == 0) knob = &sb::g_spmv_gather;
  else if (std::strcmp(key, "transpose_batch") == 0) knob = &sb::g_transpose_batch;
  else if (std::strcmp(key, "batch_chunk") == 0) knob = &sb::g_batch_chunk;
  else if (std::strcmp(key, "linear_chunks") == 0) knob = &sb::g_linear_chunks;
  else if (std::strcmp(key, "linear_min_parallel") == 0) knob = &sb::g_linear_min_parallel;
  else if (std::strcmp(key, "linear_tile") == 0) knob = &sb::g_linear_tile;
  else if (std::strcmp(key, "linear_panels") == 0) knob = &sb::g_linear_panels;
  else if (std::strcmp(key, "linear_prefetch") == 0) knob = &sb::g_linear_prefetch;
  else if (std::strcmp(key, "conv_layout") == 0) knob = &sb::g_conv_layout;
  else if (std::strcmp(key, "conv_l1_kb") == 0) knob = &sb::g_conv_l1_kb;
  else if (std::strcmp(key, "conv_prefetch") == 0) knob = &sb::g_conv_prefetch;
  else if (std::strcmp(key, "conv_chunks") == 0) knob = &sb::g_conv_chunks;
  else if (std::strcmp(key, "conv_pack_min") == 0) knob = &sb::g_conv_pack_min;
  else if (std::strcmp(key, "conv_pairs") == 0) knob = &sb::g_conv_pairs;
  else if (std::strcmp(key, "conv_bands") == 0) knob = &sb::g_conv_bands;
  else if (std::strcmp(key, "conv_row_out") == 0) knob = &sb::g_conv_row_out;
  else if (std::strcmp(key, "linear_split") == 0) knob = &sb::g_linear_split;
  if (!knob) return -1;
  const int old = *knob;
  if (value >= 0) *knob = value;
  return old;
}
