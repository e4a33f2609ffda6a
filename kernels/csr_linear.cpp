// CSR x dense for linear layers: Y[B, M] = X[B, K] @ W^T + bias, W = CSR(M x K).
//
// batch < transpose_batch: one CSR row at a time, a sparse dot product per batch element
//   (the row's values/indices stay in L1 across the batch). Dot products use AVX-512
//   gathers or scalar loads into independent accumulators (knob "spmv_gather").
// batch >= transpose_batch (default 3): X is transposed into XT[K, ld] per chunk of up to
//   32 batch elements (knob "batch_chunk", 16..64; ld = chunk rounded up to the vector width)
//   and every nonzero does a broadcast-FMA over the batch chunk (aligned contiguous loads).
//   AVX-512 stores go through a [16 rows][ld] tile, written as one 16-float run per batch
//   element (BERT-base's linears at 128 tokens, 90% sparse: 48 -> 34 ms for the 72 of them;
//   chunk 32 rather than 64 keeps a 768-wide XT at 96 KB: another ~5%).
// batch >= 64 with a K-panel copy of the weight (sb_linear.panel_*, AVX-512): the same
//   broadcast-FMA over 64 batch elements, panel by panel: every row of a chunk reads one
//   panel of XT (256 columns x 64 floats = 64 KB) before the next, its 64 sums kept in a
//   [rows][64] buffer between panels; the store transposes from that buffer and applies the
//   activation, GELU included (BERT-base's 72 linears, 90%, 1 thread: ~7-11% less time than
//   the row-major path; 192/384/512/768-column panels were measured slower than 256).
// Work is split into row chunks balanced by nnz (+ a per-row overhead), 2 per thread (8 cost
// BERT-base's linears 9% at 2 threads: 22.4 vs 20.5 ms), claimed dynamically by the thread
// pool (threadpool.cpp).
#include <cstdint>
#include <cstdlib>

#include "common.hpp"
#include "sparsebench_kernels.h"

namespace sb {

int g_spmv_gather = 1;
int g_transpose_batch = 3;
int g_linear_split = 2;  // K-panel path: 0 row chunks, 1 token chunks, 2 auto
int g_batch_chunk = 32;
int g_linear_chunks = 2;
int g_linear_min_parallel = 32768;
int g_linear_tile = 1;
int g_linear_panels = 1;
int g_linear_prefetch = 256;

namespace {

template <typename Idx>
SB_INLINE float dot_scalar(const float *SB_RESTRICT v, const Idx *SB_RESTRICT c, int64_t n,
                           const float *SB_RESTRICT x) {
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, a4 = 0.f, a5 = 0.f, a6 = 0.f, a7 = 0.f;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    a0 += v[j + 0] * x[c[j + 0]];
    a1 += v[j + 1] * x[c[j + 1]];
    a2 += v[j + 2] * x[c[j + 2]];
    a3 += v[j + 3] * x[c[j + 3]];
    a4 += v[j + 4] * x[c[j + 4]];
    a5 += v[j + 5] * x[c[j + 5]];
    a6 += v[j + 6] * x[c[j + 6]];
    a7 += v[j + 7] * x[c[j + 7]];
  }
  for (; j < n; ++j) a0 += v[j] * x[c[j]];
  return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
}

template <typename Idx>
SB_INLINE float dot_gather(const float *SB_RESTRICT v, const Idx *SB_RESTRICT c, int64_t n,
                           const float *SB_RESTRICT x) {
#if SB_AVX512
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 64 <= n; j += 64) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + j), _mm512_i32gather_ps(load16_idx(c + j), x, 4), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(v + j + 16),
                         _mm512_i32gather_ps(load16_idx(c + j + 16), x, 4), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(v + j + 32),
                         _mm512_i32gather_ps(load16_idx(c + j + 32), x, 4), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(v + j + 48),
                         _mm512_i32gather_ps(load16_idx(c + j + 48), x, 4), a3);
  }
  for (; j + 16 <= n; j += 16)
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + j), _mm512_i32gather_ps(load16_idx(c + j), x, 4), a0);
  if (j < n) {
    const __mmask16 k = (__mmask16)((1u << (n - j)) - 1u);
    const __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, maskload16_idx(k, c + j), x, 4);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, v + j), g, a1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#elif SB_AVX2
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j), _mm256_i32gather_ps(x, load8_idx(c + j), 4), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j + 8),
                         _mm256_i32gather_ps(x, load8_idx(c + j + 8), 4), a1);
  }
  for (; j + 8 <= n; j += 8)
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j), _mm256_i32gather_ps(x, load8_idx(c + j), 4), a0);
  float s = hsum8(_mm256_add_ps(a0, a1));
  for (; j < n; ++j) s += v[j] * x[c[j]];
  return s;
#else
  return dot_scalar(v, c, n, x);
#endif
}

// Rows [lo, hi) for every batch element, one sparse dot product each.
template <typename Idx, bool Gather>
void rows_dot(int64_t lo, int64_t hi, int64_t M, int64_t K, const int32_t *rp, const Idx *ci,
              const float *val, const float *bias, int act, const float *x, int64_t B,
              float *y) {
  for (int64_t m = lo; m < hi; ++m) {
    const int64_t s = rp[m], n = rp[m + 1] - s;
    for (int64_t b = 0; b < B; ++b) {
      const float *xb = x + b * K;
      const float d = Gather ? dot_gather(val + s, ci + s, n, xb) : dot_scalar(val + s, ci + s, n, xb);
      y[b * M + m] = finish(d, bias, m, act);
    }
  }
}


// XT[k * ld + b] = X[(b0 + b) * K + k] for k in [k0, k1), b < bc; columns bc..ld-1 zeroed.
void transpose_chunk(const float *x, int64_t K, int64_t b0, int64_t bc, int64_t ld, int64_t k0,
                     int64_t k1, float *xt) {
  int64_t kfull = k0, bfull = 0;
#if SB_AVX512
  // 16 x 16 blocks with vector shuffles; the ragged edges below stay scalar
  bfull = bc / 16 * 16;
  kfull = k0 + (k1 - k0) / 16 * 16;
  for (int64_t k = k0; k < kfull; k += 16)
    for (int64_t b = 0; b < bfull; b += 16) transpose16(x + (b0 + b) * K + k, K, xt + k * ld + b, ld);
#endif
  constexpr int64_t kb = 32;
  for (int64_t kk = k0; kk < k1; kk += kb) {
    const int64_t ke = kk + kb < k1 ? kk + kb : k1;
    for (int64_t k = kk; k < ke; ++k)
      for (int64_t b = bc; b < ld; ++b) xt[k * ld + b] = 0.f;
    for (int64_t b = 0; b < bc; ++b) {
      const float *xr = x + (b0 + b) * K;
      // elements the vector blocks wrote: k in [k0, kfull) for b < bfull
      const int64_t from = b < bfull && kk < kfull ? (ke < kfull ? ke : kfull) : kk;
      for (int64_t k = from; k < ke; ++k) xt[k * ld + b] = xr[k];
    }
  }
}

// Rows [lo, hi) against a transposed chunk XT (K x LD, LD = 16*NV or generic), bc <= LD valid.
// AVX-512: rows in groups of 16; each row's results for the LD batch elements go to a
// [16][LD] tile in L1, written out per batch element as 16 contiguous floats (one cache line
// of y per element and group instead of one per element and row).
#if SB_AVX512
// a[0..NV) += sum over nonzeros j in [j, e) of val[j] * X_j[0 .. 16*NV), X_j = row(j) (an
// aligned row of a transposed input); two FMA chains per vector.
template <int NV, typename Row>
SB_INLINE void fma_nonzeros(__m512 *a, int64_t j, int64_t e, const float *val, Row row) {
  __m512 c2[NV];
  for (int q = 0; q < NV; ++q) c2[q] = _mm512_setzero_ps();
  for (; j + 2 <= e; j += 2) {
    const __m512 v0 = _mm512_set1_ps(val[j]), v1 = _mm512_set1_ps(val[j + 1]);
    const float *x0 = row(j), *x1 = row(j + 1);
    for (int q = 0; q < NV; ++q) {
      a[q] = _mm512_fmadd_ps(v0, _mm512_load_ps(x0 + 16 * q), a[q]);
      c2[q] = _mm512_fmadd_ps(v1, _mm512_load_ps(x1 + 16 * q), c2[q]);
    }
  }
  if (j < e) {
    const __m512 v0 = _mm512_set1_ps(val[j]);
    const float *x0 = row(j);
    for (int q = 0; q < NV; ++q) a[q] = _mm512_fmadd_ps(v0, _mm512_load_ps(x0 + 16 * q), a[q]);
  }
  for (int q = 0; q < NV; ++q) a[q] = _mm512_add_ps(a[q], c2[q]);
}

template <int NV, typename Idx>
void rows_bcast(int64_t lo, int64_t hi, int64_t M, const int32_t *rp, const Idx *ci,
                const float *val, const float *bias, int act, const float *xt, int64_t b0,
                int64_t bc, float *y) {
  constexpr int64_t LD = 16 * NV, G = 16;
  alignas(64) float tile[G * LD];
  for (int64_t m0 = lo; m0 < hi; m0 += G) {
    const int64_t g = hi - m0 < G ? hi - m0 : G;
    for (int64_t r = 0; r < g; ++r) {
      const int64_t m = m0 + r;
      __m512 a[NV];
      for (int q = 0; q < NV; ++q) a[q] = _mm512_setzero_ps();
      fma_nonzeros<NV>(a, rp[m], rp[m + 1], val,
                       [&](int64_t j) { return xt + (int64_t)ci[j] * LD; });
      const __m512 bb = _mm512_set1_ps(bias ? bias[m] : 0.f);
      for (int q = 0; q < NV; ++q) {
        __m512 v = _mm512_add_ps(a[q], bb);
        if (act == kActRelu) v = _mm512_max_ps(v, _mm512_setzero_ps());
        _mm512_store_ps(tile + r * LD + 16 * q, v);
      }
      if (!g_linear_tile)  // knob linear_tile=0: the row's results stored at once, stride M
        for (int64_t b = 0; b < bc; ++b) y[(b0 + b) * M + m] = tile[r * LD + b];
    }
    if (!g_linear_tile) continue;
    if (g == G) {  // y[b][m0..m0+16) = tile[0..16)[b]: a gather down the tile's column
      const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6,
                                                               5, 4, 3, 2, 1, 0),
                                              _mm512_set1_epi32((int)LD));
      for (int64_t b = 0; b < bc; ++b)
        _mm512_storeu_ps(y + (b0 + b) * M + m0, _mm512_i32gather_ps(rows, tile + b, 4));
    } else {
      for (int64_t b = 0; b < bc; ++b)
        for (int64_t r = 0; r < g; ++r) y[(b0 + b) * M + m0 + r] = tile[r * LD + b];
    }
  }
}
#endif

template <int LD, typename Idx>
void rows_bcast_generic(int64_t lo, int64_t hi, int64_t M, const int32_t *rp, const Idx *ci,
                        const float *val, const float *bias, int act, const float *xt,
                        int64_t b0, int64_t bc, float *y) {
  alignas(64) float acc[LD];
  for (int64_t m = lo; m < hi; ++m) {
    for (int b = 0; b < LD; ++b) acc[b] = 0.f;
    for (int64_t j = rp[m]; j < rp[m + 1]; ++j) {
      const float v = val[j];
      const float *SB_RESTRICT xr = xt + (int64_t)ci[j] * LD;
      for (int b = 0; b < LD; ++b) acc[b] += v * xr[b];
    }
    for (int64_t b = 0; b < bc; ++b) y[(b0 + b) * M + m] = finish(acc[b], bias, m, act);
  }
}

template <typename Idx>
void rows_chunk(int64_t lo, int64_t hi, int64_t M, const int32_t *rp, const Idx *ci,
                const float *val, const float *bias, int act, const float *xt, int64_t ld,
                int64_t b0, int64_t bc, float *y) {
#if SB_AVX512
  switch (ld) {
    case 16: return rows_bcast<1>(lo, hi, M, rp, ci, val, bias, act, xt, b0, bc, y);
    case 32: return rows_bcast<2>(lo, hi, M, rp, ci, val, bias, act, xt, b0, bc, y);
    case 48: return rows_bcast<3>(lo, hi, M, rp, ci, val, bias, act, xt, b0, bc, y);
    default: return rows_bcast<4>(lo, hi, M, rp, ci, val, bias, act, xt, b0, bc, y);
  }
#else
  switch (ld) {
    case 8: return rows_bcast_generic<8>(lo, hi, M, rp, ci, val, bias, act, xt, b0, bc, y);
    case 16: return rows_bcast_generic<16>(lo, hi, M, rp, ci, val, bias, act, xt, b0, bc, y);
    case 24: return rows_bcast_generic<24>(lo, hi, M, rp, ci, val, bias, act, xt, b0, bc, y);
    case 32: return rows_bcast_generic<32>(lo, hi, M, rp, ci, val, bias, act, xt, b0, bc, y);
    case 40: return rows_bcast_generic<40>(lo, hi, M, rp, ci, val, bias, act, xt, b0, bc, y);
    case 48: return rows_bcast_generic<48>(lo, hi, M, rp, ci, val, bias, act, xt, b0, bc, y);
    case 56: return rows_bcast_generic<56>(lo, hi, M, rp, ci, val, bias, act, xt, b0, bc, y);
    default: return rows_bcast_generic<64>(lo, hi, M, rp, ci, val, bias, act, xt, b0, bc, y);
  }
#endif
}

#if SB_AVX512
// Rows [lo, hi) of the K-panel layout against XT (K x 64): acc[(m - lo) * 64 + b] sums panel
// by panel (no bias, no activation).
void panels_accumulate(int64_t lo, int64_t hi, const sb_linear *w, const float *xt, float *acc) {
  const int64_t M = w->rows, K = w->cols;
  constexpr int NV = 4;
  constexpr int64_t LD = 64;
  const int64_t kp = w->panel_cols, np = (K + kp - 1) / kp;
  const uint8_t *off = w->panel_offsets;
  const float *val = w->panel_values;
  for (int64_t p = 0; p < np; ++p) {
    const float *xp = xt + p * kp * LD;
    const int32_t *rp = w->panel_ptr + p * (M + 1);
    for (int64_t m = lo; m < hi; ++m) {
      float *o = acc + (m - lo) * LD;
      if (g_linear_prefetch) {
        const int64_t ahead = rp[m + 1] + g_linear_prefetch;
        _mm_prefetch((const char *)(val + ahead), _MM_HINT_T0);
        _mm_prefetch((const char *)(off + ahead), _MM_HINT_T0);
      }
      __m512 a[NV];
      for (int q = 0; q < NV; ++q) a[q] = p ? _mm512_load_ps(o + 16 * q) : _mm512_setzero_ps();
      fma_nonzeros<NV>(a, rp[m], rp[m + 1], val,
                       [&](int64_t j) { return xp + (int64_t)off[j] * LD; });
      for (int q = 0; q < NV; ++q) _mm512_store_ps(o + 16 * q, a[q]);
    }
  }
}

// Bias and activation applied in place to rows [lo, hi) of panels_accumulate's sums: the
// result is the next layer's transposed input (row m = feature m of 64 batch elements).
void panels_finish(int64_t lo, int64_t hi, const sb_linear *w, float *acc) {
  constexpr int64_t LD = 64;
  for (int64_t m = lo; m < hi; ++m) {
    const __m512 bb = _mm512_set1_ps(w->bias ? w->bias[m] : 0.f);
    float *o = acc + (m - lo) * LD;
    for (int64_t q = 0; q < LD; q += 16)
      _mm512_store_ps(o + q, act_ps(_mm512_add_ps(_mm512_load_ps(o + q), bb), (int)w->act));
  }
}

// y rows b0..b0+bc, columns [lo, hi) from panels_accumulate's sums, with bias and activation
// (GELU too), transposed on the store (16 rows at a time).
void panels_store(int64_t lo, int64_t hi, const sb_linear *w, const float *acc, int64_t b0,
                  int64_t bc, float *y) {
  const int64_t M = w->rows;
  const float *bias = w->bias;
  const int act = (int)w->act;
  constexpr int64_t LD = 64;
  const __m512i rows = _mm512_mullo_epi32(
      _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(LD));
  for (int64_t m0 = lo; m0 < hi; m0 += 16) {
    const float *tile = acc + (m0 - lo) * LD;
    if (hi - m0 >= 16) {  // y[b][m0..m0+16) = column b of the 16 x 64 tile
      const __m512 bb = bias ? _mm512_loadu_ps(bias + m0) : _mm512_setzero_ps();
      for (int64_t b = 0; b < bc; ++b) {
        const __m512 v = _mm512_add_ps(_mm512_i32gather_ps(rows, tile + b, 4), bb);
        _mm512_storeu_ps(y + (b0 + b) * M + m0, act_ps(v, act));
      }
    } else {
      for (int64_t b = 0; b < bc; ++b)
        for (int64_t m = m0; m < hi; ++m)
          y[(b0 + b) * M + m] = act_scalar(tile[(m - m0) * LD + b] + (bias ? bias[m] : 0.f), act);
    }
  }
}

void rows_panels(int64_t lo, int64_t hi, const sb_linear *w, const float *xt, float *acc,
                 int64_t b0, int64_t bc, float *y) {
  panels_accumulate(lo, hi, w, xt, acc);
  panels_store(lo, hi, w, acc, b0, bc, y);
}

// The batched path on K-panel copies: chunks of 64 batch elements (the last zero-padded),
// transposed a group at a time like csr_linear() below, then rows_panels() per (weight, row
// chunk). The n weights (same K) share the transposes and the parallel regions: attention's
// Q, K and V projections of one input.
int csr_linear_panels(const sb_linear *const *ws, int64_t n, const float *x, int64_t B,
                      float *const *ys, int nt) {
  const int64_t K = ws[0]->cols;
  constexpr int64_t LD = 64;
  const int64_t nbc = (B + LD - 1) / LD, per = K * LD, kc = chunk_count(K, nt, 2);
  int64_t nc[kMaxGroup], first[kMaxGroup + 1], base[kMaxGroup], rows = 0;
  first[0] = 0;
  for (int64_t i = 0; i < n; ++i) {  // row chunks of weight i: jobs [first[i], first[i + 1])
    nc[i] = chunk_count(ws[i]->rows, nt, g_linear_chunks);
    first[i + 1] = first[i] + nc[i];
    base[i] = rows;
    rows += ws[i]->rows;
  }
  const int64_t jobs = first[n];
  int64_t group = (int64_t)(2 << 20) / (per * 4);
  const int64_t most = kMaxChunks / (jobs > kc ? jobs : kc);
  group = group > most ? most : group;
  group = group < 1 ? 1 : group > nbc ? nbc : group;
  float *xt = scratch(kScratchTransposed, (size_t)(group * per * 4));
  float *acc = scratch(kScratchSums, (size_t)(group * rows * LD * 4));
  if (!xt || !acc) return SB_ENOMEM;
  for (int64_t g0 = 0; g0 < nbc; g0 += group) {
    const int64_t ng = nbc - g0 < group ? nbc - g0 : group;
    auto rows_of = [&](int64_t i, int64_t *b0) {
      *b0 = (g0 + i) * LD;
      return B - *b0 < LD ? B - *b0 : LD;
    };
    // Tokens: when the group's batch chunks split evenly over the threads, each chunk is one
    // job that transposes its tokens and runs every row of every weight on them: one parallel
    // region, the transposed tokens read only by the core that wrote them, and y's rows of
    // those tokens written by that core (the next layer split the same way reads them there).
    if (g_linear_split == 1 || (g_linear_split == 2 && nt > 1 && ng % nt == 0)) {
      parallel_for(nt, ng, [&](int64_t i) {
        int64_t b0;
        const int64_t bc = rows_of(i, &b0);
        transpose_chunk(x, K, b0, bc, LD, 0, K, xt + i * per);
        for (int64_t w = 0; w < n; ++w)
          rows_panels(0, ws[w]->rows, ws[w], xt + i * per, acc + (i * rows + base[w]) * LD, b0,
                      bc, ys[w]);
      });
      continue;
    }
    parallel_for(nt, ng * kc, [&](int64_t c) {
      int64_t b0;
      const int64_t bc = rows_of(c / kc, &b0), part = c % kc;
      transpose_chunk(x, K, b0, bc, LD, K * part / kc, K * (part + 1) / kc, xt + (c / kc) * per);
    });
    parallel_for(nt, ng * jobs, [&](int64_t c) {
      int64_t b0, lo, hi, w = 0;
      const int64_t i = c / jobs, r = c % jobs, bc = rows_of(i, &b0);
      while (r >= first[w + 1]) ++w;
      const sb_linear *lw = ws[w];
      balanced_range(lw->row_ptr, lw->rows, 2, r - first[w], nc[w], &lo, &hi);
      rows_panels(lo, hi, lw, xt + i * per, acc + (i * rows + base[w] + lo) * LD, b0, bc, ys[w]);
    });
  }
  return SB_OK;
}

// y = second(first(x)) on K-panel copies, the intermediate never stored in (batch, features)
// form: first's sums for a chunk of 64 batch elements, with its bias and activation applied in
// place, are already second's transposed input (feature-major, 64 floats per feature). That
// skips first's transposed store and second's transpose (BERT-base's FFN: 1.5 MB each way
// per 128 tokens). Chunks that split evenly over the threads are one job each (both layers,
// no hand-over in between); otherwise both layers' rows are split, with a region per layer.
int csr_linear_chain(const sb_linear *first, const sb_linear *second, const float *x, int64_t B,
                     float *y, int nt) {
  const int64_t K = first->cols, M1 = first->rows, M2 = second->rows;
  constexpr int64_t LD = 64;
  const int64_t nbc = (B + LD - 1) / LD, per = K * LD, kc = chunk_count(K, nt, 2);
  const int64_t per_chunk = per + (M1 + M2) * LD;  // floats: transposed x, both layers' sums
  const int64_t nc1 = chunk_count(M1, nt, g_linear_chunks), nc2 = chunk_count(M2, nt, g_linear_chunks);
  int64_t group = (int64_t)(4 << 20) / (per_chunk * 4);
  const int64_t jobs = nc1 > nc2 ? nc1 : nc2, most = kMaxChunks / (jobs > kc ? jobs : kc);
  group = group > most ? most : group;
  if (nt > 1 && nbc >= nt) group = group < nt ? nt : group / nt * nt;  // chunks split evenly
  group = group < 1 ? 1 : group > nbc ? nbc : group;
  float *mem = scratch(kScratchSums, (size_t)(group * per_chunk * 4));
  if (!mem) return SB_ENOMEM;
  for (int64_t g0 = 0; g0 < nbc; g0 += group) {
    const int64_t ng = nbc - g0 < group ? nbc - g0 : group;
    auto chunk = [&](int64_t i, int64_t *b0, float **xt, float **mid, float **out) {
      *b0 = (g0 + i) * LD;
      *xt = mem + i * per_chunk;
      *mid = *xt + per;
      *out = *mid + M1 * LD;
      return B - *b0 < LD ? B - *b0 : LD;
    };
    if (nt == 1 || ng % nt == 0) {
      parallel_for(nt, ng, [&](int64_t i) {
        int64_t b0;
        float *xt, *mid, *out;
        const int64_t bc = chunk(i, &b0, &xt, &mid, &out);
        transpose_chunk(x, K, b0, bc, LD, 0, K, xt);
        panels_accumulate(0, M1, first, xt, mid);
        panels_finish(0, M1, first, mid);
        rows_panels(0, M2, second, mid, out, b0, bc, y);
      });
      continue;
    }
    parallel_for(nt, ng * kc, [&](int64_t c) {
      int64_t b0;
      float *xt, *mid, *out;
      const int64_t bc = chunk(c / kc, &b0, &xt, &mid, &out), part = c % kc;
      transpose_chunk(x, K, b0, bc, LD, K * part / kc, K * (part + 1) / kc, xt);
    });
    parallel_for(nt, ng * nc1, [&](int64_t c) {
      int64_t b0, lo, hi;
      float *xt, *mid, *out;
      chunk(c / nc1, &b0, &xt, &mid, &out);
      balanced_range(first->row_ptr, M1, 2, c % nc1, nc1, &lo, &hi);
      panels_accumulate(lo, hi, first, xt, mid + lo * LD);
      panels_finish(lo, hi, first, mid + lo * LD);
    });
    parallel_for(nt, ng * nc2, [&](int64_t c) {
      int64_t b0, lo, hi;
      float *xt, *mid, *out;
      const int64_t bc = chunk(c / nc2, &b0, &xt, &mid, &out);
      balanced_range(second->row_ptr, M2, 2, c % nc2, nc2, &lo, &hi);
      rows_panels(lo, hi, second, mid, out + lo * LD, b0, bc, y);
    });
  }
  return SB_OK;
}
#endif

template <typename Idx>
int csr_linear(int64_t M, int64_t K, const int32_t *rp, const Idx *ci, const float *val,
               const float *bias, int act, const float *x, int64_t B, float *y, int nt) {
  // work too small to repay a parallel region (a few us of hand-over): stay on this thread
  if ((int64_t)rp[M] * B + 8 * M * B < g_linear_min_parallel) nt = 1;
  if (B < g_transpose_batch || B < 2) {
    const bool gather = g_spmv_gather != 0;
    const int64_t nc = chunk_count(M, nt, g_linear_chunks);
    parallel_for(nt, nc, [&](int64_t c) {
      int64_t lo, hi;
      balanced_range(rp, M, 8, c, nc, &lo, &hi);
      if (gather) rows_dot<Idx, true>(lo, hi, M, K, rp, ci, val, bias, act, x, B, y);
      else rows_dot<Idx, false>(lo, hi, M, K, rp, ci, val, bias, act, x, B, y);
      if (act == kActGelu)
        for (int64_t b = 0; b < B; ++b) act_range(y + b * M + lo, hi - lo, act);
    });
    return SB_OK;
  }
#if SB_AVX512
  constexpr int64_t kVec = 16;
#else
  constexpr int64_t kVec = 8;
#endif
  // batch elements per transposed chunk: a multiple of kVec in [kVec, 64]
  int64_t bchunk = g_batch_chunk < kVec ? kVec : g_batch_chunk > 64 ? 64 : g_batch_chunk;
  bchunk = bchunk / kVec * kVec;
  const int64_t ld_max = B < bchunk ? (B + kVec - 1) / kVec * kVec : bchunk;
  // Batch chunks are transposed and multiplied a group at a time: two pool jobs per group
  // (not two per chunk: BERT's 128 tokens are 4 chunks); a group's XT stays within ~2 MB.
  const int64_t nbc = (B + bchunk - 1) / bchunk, per = K * ld_max;
  int64_t group = (int64_t)(2 << 20) / (per * 4 > 0 ? per * 4 : 1);
  const int64_t nc = chunk_count(M, nt, g_linear_chunks), kc = chunk_count(K, nt, 2);
  const int64_t most = kMaxChunks / (nc > kc ? nc : kc);  // a job has at most kMaxChunks
  group = group > most ? most : group;
  group = group < 1 ? 1 : group > nbc ? nbc : group;
  float *xt = scratch(kScratchTransposed, (size_t)(group * per * 4 + 64));
  if (!xt) return SB_ENOMEM;
  for (int64_t g0 = 0; g0 < nbc; g0 += group) {
    const int64_t ng = nbc - g0 < group ? nbc - g0 : group;
    auto chunk = [&](int64_t i, int64_t *b0, int64_t *bc, int64_t *ld, float **xti) {
      *b0 = (g0 + i) * bchunk;
      *bc = B - *b0 < bchunk ? B - *b0 : bchunk;
      *ld = (*bc + kVec - 1) / kVec * kVec;
      *xti = xt + i * per;
    };
    parallel_for(nt, ng * kc, [&](int64_t c) {
      int64_t b0, bc, ld;
      float *xti;
      chunk(c / kc, &b0, &bc, &ld, &xti);
      const int64_t part = c % kc;
      transpose_chunk(x, K, b0, bc, ld, K * part / kc, K * (part + 1) / kc, xti);
    });
    parallel_for(nt, ng * nc, [&](int64_t c) {
      int64_t b0, bc, ld, lo, hi;
      float *xti;
      chunk(c / nc, &b0, &bc, &ld, &xti);
      balanced_range(rp, M, 2, c % nc, nc, &lo, &hi);
      rows_chunk(lo, hi, M, rp, ci, val, bias, act, xti, ld, b0, bc, y);
      if (act == kActGelu)
        for (int64_t b = b0; b < b0 + bc; ++b) act_range(y + b * M + lo, hi - lo, act);
    });
  }
  return SB_OK;
}

template <typename Idx>
int csr_panels(int64_t M, int64_t K, const int32_t *rp, const Idx *ci, const float *val,
               int64_t kp, int32_t *pp, uint8_t *off, float *pv) {
  const int64_t np = (K + kp - 1) / kp;
  for (int64_t j = 0; j < rp[M]; ++j)
    if (ci[j] < 0 || ci[j] >= K) return SB_EINVAL;
  for (int64_t i = 0; i < np * (M + 1); ++i) pp[i] = 0;
  for (int64_t m = 0; m < M; ++m)  // counts first, at [p][m + 1]
    for (int64_t j = rp[m]; j < rp[m + 1]; ++j) ++pp[(ci[j] / kp) * (M + 1) + m + 1];
  int32_t total = 0;
  for (int64_t p = 0; p < np; ++p) {
    int32_t *row = pp + p * (M + 1);
    row[0] = total;
    for (int64_t m = 0; m < M; ++m) row[m + 1] = total += row[m + 1];
  }
  int32_t *cur = (int32_t *)std::malloc((size_t)(np * M > 0 ? np * M : 1) * sizeof(int32_t));
  if (!cur) return SB_ENOMEM;
  for (int64_t p = 0; p < np; ++p)
    for (int64_t m = 0; m < M; ++m) cur[p * M + m] = pp[p * (M + 1) + m];
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = rp[m]; j < rp[m + 1]; ++j) {
      const int64_t p = ci[j] / kp, d = cur[p * M + m]++;
      off[d] = (uint8_t)(ci[j] - p * kp);
      pv[d] = val[j];
    }
  std::free(cur);
  return SB_OK;
}

}  // namespace
}  // namespace sb

extern "C" int sb_csr_panels(const sb_linear *w, int64_t panel_cols, int32_t *panel_ptr,
                             uint8_t *panel_offsets, float *panel_values) {
  if (!w || panel_cols < 1 || panel_cols > 256 || w->rows < 0 || w->cols < 1 || !w->row_ptr ||
      !panel_ptr)
    return SB_EINVAL;
  const int64_t M = w->rows, K = w->cols;
  if (w->row_ptr[M] > 0 && (!w->col_idx || !w->values || !panel_offsets || !panel_values))
    return SB_EINVAL;
  if (w->index_bits == 32)
    return sb::csr_panels(M, K, w->row_ptr, (const int32_t *)w->col_idx, w->values, panel_cols,
                          panel_ptr, panel_offsets, panel_values);
  if (w->index_bits == 16)
    return sb::csr_panels(M, K, w->row_ptr, (const int16_t *)w->col_idx, w->values, panel_cols,
                          panel_ptr, panel_offsets, panel_values);
  return SB_EINDEX;
}

namespace {
// The argument checks of sb_csr_linear (num_threads aside); SB_OK to go on.
int check_linear(const sb_linear *w, const float *x, int64_t B, const float *y) {
  if (!w) return SB_EINVAL;
  const int64_t M = w->rows, K = w->cols;
  if (M < 0 || K < 0 || B < 0 || !w->row_ptr || !y || (K > 0 && B > 0 && !x)) return SB_EINVAL;
  if (w->row_ptr[M] > 0 && (!w->col_idx || !w->values)) return SB_EINVAL;
  if (w->act < 0 || w->act > sb::kActGelu) return SB_EINVAL;
  if (w->panel_cols < 0 || w->panel_cols > 256 ||
      (w->panel_cols > 0 &&
       (!w->panel_ptr || (w->row_ptr[M] > 0 && (!w->panel_offsets || !w->panel_values)))))
    return SB_EINVAL;
  if (w->index_bits != 16 && w->index_bits != 32) return SB_EINDEX;
  return SB_OK;
}

bool panels_apply(const sb_linear *w, int64_t B) {
#if SB_AVX512
  return w->panel_cols > 0 && B >= 64 && sb::g_linear_panels;
#else
  (void)w, (void)B;
  return false;
#endif
}
}  // namespace

extern "C" int sb_csr_linear(const sb_linear *w, const float *x, int64_t B, float *y,
                             int num_threads) {
  if (num_threads < 1 || num_threads > sb::kMaxThreads) return SB_ETHREADS;
  const int bad = check_linear(w, x, B, y);
  if (bad) return bad;
  const int64_t M = w->rows, K = w->cols;
  if (M == 0 || B == 0) return SB_OK;
  const int act = (int)w->act;
#if SB_AVX512
  if (panels_apply(w, B)) return sb::csr_linear_panels(&w, 1, x, B, &y, num_threads);
#endif
  if (w->index_bits == 32)
    return sb::csr_linear(M, K, w->row_ptr, (const int32_t *)w->col_idx, w->values, w->bias, act,
                          x, B, y, num_threads);
  return sb::csr_linear(M, K, w->row_ptr, (const int16_t *)w->col_idx, w->values, w->bias, act,
                        x, B, y, num_threads);
}

extern "C" int sb_csr_linear_group(const sb_linear *const *ws, int64_t n, const float *x,
                                   int64_t B, float *const *ys, int num_threads) {
  if (num_threads < 1 || num_threads > sb::kMaxThreads) return SB_ETHREADS;
  if (!ws || !ys || n < 1 || n > sb::kMaxGroup) return SB_EINVAL;
  bool together = true;
  for (int64_t i = 0; i < n; ++i) {
    const int bad = check_linear(ws[i], x, B, ys[i]);
    if (bad) return bad;
    together = together && ws[i]->cols == ws[0]->cols && ws[i]->rows > 0 && panels_apply(ws[i], B);
  }
  if (B == 0) return SB_OK;
#if SB_AVX512
  if (together) return sb::csr_linear_panels(ws, n, x, B, ys, num_threads);
#endif
  for (int64_t i = 0; i < n; ++i) {
    const int status = sb_csr_linear(ws[i], x, B, ys[i], num_threads);
    if (status) return status;
  }
  return SB_OK;
}

extern "C" int sb_csr_linear_chain(const sb_linear *first, const sb_linear *second,
                                   const float *x, int64_t B, float *y, int num_threads) {
  if (num_threads < 1 || num_threads > sb::kMaxThreads) return SB_ETHREADS;
  if (!first || !second || first->rows != second->cols) return SB_EINVAL;
  int bad = check_linear(first, x, B, y);
  if (!bad) bad = check_linear(second, x, B, y);
  if (bad) return bad;
  if (B == 0 || second->rows == 0) return SB_OK;
#if SB_AVX512
  if (first->rows > 0 && panels_apply(first, B) && panels_apply(second, B))
    return sb::csr_linear_chain(first, second, x, B, y, num_threads);
#endif
  // otherwise two calls through an intermediate (batch, features) buffer
  float *mid = sb::scratch(sb::kScratchChain, (size_t)(B * first->rows * 4 + 64));
  if (!mid) return SB_ENOMEM;
  const int status = sb_csr_linear(first, x, B, mid, num_threads);
  return status ? status : sb_csr_linear(second, mid, B, y, num_threads);
}
