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
extern int g_linear_chunks;
extern int g_linear_min_parallel;
extern int g_linear_tile;
extern int g_linear_panels;
extern int g_linear_prefetch;
extern int g_conv_layout;
extern int g_conv_l1_kb;
extern int g_conv_block_nnz;
extern int g_conv_ksplit_share;
extern int g_conv_prefetch;
extern int g_conv_chunks;
extern int g_conv_pack_min;
extern int g_conv_pairs;
extern int g_conv_bands;
extern int g_conv_row_out;
extern int g_conv_tile_nv;
extern int g_conv_aligned_1x1;
extern int g_conv_out_prefetch;
extern int g_conv_gap_direct;
extern int g_conv_ksplit_gap;
extern int g_conv_private_pack;
extern int g_conv_gather;
extern int g_conv_shared_pack;
extern int g_conv_ksplit;
extern int g_linear_split;

constexpr int kMaxThreads = 255;      // thread count fits the pool's job word
constexpr int64_t kMaxChunks = 65535;  // chunks per job, likewise
constexpr int64_t kMaxGroup = 8;       // weights per sb_csr_linear_group call

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

// sb_tuning's "pool_*" keys (threadpool.cpp): false when `key` is not one of them.
bool pool_tuning(const char *key, int value, int *old);
// sb_pool_hold: the holder count after adding delta (-1: it would go below 0).
int pool_hold(int delta);

// Per-call scratch kept between calls: a grow-only, 64-byte-aligned buffer per calling thread
// and slot (contents undefined), freed when the thread exits; nullptr when allocation fails.
// glibc serves the linears' large per-call buffers (0.2-1.5 MB) with mmap and page faults:
// 0.2 ms of a 0.45 ms BERT-base 768 x 768 linear (128 tokens) in a C driver.
enum ScratchSlot {
  kScratchTransposed, kScratchSums, kScratchChain, kScratchConvRows, kScratchConvPack,
  kScratchConvSplit, kScratchSlots
};
float *scratch(ScratchSlot slot, size_t bytes);
// Long-lived plan memory (weight streams, packed inputs), 64-byte aligned, nullptr on failure:
// carved from 16 MB chunks advised for transparent huge pages, so that a model's many small
// plans share 2 MB pages (ResNet-50 95%: 48 conv plans, 23 MB, each under 2 MB; on 4 KB pages
// every call walked the page tables again). plan_free returns a block; a chunk is released with
// its last block.
void *plan_alloc(size_t bytes);
void plan_free(void *p);

template <typename F>
SB_INLINE void parallel_for(int num_threads, int64_t nchunks, F &&body) {
  using Body = typename std::remove_reference<F>::type;
  run_chunks(num_threads, nchunks,
             [](void *c, int64_t i) { (*static_cast<Body *>(c))(i); }, (void *)&body);
}

#if SB_AVX512
// 16 x 16 floats: out[j * ldo + i] = in[i * ldi + j].
SB_INLINE void transpose16(const float *in, int64_t ldi, float *out, int64_t ldo) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(in + i * ldi);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit lanes: rows i, i+4, i+8, i+12
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
  for (int q = 0; q < 16; ++q) _mm512_storeu_ps(out + q * ldo, r[q]);  // r[q]: column q
}
#endif

// Activation codes (sb_linear.act / sb_conv2d.act): 0 none, 1 ReLU, 2 GELU (erf form).
constexpr int kActNone = 0, kActRelu = 1, kActGelu = 2;

// Bias and ReLU; GELU is applied afterwards, vectorised, by act_range.
SB_INLINE float finish(float v, const float *bias, int64_t m, int act) {
  if (bias) v += bias[m];
  return (act == kActRelu && v < 0.0f) ? 0.0f : v;
}

// GELU(x) = x/2 * (1 + erf(x/sqrt 2)); erf(z) = z P(z^2) / Q(z^2) on z clamped to [-4, 4]
// (erf is +-1 in float beyond): the rational approximation of Eigen's and XLA's float erf,
// |error| <= 4e-7 against libm's erf (tests: test_gelu_accuracy). No exp and one division:
// 128 x 3072 (BERT-base's FFN) in 0.14 ms on Zen 4, against 0.20 ms for the Abramowitz-Stegun
// 7.1.26 form (with an exp) that it replaced.
constexpr float kErfA[7] = {-1.60960333262415e-02f, -2.95459980854025e-03f, -7.34990630326855e-04f,
                            -5.69250639462346e-05f, -2.10102402082508e-06f, 2.77068142495902e-08f,
                            -2.72614225801306e-10f};  // P: z^1, z^3, ..., z^13
constexpr float kErfB[5] = {-1.42647390514189e-02f, -7.37332916720468e-03f, -1.68282697438203e-03f,
                            -2.13374055278905e-04f, -1.45660718464996e-05f};  // Q: 1, z^2, ..., z^8

SB_INLINE float gelu_scalar(float x) {
  float z = x * 0.70710678118654752f;
  z = z > 4.f ? 4.f : z < -4.f ? -4.f : z;
  const float z2 = z * z;
  float p = kErfA[6];
  for (int i = 5; i >= 0; --i) p = p * z2 + kErfA[i];
  float q = kErfB[4];
  for (int i = 3; i >= 0; --i) q = q * z2 + kErfB[i];
  const float hx = 0.5f * x;
  return hx * (z * p / q) + hx;
}

SB_INLINE float act_scalar(float v, int act) {
  if (act == kActRelu) return v < 0.f ? 0.f : v;
  if (act == kActGelu) return gelu_scalar(v);
  return v;
}

#if SB_AVX512
// exp(v) for v <= 0 (clamped at -87): 2^n * p(r), r = v - n ln2, degree-6 polynomial.
SB_INLINE __m512 exp_neg_ps(__m512 v) {
  v = _mm512_max_ps(v, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

SB_INLINE __m512 gelu_ps(__m512 x) {
  const __m512 z = _mm512_max_ps(
      _mm512_min_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f)), _mm512_set1_ps(4.f)),
      _mm512_set1_ps(-4.f));
  const __m512 z2 = _mm512_mul_ps(z, z);
  __m512 p = _mm512_set1_ps(kErfA[6]);
  for (int i = 5; i >= 0; --i) p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(kErfA[i]));
  __m512 q = _mm512_set1_ps(kErfB[4]);
  for (int i = 3; i >= 0; --i) q = _mm512_fmadd_ps(q, z2, _mm512_set1_ps(kErfB[i]));
  const __m512 hx = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
  return _mm512_fmadd_ps(hx, _mm512_div_ps(_mm512_mul_ps(z, p), q), hx);
}

SB_INLINE __m512 act_ps(__m512 v, int act) {
  if (act == kActRelu) return _mm512_max_ps(v, _mm512_setzero_ps());
  if (act == kActGelu) return gelu_ps(v);
  return v;
}
#endif

// GELU in place on y[0, n) (no-op for other activations: they are applied by finish()).
SB_INLINE void act_range(float *y, int64_t n, int act) {
  if (act != kActGelu) return;
  int64_t i = 0;
#if SB_AVX512
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, gelu_ps(_mm512_loadu_ps(y + i)));
#endif
  for (; i < n; ++i) y[i] = gelu_scalar(y[i]);
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
