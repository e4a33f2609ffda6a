// Library identity (ABI version, compiled ISA), benchmark tuning knobs, per-thread scratch,
// plan memory.
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "common.hpp"
#include "sparsebench_kernels.h"

namespace sb {
namespace {

constexpr size_t kHugePage = 2u << 20;
constexpr size_t kPlanChunk = 16u << 20;  // plan memory is carved from chunks this large

// `bytes` (a multiple of kHugePage) at a 2 MB boundary, advised for transparent huge pages.
void *huge_alloc(size_t bytes) {
  void *p = std::aligned_alloc(kHugePage, bytes);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: 4 KB pages if it is refused
#endif
  return p;
}

SB_INLINE size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

// Plan memory: chunks bump-allocated in order; a chunk is released with its last block.
struct PlanChunk {
  char *base;
  size_t size, used;
  int64_t live;  // blocks not yet freed
};
std::mutex g_plan_mu;
// the chunks, the last one taking new blocks; never destroyed (plans may be freed at exit)
std::vector<PlanChunk> &plan_chunks() {
  static std::vector<PlanChunk> *chunks = new std::vector<PlanChunk>();
  return *chunks;
}
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
    // from 1 MB up on huge pages (2 MB rounding costs at most one page per slot and thread)
    const size_t rounded = bytes >= (1u << 20) ? round_up(bytes, kHugePage) : round_up(bytes, 4096);
    void *p = rounded >= kHugePage ? huge_alloc(rounded) : std::aligned_alloc(64, rounded);
    if (!p) return nullptr;
    std::free(c.ptr[slot]);
    c.ptr[slot] = p;
    c.cap[slot] = rounded;
  }
  return static_cast<float *>(c.ptr[slot]);
}

void *plan_alloc(size_t bytes) {
  bytes = round_up(bytes > 0 ? bytes : 1, 64);
  std::lock_guard<std::mutex> lock(g_plan_mu);
  std::vector<PlanChunk> &chunks = plan_chunks();
  if (bytes > kPlanChunk / 4) {  // a large block gets a chunk of its own, kept out of the way
    const size_t size = round_up(bytes, kHugePage);
    char *base = static_cast<char *>(huge_alloc(size));
    if (!base) return nullptr;
    chunks.insert(chunks.empty() ? chunks.end() : chunks.end() - 1, PlanChunk{base, size, size, 1});
    return base;
  }
  if (chunks.empty() || chunks.back().size - chunks.back().used < bytes) {
    char *base = static_cast<char *>(huge_alloc(kPlanChunk));
    if (!base) return nullptr;
    chunks.push_back(PlanChunk{base, kPlanChunk, 0, 0});
  }
  PlanChunk &c = chunks.back();
  void *p = c.base + c.used;
  c.used += bytes;
  ++c.live;
  return p;
}

void plan_free(void *p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(g_plan_mu);
  std::vector<PlanChunk> &chunks = plan_chunks();
  for (size_t i = 0; i < chunks.size(); ++i) {
    PlanChunk &c = chunks[i];
    if (static_cast<char *>(p) < c.base || static_cast<char *>(p) >= c.base + c.size) continue;
    if (--c.live > 0) return;
    std::free(c.base);
    chunks.erase(chunks.begin() + (std::ptrdiff_t)i);
    return;
  }
}
}  // namespace sb

extern "C" int sb_abi_version(void) { return SB_ABI_VERSION; }

extern "C" int sb_pool_hold(int delta) { return sb::pool_hold(delta); }

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
  else if (std::strcmp(key, "conv_block_nnz") == 0) knob = &sb::g_conv_block_nnz;
  else if (std::strcmp(key, "conv_ksplit_share") == 0) knob = &sb::g_conv_ksplit_share;
  else if (std::strcmp(key, "conv_prefetch") == 0) knob = &sb::g_conv_prefetch;
  else if (std::strcmp(key, "conv_chunks") == 0) knob = &sb::g_conv_chunks;
  else if (std::strcmp(key, "conv_pack_min") == 0) knob = &sb::g_conv_pack_min;
  else if (std::strcmp(key, "conv_pairs") == 0) knob = &sb::g_conv_pairs;
  else if (std::strcmp(key, "conv_bands") == 0) knob = &sb::g_conv_bands;
  else if (std::strcmp(key, "conv_row_out") == 0) knob = &sb::g_conv_row_out;
  else if (std::strcmp(key, "conv_tile_nv") == 0) knob = &sb::g_conv_tile_nv;
  else if (std::strcmp(key, "conv_aligned_1x1") == 0) knob = &sb::g_conv_aligned_1x1;
  else if (std::strcmp(key, "conv_out_prefetch") == 0) knob = &sb::g_conv_out_prefetch;
  else if (std::strcmp(key, "conv_gap_direct") == 0) knob = &sb::g_conv_gap_direct;
  else if (std::strcmp(key, "conv_ksplit_gap") == 0) knob = &sb::g_conv_ksplit_gap;
  else if (std::strcmp(key, "conv_private_pack") == 0) knob = &sb::g_conv_private_pack;
  else if (std::strcmp(key, "conv_gather") == 0) knob = &sb::g_conv_gather;
  else if (std::strcmp(key, "conv_shared_pack") == 0) knob = &sb::g_conv_shared_pack;
  else if (std::strcmp(key, "conv_ksplit") == 0) knob = &sb::g_conv_ksplit;
  else if (std::strcmp(key, "linear_split") == 0) knob = &sb::g_linear_split;
  if (!knob) return -1;
  const int old = *knob;
  if (value >= 0) *knob = value;
  return old;
}
