// Transformer blocks around the sparse linears: add + LayerNorm over the last axis, scaled
// dot-product attention with an additive mask on the Linear outputs' [B, T, H*dh] layout, the
// embedding lookup (rows of a table gathered by token id) and y = alpha * a (+ b).
//
// Attention per (batch, head): K^T is packed once ([dh][Tk rounded up to 16]); then, per block
// of up to 24 queries, S = Q K^T from register tiles (6 queries x 64 keys: 24 zmm accumulators,
// 6 broadcasts of q and 4 loads of K^T per head-dim step), softmax over the keys in place
// (scale, mask, max-subtracted exp), and O = P V from tiles of 6 queries x 64 head-dim values
// streaming V rows straight from the input. The 1/sum is applied at the store. Threads take
// whole (batch, head) pairs.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

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

// ----------------------------------------------------------------------------- attention

constexpr int64_t kQueryBlock = 24;  // queries per softmax block (S block: 24 x Tk floats)
constexpr float kExpFloor = -87.0f;  // exp of anything below is stored as exactly 0

struct Attn {
  const float *q, *k, *v, *mask;
  int64_t msb, msh, msr;  // mask strides (batch, head, query row); keys contiguous
  int64_t batch, tq, tk, heads, dh, ld, tkp;
  float scale;
  float *out;
};

#if SB_AVX512
SB_INLINE __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

// S[r, j0 .. j0+16*NV) = sum_d Q[r, d] Kt[d, j0 ..] for R query rows.
template <int R, int NV>
SB_INLINE void qk_tile(const float *q, int64_t ld, const float *kt, int64_t tkp, int64_t dh,
                       float *s, int64_t sld) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t d = 0; d < dh; ++d) {
    __m512 kv[NV];
    for (int c = 0; c < NV; ++c) kv[c] = _mm512_loadu_ps(kt + d * tkp + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512 qb = _mm512_set1_ps(q[r * ld + d]);
      for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_fmadd_ps(qb, kv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) _mm512_storeu_ps(s + r * sld + 16 * c, acc[r][c]);
}

template <int R>
void qk_rows(const float *q, int64_t ld, const float *kt, int64_t tkp, int64_t dh, float *s) {
  int64_t j = 0;
  for (; j + 64 <= tkp; j += 64) qk_tile<R, 4>(q, ld, kt + j, tkp, dh, s + j, tkp);
  const int64_t left = (tkp - j) / 16;
  if (left == 3) qk_tile<R, 3>(q, ld, kt + j, tkp, dh, s + j, tkp);
  else if (left == 2) qk_tile<R, 2>(q, ld, kt + j, tkp, dh, s + j, tkp);
  else if (left == 1) qk_tile<R, 1>(q, ld, kt + j, tkp, dh, s + j, tkp);
}

// O[r, d0 .. d0+16*NV) = inv[r] * sum_j P[r, j] V[j, d0 ..] (the last vector masked by km).
template <int R, int NV>
SB_INLINE void pv_tile(const float *p, int64_t pld, const float *v, int64_t ld, int64_t tk,
                       __mmask16 km, const float *inv, float *o, int64_t old) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < tk; ++j) {
    __m512 vv[NV];
    for (int c = 0; c < NV; ++c)
      vv[c] = c == NV - 1 ? _mm512_maskz_loadu_ps(km, v + j * ld + 16 * c)
                          : _mm512_loadu_ps(v + j * ld + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512 pb = _mm512_set1_ps(p[r * pld + j]);
      for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_fmadd_ps(pb, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m512 s = _mm512_set1_ps(inv[r]);
    for (int c = 0; c < NV; ++c) {
      const __m512 val = _mm512_mul_ps(acc[r][c], s);
      if (c == NV - 1) _mm512_mask_storeu_ps(o + r * old + 16 * c, km, val);
      else _mm512_storeu_ps(o + r * old + 16 * c, val);
    }
  }
}

template <int R>
void pv_rows(const float *p, int64_t pld, const float *v, int64_t ld, int64_t tk, int64_t dh,
             const float *inv, float *o, int64_t old) {
  for (int64_t d = 0; d < dh; d += 64) {
    const int64_t left = dh - d;
    const int nv = left >= 64 ? 4 : (int)((left + 15) / 16);
    const __mmask16 km = tail_mask(left - 16 * (nv - 1));
    if (nv == 4) pv_tile<R, 4>(p, pld, v + d, ld, tk, km, inv, o + d, old);
    else if (nv == 3) pv_tile<R, 3>(p, pld, v + d, ld, tk, km, inv, o + d, old);
    else if (nv == 2) pv_tile<R, 2>(p, pld, v + d, ld, tk, km, inv, o + d, old);
    else pv_tile<R, 1>(p, pld, v + d, ld, tk, km, inv, o + d, old);
  }
}

// Softmax of one score row in place: p = exp(s*scale + mask - max); returns 1/sum (0 when
// every key is masked with -inf: the exp of NaN differences is stored as 0).
float softmax_row(float *s, const float *mask, int64_t tk, float scale) {
  const __m512 vs = _mm512_set1_ps(scale);
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < tk; j += 16) {
    const __mmask16 k = tail_mask(tk - j);
    __m512 t = _mm512_mul_ps(_mm512_loadu_ps(s + j), vs);
    if (mask) t = _mm512_add_ps(t, _mm512_maskz_loadu_ps(k, mask + j));
    _mm512_storeu_ps(s + j, t);
    vmax = _mm512_mask_max_ps(vmax, k, vmax, t);
  }
  const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t j = 0; j < tk; j += 16) {
    const __mmask16 k = tail_mask(tk - j);
    const __m512 t = _mm512_sub_ps(_mm512_loadu_ps(s + j), mx);
    const __mmask16 live = _mm512_mask_cmp_ps_mask(k, t, _mm512_set1_ps(kExpFloor), _CMP_GE_OQ);
    const __m512 e = _mm512_maskz_mov_ps(live, exp_neg_ps(t));
    _mm512_storeu_ps(s + j, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  const float sum = _mm512_reduce_add_ps(vsum);
  return sum > 0.0f ? 1.0f / sum : 0.0f;  // every key masked with -inf: a zero output row
}
#else
float softmax_row(float *s, const float *mask, int64_t tk, float scale) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < tk; ++j) {
    s[j] = s[j] * scale + (mask ? mask[j] : 0.0f);
    mx = s[j] > mx ? s[j] : mx;
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < tk; ++j) {
    const float t = s[j] - mx;
    s[j] = t >= kExpFloor ? std::exp(t) : 0.0f;
    sum += s[j];
  }
  return sum > 0.0f ? 1.0f / sum : 0.0f;  // every key masked with -inf: a zero output row
}
#endif

// One (batch, head) pair; scratch holds K^T (dh x tkp) and one S block (kQueryBlock x tkp).
void attend(const Attn &a, int64_t b, int64_t h, float *kt, float *sblk) {
  const int64_t ld = a.ld, dh = a.dh, tk = a.tk, tkp = a.tkp;
  const float *q = a.q + b * a.tq * ld + h * dh;
  const float *k = a.k + b * tk * ld + h * dh;
  const float *v = a.v + b * tk * ld + h * dh;
  float *o = a.out + b * a.tq * ld + h * dh;
  const float *mbase = a.mask ? a.mask + b * a.msb + h * a.msh : nullptr;
  int64_t jfull = 0, dfull = 0;
#if SB_AVX512
  jfull = tk / 16 * 16, dfull = dh / 16 * 16;  // pack K^T: 16 x 16 blocks, then the edges
  for (int64_t j = 0; j < jfull; j += 16)
    for (int64_t d = 0; d < dfull; d += 16) transpose16(k + j * ld + d, ld, kt + d * tkp + j, tkp);
#endif
  for (int64_t j = 0; j < tk; ++j) {  // (contiguous reads of each key row)
    const float *kr = k + j * ld;
    for (int64_t d = j < jfull ? dfull : 0; d < dh; ++d) kt[d * tkp + j] = kr[d];
  }
  for (int64_t d = 0; d < dh; ++d)  // zero padding up to tkp keys
    for (int64_t j = tk; j < tkp; ++j) kt[d * tkp + j] = 0.0f;
  float inv[kQueryBlock];
  for (int64_t i0 = 0; i0 < a.tq; i0 += kQueryBlock) {
    const int64_t rows = a.tq - i0 < kQueryBlock ? a.tq - i0 : kQueryBlock;
#if SB_AVX512
    int64_t r = 0;
    for (; r + 6 <= rows; r += 6) qk_rows<6>(q + (i0 + r) * ld, ld, kt, tkp, dh, sblk + r * tkp);
    for (; r + 2 <= rows; r += 2) qk_rows<2>(q + (i0 + r) * ld, ld, kt, tkp, dh, sblk + r * tkp);
    for (; r < rows; ++r) qk_rows<1>(q + (i0 + r) * ld, ld, kt, tkp, dh, sblk + r * tkp);
#else
    for (int64_t r = 0; r < rows; ++r) {
      float *s = sblk + r * tkp;
      for (int64_t j = 0; j < tk; ++j) s[j] = 0.0f;
      const float *qr = q + (i0 + r) * ld;
      for (int64_t d = 0; d < dh; ++d) {
        const float qd = qr[d];
        const float *kr = kt + d * tkp;
        for (int64_t j = 0; j < tk; ++j) s[j] += qd * kr[j];
      }
    }
#endif
    for (int64_t r = 0; r < rows; ++r)
      inv[r] = softmax_row(sblk + r * tkp, mbase ? mbase + (i0 + r) * a.msr : nullptr, tk,
                           a.scale);
#if SB_AVX512
    r = 0;
    for (; r + 6 <= rows; r += 6)
      pv_rows<6>(sblk + r * tkp, tkp, v, ld, tk, dh, inv + r, o + (i0 + r) * ld, ld);
    for (; r + 2 <= rows; r += 2)
      pv_rows<2>(sblk + r * tkp, tkp, v, ld, tk, dh, inv + r, o + (i0 + r) * ld, ld);
    for (; r < rows; ++r)
      pv_rows<1>(sblk + r * tkp, tkp, v, ld, tk, dh, inv + r, o + (i0 + r) * ld, ld);
#else
    for (int64_t r = 0; r < rows; ++r) {
      float *orow = o + (i0 + r) * ld;
      const float *p = sblk + r * tkp;
      for (int64_t d = 0; d < dh; ++d) orow[d] = 0.0f;
      for (int64_t j = 0; j < tk; ++j) {
        const float pj = p[j];
        const float *vr = v + j * ld;
        for (int64_t d = 0; d < dh; ++d) orow[d] += pj * vr[d];
      }
      for (int64_t d = 0; d < dh; ++d) orow[d] *= inv[r];
    }
#endif
  }
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

extern "C" int sb_attention(const float *q, const float *k, const float *v, const float *mask,
                            int64_t mask_batch_stride, int64_t mask_head_stride,
                            int64_t mask_row_stride, int64_t batch, int64_t seq_q,
                            int64_t seq_k, int64_t heads, int64_t head_dim, float scale,
                            float *out, int num_threads) {
  if (num_threads < 1 || num_threads > sb::kMaxThreads) return SB_ETHREADS;
  if (!q || !k || !v || !out || batch < 0 || seq_q < 0 || seq_k < 1 || heads < 1 ||
      head_dim < 1 || mask_batch_stride < 0 || mask_head_stride < 0 || mask_row_stride < 0)
    return SB_EINVAL;
  if (batch == 0 || seq_q == 0) return SB_OK;
  sb::Attn a{q, k, v, mask, mask_batch_stride, mask_head_stride, mask_row_stride,
             batch, seq_q, seq_k, heads, head_dim, heads * head_dim, (seq_k + 15) / 16 * 16,
             scale, out};
  const int64_t pairs = batch * heads;
  const size_t floats = (size_t)(head_dim + sb::kQueryBlock) * (size_t)a.tkp;
  std::atomic<int> status{SB_OK};
  const int threads = pairs * seq_q * seq_k * head_dim < 65536 ? 1 : num_threads;
  const int64_t chunks = sb::chunk_count(pairs, threads, pairs);  // one pair per chunk
  sb::parallel_for(threads, chunks, [&](int64_t c) {
    const int64_t lo = pairs * c / chunks, hi = pairs * (c + 1) / chunks;
    float *scratch = static_cast<float *>(std::malloc(floats * sizeof(float)));
    if (!scratch) {
      status.store(SB_ENOMEM, std::memory_order_relaxed);
      return;
    }
    for (int64_t p = lo; p < hi; ++p)
      sb::attend(a, p / heads, p % heads, scratch, scratch + (size_t)head_dim * a.tkp);
    std::free(scratch);
  });
  return status.load();
}

extern "C" int sb_gather_rows(const float *table, int64_t rows, int64_t cols, const int64_t *idx,
                              int64_t n, float *y) {
  if (!table || !y || (n > 0 && !idx) || rows < 1 || cols < 1 || n < 0) return SB_EINVAL;
  for (int64_t i = 0; i < n; ++i) {  // check first: a bad id leaves y untouched
    const int64_t r = idx[i] < 0 ? idx[i] + rows : idx[i];
    if (r < 0 || r >= rows) return SB_EINVAL;
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = idx[i] < 0 ? idx[i] + rows : idx[i];
    std::memcpy(y + i * cols, table + r * cols, (size_t)cols * sizeof(float));
  }
  return SB_OK;
}

extern "C" int sb_scale_add(const float *a, float alpha, const float *b, int64_t b_size,
                            int64_t n, float *y, int num_threads) {
  if (num_threads < 1 || num_threads > sb::kMaxThreads) return SB_ETHREADS;
  if (!a || !y || n < 0 || (b && (b_size < 1 || n % b_size))) return SB_EINVAL;
  const int threads = n < (int64_t)1 << 17 ? 1 : num_threads;
  const int64_t chunks = sb::chunk_count((n + 1023) / 1024, threads, 4);
  sb::parallel_for(threads, chunks, [&](int64_t c) {
    const int64_t lo = n * c / chunks / 16 * 16;  // chunk edges on whole vectors
    const int64_t hi = c == chunks - 1 ? n : n * (c + 1) / chunks / 16 * 16;
    for (int64_t i = lo; i < hi;) {  // segments within one repetition of b
      const int64_t j0 = b ? i % b_size : 0;
      const int64_t end = b && hi - i > b_size - j0 ? i + (b_size - j0) : hi;
      const float *bb = b ? b + j0 - i : nullptr;  // bb[k] = b[k % b_size] on [i, end)
      int64_t k = i;
#if SB_AVX512
      const __m512 va = _mm512_set1_ps(alpha);
      for (; k + 16 <= end; k += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(a + k), va);
        if (bb) v = _mm512_add_ps(v, _mm512_loadu_ps(bb + k));
        _mm512_storeu_ps(y + k, v);
      }
#endif
      for (; k < end; ++k) y[k] = alpha * a[k] + (bb ? bb[k] : 0.0f);
      i = end;
    }
  });
  return SB_OK;
}

extern "C" int sb_softmax(const float *x, int64_t rows, int64_t cols, float *y,
                          int num_threads) {
  if (num_threads < 1 || num_threads > sb::kMaxThreads) return SB_ETHREADS;
  if (!x || !y || rows < 0 || cols < 1) return SB_EINVAL;
  const int threads = rows * cols < (int64_t)1 << 15 ? 1 : num_threads;
  const int64_t chunks = sb::chunk_count(rows, threads, 4), padded = (cols + 15) / 16 * 16;
  std::atomic<int> status{SB_OK};
  sb::parallel_for(threads, chunks, [&](int64_t c) {
    // softmax_row reads and writes whole vectors: each row goes through a padded copy
    float *row = (float *)std::aligned_alloc(64, (size_t)padded * sizeof(float));
    if (!row) {
      status.store(SB_ENOMEM);
      return;
    }
    for (int64_t r = rows * c / chunks; r < rows * (c + 1) / chunks; ++r) {
      const float *xr = x + r * cols;
      float *yr = y + r * cols;
      bool nan = false;  // NaN or +inf in the row: torch gives NaN (softmax_row would not)
      for (int64_t j = 0; j < cols; ++j) nan |= !(xr[j] < INFINITY);
      std::memcpy(row, xr, (size_t)cols * sizeof(float));
      const float inv = nan ? 0.0f : sb::softmax_row(row, nullptr, cols, 1.0f);
      for (int64_t j = 0; j < cols; ++j) yr[j] = inv == 0.0f ? NAN : row[j] * inv;  // 0: all -inf
    }
    std::free(row);
  });
  return status.load();
}

extern "C" int sb_key_mask(const int64_t *m, int64_t batch, int64_t rows, int64_t keys, float on,
                           float off, float *y) {
  if (!m || !y || batch < 0 || rows < 1 || keys < 1) return SB_EINVAL;
  for (int64_t b = 0; b < batch; ++b) {
    float *first = y + b * rows * keys;
    for (int64_t j = 0; j < keys; ++j) first[j] = m[b * keys + j] != 0 ? on : off;
    for (int64_t i = 1; i < rows; ++i)
      std::memcpy(first + i * keys, first, (size_t)keys * sizeof(float));
  }
  return SB_OK;
}
