// Max-pooling over NCHW maps (any window, stride, -inf padding, ceil mode),
// for the pools the convolution epilogue cannot fuse (ResNet's 3x3 / stride 2 / pad 1 stem
// pool: torch's CPU max_pool2d takes ~5 ms on that map at one thread, this ~0.2 ms).
//
// Per output row: the vertical max of the window's input rows into a row buffer (contiguous,
// vectorised by the compiler; a 1-row window reads its input row in place), then the
// horizontal max over each output's window (stride 2: over the row's even/odd halves, split
// with AVX-512 permutes, then contiguous shifted reads). Threads take bands of output rows of
// every plane (tall maps) or claim chunks of (image, channel) planes. Maps past the 2 MB L2 are
// bound by reading them from L3 (~24 GB/s on one core here).
#include <cstdlib>
#include <limits>

#include "common.hpp"
#include "sparsebench_kernels.h"

namespace sb {
namespace {

struct PoolJob {
  const float *x;
  float *y;
  int64_t planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw, nchunks;
};

// Stride 2 across: the row split into its even and odd elements (each padded with -inf), so
// every tap kx is one contiguous shifted read: y[ox] = max over kx of (even|odd)[ox + off].
void hmax_stride2(const PoolJob &j, const float *SB_RESTRICT row, float *SB_RESTRICT even,
                  float *SB_RESTRICT odd, int64_t pad, float *SB_RESTRICT y) {
  const float lowest = -std::numeric_limits<float>::infinity();
  const int64_t half = (j.w + 1) / 2, len = half + 2 * pad;
  for (int64_t i = 0; i < len; ++i) even[i] = odd[i] = lowest;
  int64_t i = 0;
#if SB_AVX512
  // 32 elements -> 16 even + 16 odd per step (the scalar split: 0.25 vs 0.23 ms on a 1x1/2
  // subsample of 256x56x56; the 3x3 stem pool is bound by its L3 reads either way)
  const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i io = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  for (; 2 * i + 32 <= j.w; i += 16) {
    const __m512 a = _mm512_loadu_ps(row + 2 * i), b = _mm512_loadu_ps(row + 2 * i + 16);
    _mm512_storeu_ps(even + pad + i, _mm512_permutex2var_ps(a, ie, b));
    _mm512_storeu_ps(odd + pad + i, _mm512_permutex2var_ps(a, io, b));
  }
#endif
  for (; i < j.w / 2; ++i) {
    even[pad + i] = row[2 * i];
    odd[pad + i] = row[2 * i + 1];
  }
  if (j.w % 2) even[pad + j.w / 2] = row[j.w - 1];
  for (int64_t ox = 0; ox < j.wo; ++ox) y[ox] = lowest;
  for (int64_t kx = 0; kx < j.kw; ++kx) {
    const int64_t s = kx - j.pw;                        // input column 2*ox + s
    const float *src = (s % 2 == 0 ? even : odd) + pad;  // element (2*ox + s) >> 1 ...
    const int64_t off = s >= 0 ? s / 2 : -((-s + 1) / 2);  // ... = ox + floor(s / 2)
    for (int64_t ox = 0; ox < j.wo; ++ox) y[ox] = src[ox + off] > y[ox] ? src[ox + off] : y[ox];
  }
}

// A 1-column window at stride 2 without padding (ResNet's subsample for its merged strided
// shortcuts): y[ox] = row[2 * ox], one permute from the row straight into y. The even/odd split
// took three passes: 256x56x56 0.20 -> 0.07 ms alone; ResNet-50's three subsamples in the model
// 0.51 -> 0.21 ms at one thread, 0.66 -> 0.23 ms at two.
void take_even(const float *SB_RESTRICT row, int64_t wo, float *SB_RESTRICT y) {
  int64_t ox = 0;
#if SB_AVX512
  const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  for (; ox + 16 <= wo; ox += 16) {  // reads row[2 * ox .. 2 * ox + 30] only
    const __m512 a = _mm512_loadu_ps(row + 2 * ox);
    const __m512 b = _mm512_maskz_loadu_ps((__mmask16)0x7fff, row + 2 * ox + 16);
    _mm512_storeu_ps(y + ox, _mm512_permutex2var_ps(a, ie, b));
  }
  if (ox < wo) {  // r < 16 outputs left: 2r - 1 inputs from row[2 * ox]
    const int64_t r = wo - ox, need = 2 * r - 1;
    const __mmask16 ma = (__mmask16)(need >= 16 ? 0xffff : (1u << need) - 1u);
    const __mmask16 mb = (__mmask16)(need > 16 ? (1u << (need - 16)) - 1u : 0u);
    const __m512 a = _mm512_maskz_loadu_ps(ma, row + 2 * ox);
    const __m512 b = _mm512_maskz_loadu_ps(mb, row + 2 * ox + 16);
    _mm512_mask_storeu_ps(y + ox, (__mmask16)((1u << r) - 1u), _mm512_permutex2var_ps(a, ie, b));
    return;
  }
#endif
  for (; ox < wo; ++ox) y[ox] = row[2 * ox];
}

// Planes [p0, p1), output rows [r0, r1) of each.
void pool_planes(const PoolJob &j, int64_t p0, int64_t p1, int64_t r0, int64_t r1, float *row) {
  const float lowest = -std::numeric_limits<float>::infinity();
  const int64_t pad = (j.kw + 1) / 2 + 1;  // even/odd padding: covers every shifted read
  float *even = row + j.w, *odd = even + (j.w + 1) / 2 + 2 * pad;
  for (int64_t p = p0; p < p1; ++p) {
    const float *SB_RESTRICT xp = j.x + p * j.h * j.w;
    float *SB_RESTRICT yp = j.y + p * j.ho * j.wo;
    for (int64_t oy = r0; oy < r1; ++oy) {
      const int64_t iy0 = oy * j.sh - j.ph;
      const int64_t a = iy0 < 0 ? 0 : iy0, b = iy0 + j.kh < j.h ? iy0 + j.kh : j.h;
      const float *vmax = xp + a * j.w;  // one input row (a 1-row window): read in place
      if (b - a > 1) {
        for (int64_t ix = 0; ix < j.w; ++ix) row[ix] = lowest;
        for (int64_t iy = a; iy < b; ++iy) {
          const float *SB_RESTRICT xr = xp + iy * j.w;
          for (int64_t ix = 0; ix < j.w; ++ix) row[ix] = xr[ix] > row[ix] ? xr[ix] : row[ix];
        }
        vmax = row;
      }
      if (j.sw == 2 && j.kw == 1 && j.pw == 0) {
        take_even(vmax, j.wo, yp + oy * j.wo);
        continue;
      }
      if (j.sw == 2) {
        hmax_stride2(j, vmax, even, odd, pad, yp + oy * j.wo);
        continue;
      }
      for (int64_t ox = 0; ox < j.wo; ++ox) {
        const int64_t ix0 = ox * j.sw - j.pw;
        const int64_t c = ix0 < 0 ? 0 : ix0, d = ix0 + j.kw < j.w ? ix0 + j.kw : j.w;
        float m = lowest;
        for (int64_t ix = c; ix < d; ++ix) m = vmax[ix] > m ? vmax[ix] : m;
        yp[oy * j.wo + ox] = m;
      }
    }
  }
}

}  // namespace
}  // namespace sb

extern "C" int64_t sb_pool_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad,
                                    int64_t ceil_mode) {
  if (in < 1 || k < 1 || stride < 1 || pad < 0) return 0;
  const int64_t span = in + 2 * pad - k;
  if (span < 0) return 0;
  int64_t out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;  // a window must start inside
  return out;
}

extern "C" int sb_maxpool2d(const float *x, int64_t n, int64_t c, int64_t h, int64_t w,
                            int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                            int64_t pw, int64_t ceil_mode, float *y, int num_threads) {
  if (num_threads < 1 || num_threads > sb::kMaxThreads) return SB_ETHREADS;
  if (!x || !y || n < 1 || c < 1 || h < 1 || w < 1 || kh < 1 || kw < 1 || sh < 1 || sw < 1 ||
      ph < 0 || pw < 0 || 2 * ph > kh || 2 * pw > kw)
    return SB_EINVAL;  // pad <= window/2 (torch's rule): every window holds an input element
  sb::PoolJob j{x, y, n * c, h, w, sb_pool_out_size(h, kh, sh, ph, ceil_mode),
                sb_pool_out_size(w, kw, sw, pw, ceil_mode), kh, kw, sh, sw, ph, pw, 0};
  if (j.ho < 1 || j.wo < 1) return SB_EINVAL;
  // a single thread below ~64k outputs (the hand-over costs more than it saves)
  const int nt = j.planes * j.ho * j.wo < 65536 ? 1 : num_threads;
  // tall maps: one chunk per thread of whole output rows across every plane (the position
  // bands of the convolution before and after it: each thread reads and writes its own rows);
  // else chunks of planes
  const bool by_rows = nt > 1 && j.ho >= 4 * nt;
  j.nchunks = by_rows ? nt : sb::chunk_count(j.planes, nt, 4);
  // per chunk: the row buffer, then the even / odd halves of the stride-2 path with padding
  const int64_t per = w + 2 * ((w + 1) / 2 + 2 * ((kw + 1) / 2 + 1)) + 16;
  float *rows = (float *)std::malloc((size_t)(per * j.nchunks) * sizeof(float));
  if (!rows) return SB_ENOMEM;
  sb::parallel_for(nt, j.nchunks, [&](int64_t t) {
    if (by_rows)
      sb::pool_planes(j, 0, j.planes, j.ho * t / j.nchunks, j.ho * (t + 1) / j.nchunks,
                      rows + t * per);
    else
      sb::pool_planes(j, j.planes * t / j.nchunks, j.planes * (t + 1) / j.nchunks, 0, j.ho,
                      rows + t * per);
  });
  std::free(rows);
  return SB_OK;
}
