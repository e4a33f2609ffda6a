// BSR x dense for linear layers: Y[B, M] = X[B, K] @ W^T + bias, W = BSR(M x K, R x C blocks).
//
// Common block shapes are compile-time specialised (AVX-512: one or more vectors per block;
// other ISAs: the compiler vectorises the R*C accumulator tile), others use a generic loop.
// Each block row is processed for every batch element while its blocks sit in L1.
// Work is split into chunks of block rows balanced by block count, claimed dynamically.
#include <cstdlib>

#include "common.hpp"
#include "sparsebench_kernels.h"

namespace sb {
namespace {

#if SB_AVX512
// AVX-512: a block (R*C floats) is one masked vector, or R*C/16 full ones; the matching x
// vector repeats x[0..C) across the lanes (lane l holds x[l % C]), so any C dividing 16 works.
template <int R, int C, typename Idx>
void bsr_rows_fixed(int64_t lo, int64_t hi, int64_t M, int64_t K, const int32_t *rp,
                    const Idx *ci, const float *blocks, const float *bias, int act,
                    const float *x, int64_t B, float *y) {
  constexpr int L = R * C, NV = L <= 16 ? 1 : L / 16;
  static_assert(16 % C == 0 && (L <= 16 || L % 16 == 0), "unsupported block shape");
  const __mmask16 kb = (__mmask16)(L >= 16 ? 0xffffu : (1u << L) - 1u);
  const __mmask16 kx = (__mmask16)((1u << C) - 1u);
  alignas(64) int32_t lanes[16];
  for (int l = 0; l < 16; ++l) lanes[l] = l % C;
  const __m512i pattern = _mm512_load_si512(lanes);
  for (int64_t br = lo; br < hi; ++br) {
    const int64_t s = rp[br], e = rp[br + 1];
    for (int64_t b = 0; b < B; ++b) {
      const float *xb = x + b * K;
      __m512 a0[NV], a1[NV];
      for (int q = 0; q < NV; ++q) a0[q] = a1[q] = _mm512_setzero_ps();
      auto xvec = [&](int64_t j) {
        return _mm512_permutexvar_ps(pattern, _mm512_maskz_loadu_ps(kx, xb + (int64_t)ci[j] * C));
      };
      int64_t j = s;
      for (; j + 2 <= e; j += 2) {  // two independent accumulator sets hide FMA latency
        const __m512 x0 = xvec(j), x1 = xvec(j + 1);
        const float *b0 = blocks + j * L, *b1 = b0 + L;
        for (int q = 0; q < NV; ++q) {
          a0[q] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(kb, b0 + 16 * q), x0, a0[q]);
          a1[q] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(kb, b1 + 16 * q), x1, a1[q]);
        }
      }
      if (j < e) {
        const __m512 x0 = xvec(j);
        for (int q = 0; q < NV; ++q)
          a0[q] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(kb, blocks + j * L + 16 * q), x0, a0[q]);
      }
      alignas(64) float t[16 * NV];
      for (int q = 0; q < NV; ++q) _mm512_store_ps(t + 16 * q, _mm512_add_ps(a0[q], a1[q]));
      float *yb = y + b * M + br * R;
      for (int r = 0; r < R; ++r) {
        float sum = 0.f;
        for (int c = 0; c < C; ++c) sum += t[r * C + c];
        yb[r] = finish(sum, bias, br * R + r, act);
      }
    }
  }
}
#else
// acc[r*C + c] accumulates blk[r, c] * x[c]; the row sums are taken once per block row.
template <int R, int C, typename Idx>
void bsr_rows_fixed(int64_t lo, int64_t hi, int64_t M, int64_t K, const int32_t *rp,
                    const Idx *ci, const float *blocks, const float *bias, int act,
                    const float *x, int64_t B, float *y) {
  for (int64_t br = lo; br < hi; ++br) {
    const int64_t s = rp[br], e = rp[br + 1];
    for (int64_t b = 0; b < B; ++b) {
      const float *SB_RESTRICT xb = x + b * K;
      float acc[R * C];
      for (int i = 0; i < R * C; ++i) acc[i] = 0.f;
      for (int64_t j = s; j < e; ++j) {
        const float *SB_RESTRICT blk = blocks + j * (R * C);
        const float *SB_RESTRICT xs = xb + (int64_t)ci[j] * C;
        for (int r = 0; r < R; ++r)
          for (int c = 0; c < C; ++c) acc[r * C + c] += blk[r * C + c] * xs[c];
      }
      float *yb = y + b * M + br * R;
      for (int r = 0; r < R; ++r) {
        float sum = 0.f;
        for (int c = 0; c < C; ++c) sum += acc[r * C + c];
        yb[r] = finish(sum, bias, br * R + r, act);
      }
    }
  }
}
#endif

// Any R x C; acc is caller-provided scratch of R floats.
template <typename Idx>
void bsr_rows_generic(int64_t lo, int64_t hi, int64_t M, int64_t K, int64_t R, int64_t C,
                      const int32_t *rp, const Idx *ci, const float *blocks, const float *bias,
                      int act, const float *x, int64_t B, float *y, float *acc) {
  for (int64_t br = lo; br < hi; ++br) {
    for (int64_t b = 0; b < B; ++b) {
      const float *xb = x + b * K;
      for (int64_t r = 0; r < R; ++r) acc[r] = 0.f;
      for (int64_t j = rp[br]; j < rp[br + 1]; ++j) {
        const float *SB_RESTRICT blk = blocks + j * R * C;
        const float *SB_RESTRICT xs = xb + (int64_t)ci[j] * C;
        for (int64_t r = 0; r < R; ++r) {
          float sum = 0.f;
          for (int64_t c = 0; c < C; ++c) sum += blk[r * C + c] * xs[c];
          acc[r] += sum;
        }
      }
      float *yb = y + b * M + br * R;
      for (int64_t r = 0; r < R; ++r) yb[r] = finish(acc[r], bias, br * R + r, act);
    }
  }
}

template <typename Idx>
int bsr_linear(int64_t M, int64_t K, int64_t R, int64_t C, const int32_t *rp, const Idx *ci,
               const float *blocks, const float *bias, int act, const float *x, int64_t B,
               float *y, int nt) {
  const int64_t MB = M / R;
  using Fn = void (*)(int64_t, int64_t, int64_t, int64_t, const int32_t *, const Idx *,
                      const float *, const float *, int, const float *, int64_t, float *);
  Fn fn = nullptr;
#define SB_BSR_CASE(r, c) \
  if (R == r && C == c) fn = bsr_rows_fixed<r, c, Idx>;
  SB_BSR_CASE(1, 1) SB_BSR_CASE(1, 2) SB_BSR_CASE(1, 4) SB_BSR_CASE(1, 8) SB_BSR_CASE(1, 16)
  SB_BSR_CASE(2, 1) SB_BSR_CASE(2, 2) SB_BSR_CASE(4, 1) SB_BSR_CASE(4, 4) SB_BSR_CASE(8, 1)
  SB_BSR_CASE(16, 1) SB_BSR_CASE(8, 8)
#undef SB_BSR_CASE
  const int64_t nc = chunk_count(MB, nt, 8);
  float *acc = nullptr;
  if (!fn && !(acc = (float *)std::malloc((size_t)(R * nc) * sizeof(float)))) return SB_ENOMEM;
  parallel_for(nt, nc, [&](int64_t c) {
    int64_t lo, hi;
    balanced_range(rp, MB, 1, c, nc, &lo, &hi);
    if (fn) fn(lo, hi, M, K, rp, ci, blocks, bias, act, x, B, y);
    else bsr_rows_generic(lo, hi, M, K, R, C, rp, ci, blocks, bias, act, x, B, y, acc + R * c);
    if (act == kActGelu)
      for (int64_t b = 0; b < B; ++b) act_range(y + b * M + lo * R, (hi - lo) * R, act);
  });
  std::free(acc);
  return SB_OK;
}

}  // namespace
}  // namespace sb

extern "C" int sb_bsr_linear(const sb_linear *w, const float *x, int64_t B, float *y,
                             int num_threads) {
  if (num_threads < 1 || num_threads > sb::kMaxThreads) return SB_ETHREADS;
  if (!w) return SB_EINVAL;
  const int64_t M = w->rows, K = w->cols, R = w->block_rows, C = w->block_cols;
  if (M < 0 || K < 0 || B < 0 || R < 1 || C < 1 || M % R || K % C || !w->row_ptr || !y ||
      (K > 0 && B > 0 && !x))
    return SB_EINVAL;
  if (w->row_ptr[M / R] > 0 && (!w->col_idx || !w->values)) return SB_EINVAL;
  if (M == 0 || B == 0) return SB_OK;
  const int act = (int)w->act;
  if (w->act < 0 || w->act > sb::kActGelu) return SB_EINVAL;
  if (w->index_bits == 32)
    return sb::bsr_linear(M, K, R, C, w->row_ptr, (const int32_t *)w->col_idx, w->values,
                          w->bias, act, x, B, y, num_threads);
  if (w->index_bits == 16)
    return sb::bsr_linear(M, K, R, C, w->row_ptr, (const int16_t *)w->col_idx, w->values,
                          w->bias, act, x, B, y, num_threads);
  return SB_EINDEX;
}
