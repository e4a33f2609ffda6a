// Dense convolution of few input channels (an image model's stem: 3 -> 64, 7x7 / 2), output
// channels in vector lanes, with an optional fused max-pool.
//
// The CSR kernel (csr_conv.cpp) puts output positions in the lanes and broadcasts weights;
// with 3 input channels its packed copies (14 for a 7x7 / 2 stem) do not fit L1 beside the
// weight stream, and it reached ~110 GFLOP/s at one thread. Here the weights are repacked once
// as [channel group][tap][up to 64 channels], and a register tile is NP = 6 output positions x
// up to 4 vectors of 16 output channels: per tap, 4 weight vectors loaded, NP input values
// broadcast straight from the NCHW input (no packing), 4 x NP FMAs. The weights (37.6 KB for
// the 7x7 stem) stay in L1. A conv output row is computed into a small NHWC row buffer, bias
// and activation applied in registers; then either transposed into y's rows (16 x 16 register
// transposes), or, with a pool, kept in a ring of the last `pool_kh` rows, max-pooled across
// channels' vectors and only the pooled row transposed into y: the conv's output map (3.2 MB for
// the ResNet-50 stem) is never written.
//
// Threads claim chunks of output rows (pooled rows with a pool) of each (image, channel group);
// a chunk recomputes the conv rows its first pooled row shares with the previous chunk.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "common.hpp"
#include "sparsebench_kernels.h"

struct sb_dense_conv {
  int64_t magic;
  int64_t cout, cin, kh, kw, sh, sw, ph, pw, act;
  int64_t pool_kh, pool_kw, pool_sh, pool_sw, pool_ph, pool_pw, pool_ceil;  // pool_kh 0: none
  int64_t groups;  // channel groups of up to 64 (kGroup) output channels
  float *wt;       // [group][cin * kh * kw][kGroup]: the weights, zero past cout
  float *bias;     // [groups * kGroup], zero past cout (and without a bias)
};

namespace sb {
namespace {

constexpr int64_t kMagic = 0x5342444e53ll;  // "SBDNS"
constexpr int64_t kGroup = 64;              // output channels per group: 4 vectors of 16
constexpr int NP = 6;                       // output positions per register tile

struct Shape {
  int64_t n, h, w, ho, wo, yh, yw;  // input, conv output, y (pooled or conv)
};

#if SB_AVX512
// KW, SW: the kernel width and stride as constants (0: the plan's, at run time), so that the
// common stems' tap loops unroll with constant offsets.
template <int NV, int P, int KW, int SW>
SB_INLINE void conv_tile(const sb_dense_conv *c, const float *SB_RESTRICT xpad, int64_t wp,
                         const float *SB_RESTRICT wt, const float *bias, int64_t ox0,
                         int64_t ky0, int64_t ky1, float *SB_RESTRICT row) {
  const int64_t kw = KW ? KW : c->kw, sw = SW ? SW : c->sw;
  __m512 acc[P][NV];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_setzero_ps();
  const int64_t khw = c->kh * kw;
  for (int64_t ci = 0; ci < c->cin; ++ci)
    for (int64_t ky = ky0; ky < ky1; ++ky) {
      const float *xr = xpad + (ci * c->kh + ky) * wp + ox0 * sw;
      const float *wr = wt + (ci * khw + ky * kw) * kGroup;
      // not unrolled: GCC's full unroll of the 7 taps reuses broadcasts across taps but runs
      // out of registers (7x7 / 2 stem: 2.16 vs 1.94 ms at one thread, without a pool)
      for (int64_t kx = 0; kx < kw; ++kx) {
        __m512 wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = _mm512_load_ps(wr + kx * kGroup + 16 * v);
        for (int p = 0; p < P; ++p) {
          const __m512 b = _mm512_set1_ps(xr[p * sw + kx]);
          for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_fmadd_ps(wv[v], b, acc[p][v]);
        }
      }
    }
  for (int v = 0; v < NV; ++v) {
    const __m512 bb = _mm512_load_ps(bias + 16 * v);
    for (int p = 0; p < P; ++p) {
      __m512 r = _mm512_add_ps(acc[p][v], bb);
      if (c->act == kActRelu) r = _mm512_max_ps(r, _mm512_setzero_ps());
      _mm512_store_ps(row + (ox0 + p) * kGroup + 16 * v, r);
    }
  }
}

template <int NV, int KW, int SW>
void conv_row_nv(const sb_dense_conv *c, const Shape &s, const float *xpad, int64_t wp,
                 const float *wt, const float *bias, int64_t ky0, int64_t ky1, float *row) {
  int64_t ox = 0;
  for (; ox + NP <= s.wo; ox += NP)
    conv_tile<NV, NP, KW, SW>(c, xpad, wp, wt, bias, ox, ky0, ky1, row);
  switch (s.wo - ox) {
    case 1: conv_tile<NV, 1, KW, SW>(c, xpad, wp, wt, bias, ox, ky0, ky1, row); break;
    case 2: conv_tile<NV, 2, KW, SW>(c, xpad, wp, wt, bias, ox, ky0, ky1, row); break;
    case 3: conv_tile<NV, 3, KW, SW>(c, xpad, wp, wt, bias, ox, ky0, ky1, row); break;
    case 4: conv_tile<NV, 4, KW, SW>(c, xpad, wp, wt, bias, ox, ky0, ky1, row); break;
    case 5: conv_tile<NV, 5, KW, SW>(c, xpad, wp, wt, bias, ox, ky0, ky1, row); break;
    default: break;
  }
}

template <int NV>
void conv_row_of(const sb_dense_conv *c, const Shape &s, const float *xpad, int64_t wp,
                 const float *wt, const float *bias, int64_t ky0, int64_t ky1, float *row) {
  if (c->kw == 7 && c->sw == 2) return conv_row_nv<NV, 7, 2>(c, s, xpad, wp, wt, bias, ky0, ky1, row);
  if (c->kw == 3 && c->sw == 2) return conv_row_nv<NV, 3, 2>(c, s, xpad, wp, wt, bias, ky0, ky1, row);
  if (c->kw == 3 && c->sw == 1) return conv_row_nv<NV, 3, 1>(c, s, xpad, wp, wt, bias, ky0, ky1, row);
  conv_row_nv<NV, 0, 0>(c, s, xpad, wp, wt, bias, ky0, ky1, row);
}
#endif

// Conv row oy of image x (Cin x H x W) for the channels of group g into row[ox * kGroup + c]
// (bias and activation applied). The kernel rows it reads are first copied into xpad, with the
// horizontal padding as zeros: [Cin][kh][wp = W + 2 pw]; rows in the vertical padding are
// skipped.
void conv_row(const sb_dense_conv *c, const Shape &s, const float *x, int64_t g, int64_t oy,
              float *xpad, float *row) {
  const float *wt = c->wt + g * c->cin * c->kh * c->kw * kGroup;
  const float *bias = c->bias + g * kGroup;
  int64_t ky0 = c->ph - oy * c->sh, ky1 = s.h + c->ph - oy * c->sh;
  if (ky0 < 0) ky0 = 0;
  if (ky1 > c->kh) ky1 = c->kh;
  const int64_t wp = s.w + 2 * c->pw;
  for (int64_t ci = 0; ci < c->cin; ++ci)
    for (int64_t ky = ky0; ky < ky1; ++ky) {
      float *d = xpad + (ci * c->kh + ky) * wp;
      std::memset(d, 0, (size_t)c->pw * sizeof(float));
      std::memcpy(d + c->pw, x + (ci * s.h + oy * c->sh + ky - c->ph) * s.w,
                  (size_t)s.w * sizeof(float));
      std::memset(d + c->pw + s.w, 0, (size_t)c->pw * sizeof(float));
    }
  const int64_t nv = (c->cout - g * kGroup) / 16 < 4 ? (c->cout - g * kGroup) / 16 : 4;
#if SB_AVX512
  switch (nv) {
    case 1: return conv_row_of<1>(c, s, xpad, wp, wt, bias, ky0, ky1, row);
    case 2: return conv_row_of<2>(c, s, xpad, wp, wt, bias, ky0, ky1, row);
    case 3: return conv_row_of<3>(c, s, xpad, wp, wt, bias, ky0, ky1, row);
    default: return conv_row_of<4>(c, s, xpad, wp, wt, bias, ky0, ky1, row);
  }
#else
  const int64_t khw = c->kh * c->kw, lanes = 16 * nv;
  for (int64_t ox = 0; ox < s.wo; ++ox) {
    float *r = row + ox * kGroup;
    for (int64_t j = 0; j < lanes; ++j) r[j] = bias[j];
    for (int64_t ci = 0; ci < c->cin; ++ci)
      for (int64_t ky = ky0; ky < ky1; ++ky) {
        const float *xr = xpad + (ci * c->kh + ky) * wp + ox * c->sw;
        for (int64_t kx = 0; kx < c->kw; ++kx) {
          const float xv = xr[kx];
          const float *SB_RESTRICT wv = wt + (ci * khw + ky * c->kw + kx) * kGroup;
          for (int64_t j = 0; j < lanes; ++j) r[j] += wv[j] * xv;
        }
      }
    if (c->act == kActRelu)
      for (int64_t j = 0; j < lanes; ++j) r[j] = r[j] < 0.f ? 0.f : r[j];
  }
#endif
}

// y rows: dst[j * plane + i] = buf[i * kGroup + j] for positions i < npos, channels j < lanes.
// buf holds at least round_up(npos, 16) positions.
void store_transposed(const float *buf, int64_t npos, int64_t lanes, float *dst, int64_t plane) {
#if SB_AVX512
  for (int64_t i0 = 0; i0 < npos; i0 += 16) {
    const int64_t m = npos - i0 < 16 ? npos - i0 : 16;
    for (int64_t j0 = 0; j0 < lanes; j0 += 16) {
      if (m == 16) {
        transpose16(buf + i0 * kGroup + j0, kGroup, dst + j0 * plane + i0, plane);
        continue;
      }
      alignas(64) float t[16 * 16];
      transpose16(buf + i0 * kGroup + j0, kGroup, t, 16);
      for (int64_t j = 0; j < 16; ++j)
        std::memcpy(dst + (j0 + j) * plane + i0, t + 16 * j, (size_t)m * sizeof(float));
    }
  }
#else
  for (int64_t j = 0; j < lanes; ++j)
    for (int64_t i = 0; i < npos; ++i) dst[j * plane + i] = buf[i * kGroup + j];
#endif
}

// The pooled row's window maxima over the NHWC conv rows rows[0..nrows) into out[px][c].
void pool_row(const sb_dense_conv *c, const Shape &s, const float *const *rows, int64_t nrows,
              int64_t lanes, float *SB_RESTRICT out) {
  const float lowest = -std::numeric_limits<float>::infinity();
  for (int64_t px = 0; px < s.yw; ++px) {
    int64_t x0 = px * c->pool_sw - c->pool_pw, x1 = x0 + c->pool_kw;
    if (x0 < 0) x0 = 0;
    if (x1 > s.wo) x1 = s.wo;
    float *SB_RESTRICT o = out + px * kGroup;
    for (int64_t j = 0; j < lanes; ++j) o[j] = lowest;
    for (int64_t r = 0; r < nrows; ++r)
      for (int64_t ox = x0; ox < x1; ++ox) {
        const float *SB_RESTRICT v = rows[r] + ox * kGroup;
        for (int64_t j = 0; j < lanes; ++j) o[j] = v[j] > o[j] ? v[j] : o[j];
      }
  }
}

SB_INLINE int64_t round16(int64_t v) { return (v + 15) / 16 * 16; }

// Per-thread scratch: the conv row ring (one row without a pool), the pooled row, the padded
// input rows of one conv row.
size_t scratch_bytes(const sb_dense_conv *c, const Shape &s) {
  const int64_t ring = c->pool_kh ? c->pool_kh : 1;
  const int64_t floats = ring * round16(s.wo) * kGroup + round16(s.yw) * kGroup +
                         c->cin * c->kh * (s.w + 2 * c->pw);
  return (size_t)floats * sizeof(float);
}

// Output rows [r0, r1) of image n, channel group g; mem: scratch_bytes of this thread's.
void run_rows(const sb_dense_conv *c, const Shape &s, const float *x, float *y, int64_t n,
              int64_t g, int64_t r0, int64_t r1, float *mem) {
  const float *xn = x + n * c->cin * s.h * s.w;
  const int64_t lanes = (c->cout - g * kGroup) < kGroup ? c->cout - g * kGroup : kGroup;
  float *yg = y + (n * c->cout + g * kGroup) * s.yh * s.yw;
  const int64_t rowf = round16(s.wo) * kGroup;  // floats per NHWC conv row
  float *xpad = mem + (c->pool_kh ? c->pool_kh : 1) * rowf + round16(s.yw) * kGroup;
  if (!c->pool_kh) {
    for (int64_t oy = r0; oy < r1; ++oy) {
      conv_row(c, s, xn, g, oy, xpad, mem);
      store_transposed(mem, s.wo, lanes, yg + oy * s.yw, s.yh * s.yw);
    }
    return;
  }
  // a ring of the last pool_kh conv rows (slot = row % pool_kh), then the pooled row
  const int64_t ring = c->pool_kh;
  float *pooled = mem + ring * rowf;
  int64_t have[16];
  for (int64_t i = 0; i < ring; ++i) have[i] = -1;
  for (int64_t py = r0; py < r1; ++py) {
    int64_t y0 = py * c->pool_sh - c->pool_ph, y1 = y0 + c->pool_kh;
    if (y0 < 0) y0 = 0;
    if (y1 > s.ho) y1 = s.ho;
    const float *rows[16];
    for (int64_t oy = y0; oy < y1; ++oy) {
      float *slot = mem + (oy % ring) * rowf;
      if (have[oy % ring] != oy) {
        conv_row(c, s, xn, g, oy, xpad, slot);
        have[oy % ring] = oy;
      }
      rows[oy - y0] = slot;
    }
    pool_row(c, s, rows, y1 - y0, lanes, pooled);
    store_transposed(pooled, s.yw, lanes, yg + py * s.yw, s.yh * s.yw);
  }
}

}  // namespace
}  // namespace sb

extern "C" int sb_dense_conv_create(const float *weight, const float *bias, int64_t cout,
                                    int64_t cin, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                    int64_t ph, int64_t pw, int act, int64_t pool_kh,
                                    int64_t pool_kw, int64_t pool_sh, int64_t pool_sw,
                                    int64_t pool_ph, int64_t pool_pw, int64_t pool_ceil,
                                    sb_dense_conv **out) {
  if (!out) return SB_EINVAL;
  *out = nullptr;
  if (!weight || cout < 16 || cout % 16 || cin < 1 || kh < 1 || kw < 1 || sh < 1 || sw < 1 ||
      ph < 0 || pw < 0 || (act != sb::kActNone && act != sb::kActRelu))
    return SB_EINVAL;
  if (cin * kh * kw > (1 << 20)) return SB_EINVAL;
  if (pool_kh && (pool_kh < 1 || pool_kh > 16 || pool_kw < 1 || pool_sh < 1 || pool_sw < 1 ||
                  pool_ph < 0 || pool_pw < 0 || 2 * pool_ph > pool_kh || 2 * pool_pw > pool_kw ||
                  (pool_ceil != 0 && pool_ceil != 1)))
    return SB_EINVAL;
  sb_dense_conv *c = (sb_dense_conv *)std::calloc(1, sizeof(sb_dense_conv));
  if (!c) return SB_ENOMEM;
  const int64_t groups = (cout + sb::kGroup - 1) / sb::kGroup, taps = cin * kh * kw;
  const size_t wfloats = (size_t)(groups * taps * sb::kGroup), bfloats = (size_t)(groups * sb::kGroup);
  float *mem = (float *)sb::plan_alloc((wfloats + bfloats) * sizeof(float));
  if (!mem) {
    std::free(c);
    return SB_ENOMEM;
  }
  std::memset(mem, 0, (wfloats + bfloats) * sizeof(float));
  for (int64_t co = 0; co < cout; ++co) {
    const int64_t g = co / sb::kGroup, j = co % sb::kGroup;
    for (int64_t t = 0; t < taps; ++t) mem[(g * taps + t) * sb::kGroup + j] = weight[co * taps + t];
    if (bias) mem[wfloats + co] = bias[co];
  }
  *c = sb_dense_conv{sb::kMagic, cout, cin, kh, kw, sh, sw, ph, pw, act,
                     pool_kh, pool_kw, pool_sh, pool_sw, pool_ph, pool_pw, pool_ceil,
                     groups, mem, mem + wfloats};
  *out = c;
  return SB_OK;
}

extern "C" void sb_dense_conv_free(sb_dense_conv *c) {
  if (!c) return;
  c->magic = 0;
  sb::plan_free(c->wt);
  std::free(c);
}

extern "C" int sb_dense_conv_out_size(const sb_dense_conv *c, int64_t h, int64_t w,
                                      int64_t *yh, int64_t *yw) {
  if (!c || c->magic != sb::kMagic || !yh || !yw) return SB_EINVAL;
  *yh = *yw = 0;
  const int64_t ho = sb_conv_out_size(h, c->kh, c->sh, c->ph);
  const int64_t wo = sb_conv_out_size(w, c->kw, c->sw, c->pw);
  if (ho <= 0 || wo <= 0) return SB_EINVAL;
  if (!c->pool_kh) {
    *yh = ho, *yw = wo;
    return SB_OK;
  }
  *yh = sb_pool_out_size(ho, c->pool_kh, c->pool_sh, c->pool_ph, c->pool_ceil);
  *yw = sb_pool_out_size(wo, c->pool_kw, c->pool_sw, c->pool_pw, c->pool_ceil);
  return *yh > 0 && *yw > 0 ? SB_OK : SB_EINVAL;
}

extern "C" int sb_dense_conv_run(const sb_dense_conv *c, const float *x, int64_t n, int64_t h,
                                 int64_t w, float *y, int num_threads) {
  if (num_threads < 1 || num_threads > sb::kMaxThreads) return SB_ETHREADS;
  if (!c || c->magic != sb::kMagic || !x || !y || n < 1) return SB_EINVAL;
  sb::Shape s{n, h, w, 0, 0, 0, 0};
  if (sb_dense_conv_out_size(c, h, w, &s.yh, &s.yw) != SB_OK) return SB_EINVAL;
  s.ho = sb_conv_out_size(h, c->kh, c->sh, c->ph);
  s.wo = sb_conv_out_size(w, c->kw, c->sw, c->pw);
  if (s.wo > (1 << 16) || s.yh > (1 << 24)) return SB_EINVAL;
  // every thread's scratch must be allocatable: checked here, on the caller, for its own use
  const size_t bytes = sb::scratch_bytes(c, s);
  if (!sb::scratch(sb::kScratchConvRows, bytes)) return SB_ENOMEM;
  // chunks: runs of output rows of one (image, group); about 2 per thread, >= 4 rows each
  const int64_t units = n * c->groups, rows = s.yh;
  int64_t per = sb::chunk_count(rows * units, num_threads, 2);
  per = per <= units ? 1 : (per + units - 1) / units;  // chunks per (image, group)
  if (per > rows / 4) per = rows / 4 > 1 ? rows / 4 : 1;
  std::atomic<int> failed{0};
  sb::parallel_for(num_threads, units * per, [&](int64_t k) {
    const int64_t u = k / per, part = k % per, ni = u / c->groups, g = u % c->groups;
    const int64_t r0 = rows * part / per, r1 = rows * (part + 1) / per;
    float *mem = sb::scratch(sb::kScratchConvRows, bytes);
    if (!mem) {
      failed.store(1);
      return;
    }
    sb::run_rows(c, s, x, y, ni, g, r0, r1, mem);
  });
  return failed.load() ? SB_ENOMEM : SB_OK;
}
