// Shared helpers for the kernels: ISA selection, work partitioning, threading.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SB_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__)
#define SB_AVX2 1
#include <immintrin.h>
#endif

#define SB_RESTRICT __restrict__
#define SB_INLINE inline __attribute__((always_inline))

namespace sb {

// Tuning knobs (see sb_tuning in sparsebench_kernels.h).
extern int g_spmv_gather;
extern int g_transpose_batch;
extern int g_batch_chunk;

constexpr int kMaxThreads = 255;      // thread count fits the pool's job word
constexpr int64_t kMaxChunks = 65535;  // chunks per job, likewise

// Rows [lo, hi) of chunk t out of T, balanced by cost(m) = ptr[m] + alpha * m: the nnz
// before row m plus a per-row overhead expressed in nnz units. ptr[0] must be 0.
SB_INLINE void balanced_range(const int32_t *ptr, int64_t rows, int64_t alpha, int64_t t,
                              int64_t T, int64_t *lo, int64_t *hi) {
  auto cost = [&](int64_t m) { return (int64_t)ptr[m] + alpha * m; };
  auto first_at_least = [&](int64_t target) {
    int64_t a = 0, b = rows;
    while (a < b) {
      int64_t mid = a + (b - a) / 2;
      if (cost(mid) < target) a = mid + 1;
      else b = mid;
    }
    return a;
  };
  const int64_t total = cost(rows);
  *lo = t == 0 ? 0 : first_at_least(total * t / T);
  *hi = t == T - 1 ? rows : first_at_least(total * (t + 1) / T);
}

// Number of work chunks for `items` units on `num_threads` threads: 1 when single-threaded,
// else `per_thread` chunks per thread (dynamic claiming evens out imbalance and preemption).
SB_INLINE int64_t chunk_count(int64_t items, int num_threads, int64_t per_thread) {
  if (num_threads <= 1 || items <= 1) return items < 1 ? 0 : 1;
  int64_t n = (int64_t)num_threads * per_thread;
  if (n > items) n = items;
  return n > kMaxChunks ? kMaxChunks : n;
}

// Run fn(ctx, chunk) for chunk in [0, nchunks <= kMaxChunks) on at most num_threads threads:
// the caller plus pool workers that claim chunks dynamically (threadpool.cpp). Returns when
// every chunk has finished. num_threads <= 1 runs inline.
void run_chunks(int num_threads, int64_t nchunks, void (*fn)(void *, int64_t), void *ctx);

template <typename F>
SB_INLINE void parallel_for(int num_threads, int64_t nchunks, F &&body) {
  using Body = typename std::remove_reference<F>::type;
  run_chunks(num_threads, nchunks,
             [](void *c, int64_t i) { (*static_cast<Body *>(c))(i); }, (void *)&body);
}

SB_INLINE float finish(float v, const float *bias, int64_t m, int relu) {
  if (bias) v += bias[m];
  return (relu && v < 0.0f) ? 0.0f : v;
}

#if SB_AVX512
SB_INLINE __m512i load16_idx(const int32_t *p) { return _mm512_loadu_si512(p); }
SB_INLINE __m512i load16_idx(const int16_t *p) {
  return _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)p));
}
SB_INLINE __m512i maskload16_idx(__mmask16 k, const int32_t *p) {
  return _mm512_maskz_loadu_epi32(k, p);
}
SB_INLINE __m512i maskload16_idx(__mmask16 k, const int16_t *p) {
  return _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(k, p));
}
#endif

#if SB_AVX2
SB_INLINE __m256i load8_idx(const int32_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
SB_INLINE __m256i load8_idx(const int16_t *p) {
  return _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)p));
}
SB_INLINE float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

}  // namespace sb
