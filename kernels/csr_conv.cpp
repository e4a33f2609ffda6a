// Sparse 2-D convolution (NCHW) without im2col.
//
// Weight is CSR(Cout x Cin*kh*kw). For an output plane (n, co) and a tile of output rows
// that fits in L1, every nonzero (c, ky, kx, w) adds w * (shifted, strided input plane c)
// into the tile; the valid output-column range for kx is computed once per nonzero, so
// the zero-padding borders cost nothing and the inner loop is a plain (vectorised) axpy.
// Threads claim chunks of (n, co) planes dynamically.
#include "common.hpp"
#include "sparsebench_kernels.h"

namespace sb {
namespace {

SB_INLINE int64_t ceil_div_pos(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

struct ConvShape {
  int64_t Cout, Cin, kh, kw, sh, sw, ph, pw, N, H, W, Ho, Wo;
};

template <typename Idx>
void conv_plane(const ConvShape &s, int64_t n, int64_t co, const int32_t *rp, const Idx *ci,
                const float *val, const float *bias, int relu, const float *x, float *y) {
  const int64_t khw = s.kh * s.kw, HW = s.H * s.W;
  float *out = y + (n * s.Cout + co) * s.Ho * s.Wo;
  const float *xin = x + n * s.Cin * HW;
  const float b0 = bias ? bias[co] : 0.f;
  const int64_t tile = s.Wo >= 4096 ? 1 : 4096 / s.Wo;  // output rows per ~16 KB tile
  for (int64_t oy0 = 0; oy0 < s.Ho; oy0 += tile) {
    const int64_t oy1 = oy0 + tile < s.Ho ? oy0 + tile : s.Ho;
    for (int64_t i = oy0 * s.Wo; i < oy1 * s.Wo; ++i) out[i] = b0;
    for (int64_t j = rp[co]; j < rp[co + 1]; ++j) {
      const int64_t col = ci[j], c = col / khw, r = col - c * khw, ky = r / s.kw,
                    kx = r - ky * s.kw;
      const float w = val[j];
      // ix = ox*sw - pw + kx must lie in [0, W); iy likewise with (sh, ph, ky, H).
      const int64_t xlo = ceil_div_pos(s.pw - kx, s.sw);
      int64_t xhi = s.W - 1 + s.pw - kx < 0 ? 0 : (s.W - 1 + s.pw - kx) / s.sw + 1;
      if (xhi > s.Wo) xhi = s.Wo;
      int64_t ylo = ceil_div_pos(s.ph - ky, s.sh);
      int64_t yhi = s.H - 1 + s.ph - ky < 0 ? 0 : (s.H - 1 + s.ph - ky) / s.sh + 1;
      if (ylo < oy0) ylo = oy0;
      if (yhi > oy1) yhi = oy1;
      if (xlo >= xhi || ylo >= yhi) continue;
      const int64_t nx = xhi - xlo;
      const float *plane = xin + c * HW + (xlo * s.sw - s.pw + kx);
      if (s.sw == 1 && s.sh == 1 && nx == s.W && s.Wo == s.W) {
        // full-width rows are contiguous in input and output (e.g. 1x1 or "same" 1xk)
        const float *SB_RESTRICT in = plane + (ylo - s.ph + ky) * s.W;
        float *SB_RESTRICT o = out + ylo * s.Wo;
        const int64_t n = (yhi - ylo) * s.W;
        for (int64_t i = 0; i < n; ++i) o[i] += w * in[i];
        continue;
      }
      for (int64_t oy = ylo; oy < yhi; ++oy) {
        const float *SB_RESTRICT irow = plane + (oy * s.sh - s.ph + ky) * s.W;
        float *SB_RESTRICT orow = out + oy * s.Wo + xlo;
        if (s.sw == 1) {
          for (int64_t i = 0; i < nx; ++i) orow[i] += w * irow[i];
        } else if (s.sw == 2) {
          for (int64_t i = 0; i < nx; ++i) orow[i] += w * irow[2 * i];
        } else {
          for (int64_t i = 0; i < nx; ++i) orow[i] += w * irow[i * s.sw];
        }
      }
    }
    if (relu)
      for (int64_t i = oy0 * s.Wo; i < oy1 * s.Wo; ++i) out[i] = out[i] < 0.f ? 0.f : out[i];
  }
}

template <typename Idx>
int csr_conv2d(const ConvShape &s, const int32_t *rp, const Idx *ci, const float *val,
               const float *bias, int relu, const float *x, float *y, int nt) {
  const int64_t items = s.N * s.Cout, nc = chunk_count(items, nt, 16);
  parallel_for(nt, nc, [&](int64_t c) {
    for (int64_t it = items * c / nc; it < items * (c + 1) / nc; ++it)
      conv_plane(s, it / s.Cout, it % s.Cout, rp, ci, val, bias, relu, x, y);
  });
  return SB_OK;
}

}  // namespace
}  // namespace sb

extern "C" int64_t sb_conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad) {
  if (in < 0 || k < 1 || stride < 1 || pad < 0 || in + 2 * pad < k) return 0;
  return (in + 2 * pad - k) / stride + 1;
}

extern "C" int sb_csr_conv2d(const sb_conv2d *w, const float *x, int64_t N, int64_t H,
                             int64_t W, float *y, int num_threads) {
  if (num_threads < 1 || num_threads > sb::kMaxThreads) return SB_ETHREADS;
  if (!w) return SB_EINVAL;
  const int64_t Cout = w->out_channels, Cin = w->in_channels, kh = w->kernel_h, kw = w->kernel_w;
  const int64_t sh = w->stride_h, sw = w->stride_w, ph = w->pad_h, pw = w->pad_w;
  if (Cout < 0 || Cin < 0 || kh < 1 || kw < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0 ||
      N < 0 || H < 0 || W < 0 || !w->row_ptr)
    return SB_EINVAL;
  const sb::ConvShape s{Cout, Cin, kh, kw, sh, sw, ph, pw, N, H, W,
                        sb_conv_out_size(H, kh, sh, ph), sb_conv_out_size(W, kw, sw, pw)};
  if (s.Ho <= 0 || s.Wo <= 0) return SB_EINVAL;
  if (N == 0 || Cout == 0) return SB_OK;
  if (!y || (w->row_ptr[Cout] > 0 && (!w->col_idx || !w->values || !x))) return SB_EINVAL;
  const int relu = w->relu != 0;
  if (w->index_bits == 32)
    return sb::csr_conv2d(s, w->row_ptr, (const int32_t *)w->col_idx, w->values, w->bias, relu,
                          x, y, num_threads);
  if (w->index_bits == 16)
    return sb::csr_conv2d(s, w->row_ptr, (const int16_t *)w->col_idx, w->values, w->bias, relu,
                          x, y, num_threads);
  return SB_EINDEX;
}
