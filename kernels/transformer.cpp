// Transformer blocks around the sparse linears: add + LayerNorm over the last axis.
#include <cmath>

#include "common.hpp"
#include "sparsebench_kernels.h"

namespace sb {
namespace {

// ----------------------------------------------------------------------------- LayerNorm

// Rows below which a call stays on one thread (the hand-over costs more than the work).
constexpr int64_t kNormMinParallel = 16384;  // elements

// y may be x or r (in place).
void norm_row(const float *x, const float *r, const float *gamma,
              const float *beta, float eps, int64_t n, float *y) {
  // pass 1: s = x + r (written to y), sum
  double mean = 0.0, var = 0.0;
  int64_t i = 0;
#if SB_AVX512
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (; i + 32 <= n; i += 32) {
    __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
    if (r) {
      a = _mm512_add_ps(a, _mm512_loadu_ps(r + i));
      b = _mm512_add_ps(b, _mm512_loadu_ps(r + i + 16));
    }
    _mm512_storeu_ps(y + i, a);
    _mm512_storeu_ps(y + i + 16, b);
    acc0 = _mm512_add_ps(acc0, a);
    acc1 = _mm512_add_ps(acc1, b);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    __m512 a = _mm512_maskz_loadu_ps(k, x + i);
    if (r) a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(k, r + i));
    _mm512_mask_storeu_ps(y + i, k, a);
    acc0 = _mm512_add_ps(acc0, a);
  }
  mean = (double)_mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) / (double)n;
  // pass 2: variance around the mean (two-pass: no cancellation)
  const __m512 vm = _mm512_set1_ps((float)mean);
  acc0 = _mm512_setzero_ps();
  acc1 = _mm512_setzero_ps();
  for (i = 0; i + 32 <= n; i += 32) {
    const __m512 a = _mm512_sub_ps(_mm512_loadu_ps(y + i), vm);
    const __m512 b = _mm512_sub_ps(_mm512_loadu_ps(y + i + 16), vm);
    acc0 = _mm512_fmadd_ps(a, a, acc0);
    acc1 = _mm512_fmadd_ps(b, b, acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    const __m512 a = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, y + i), vm);
    acc0 = _mm512_fmadd_ps(a, a, acc0);
  }
  var = (double)_mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) / (double)n;
  const float rstd = (float)(1.0 / std::sqrt(var + (double)eps));
  const __m512 vr = _mm512_set1_ps(rstd);
  for (i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, y + i), vm), vr);
    if (gamma) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, gamma + i));
    if (beta) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, beta + i));
    _mm512_mask_storeu_ps(y + i, k, v);
  }
#else
  float s8[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) {
      const float v = x[i + l] + (r ? r[i + l] : 0.0f);
      y[i + l] = v;
      s8[l] += v;
    }
  double sum = 0.0;
  for (; i < n; ++i) {
    const float v = x[i] + (r ? r[i] : 0.0f);
    y[i] = v;
    sum += v;
  }
  for (int l = 0; l < 8; ++l) sum += s8[l];
  mean = sum / (double)n;
  const float m = (float)mean;
  float q8[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (i = 0; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) {
      const float d = y[i + l] - m;
      q8[l] += d * d;
    }
  double sq = 0.0;
  for (; i < n; ++i) sq += (double)(y[i] - m) * (y[i] - m);
  for (int l = 0; l < 8; ++l) sq += q8[l];
  var = sq / (double)n;
  const float rstd = (float)(1.0 / std::sqrt(var + (double)eps));
  for (i = 0; i < n; ++i) {
    float v = (y[i] - m) * rstd;
    if (gamma) v *= gamma[i];
    if (beta) v += beta[i];
    y[i] = v;
  }
#endif
}

}  // namespace
}  // namespace sb

extern "C" int sb_add_layernorm(const float *x, const float *residual, const float *gamma,
                                const float *beta, float eps, int64_t rows, int64_t cols,
                                float *y, int num_threads) {
  if (num_threads < 1 || num_threads > sb::kMaxThreads) return SB_ETHREADS;
  if (!x || !y || rows < 0 || cols < 1 || !(eps >= 0.0f)) return SB_EINVAL;
  if (rows == 0) return SB_OK;
  const int threads = rows * cols < sb::kNormMinParallel ? 1 : num_threads;
  const int64_t chunks = sb::chunk_count(rows, threads, 4);
  sb::parallel_for(threads, chunks, [&](int64_t c) {
    const int64_t lo = rows * c / chunks, hi = rows * (c + 1) / chunks;
    for (int64_t m = lo; m < hi; ++m)
      sb::norm_row(x + m * cols, residual ? residual + m * cols : nullptr, gamma, beta, eps, cols,
                   y + m * cols);
  });
  return SB_OK;
}
