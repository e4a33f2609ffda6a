// Library identity (ABI version, compiled ISA) and benchmark tuning knobs.
#include <cstring>

#include "common.hpp"
#include "sparsebench_kernels.h"

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
  if (std::strcmp(key, "spmv_gather") == 0) knob = &sb::g_spmv_gather;
  else if (std::strcmp(key, "transpose_batch") == 0) knob = &sb::g_transpose_batch;
  else if (std::strcmp(key, "batch_chunk") == 0) knob = &sb::g_batch_chunk;
  if (!knob) return -1;
  const int old = *knob;
  if (value >= 0) *knob = value;
  return old;
}
