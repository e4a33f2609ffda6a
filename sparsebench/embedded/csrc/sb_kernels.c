/* sparsebench reference kernels (see sb_kernels.h). Plain C99, no allocation, no libm. */
#include "sb_kernels.h"

#include <float.h>

static int sb_min(int a, int b) { return a < b ? a : b; }
static int sb_max(int a, int b) { return a > b ? a : b; }
/* floor(a / b) and ceil(a / b) for b > 0 and any sign of a */
static int sb_floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
static int sb_ceil_div(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

/* y[co] += w * shifted x[c] over the output positions the tap (c, ky, kx) touches */
static void sb_conv_tap(const float *xc, float *yp, float v, int h, int wd, int ho, int wo,
                        int ky, int kx, int sh, int sw, int ph, int pw, int dh, int dw)
{
    int oy, ox;
    int offy = ky * dh - ph, offx = kx * dw - pw;
    int oy0 = sb_max(0, sb_ceil_div(-offy, sh));
    int oy1 = sb_min(ho - 1, sb_floor_div(h - 1 - offy, sh));
    int ox0 = sb_max(0, sb_ceil_div(-offx, sw));
    int ox1 = sb_min(wo - 1, sb_floor_div(wd - 1 - offx, sw));
    for (oy = oy0; oy <= oy1; ++oy) {
        const float *xr = xc + (long)(oy * sh + offy) * wd + offx;
        float *yr = yp + oy * wo;
        if (sw == 1)
            for (ox = ox0; ox <= ox1; ++ox) yr[ox] += v * xr[ox];
        else
            for (ox = ox0; ox <= ox1; ++ox) yr[ox] += v * xr[ox * sw];
    }
}

static void sb_conv_finish(float *yp, int plane, int relu)
{
    int k;
    if (relu)
        for (k = 0; k < plane; ++k) yp[k] = yp[k] < 0.0f ? 0.0f : yp[k];
}

void sbk_conv2d_dense(const float *x, float *y, const float *w, const float *bias,
                      int cin, int h, int wd, int cout, int ho, int wo, int kh, int kw,
                      int sh, int sw, int ph, int pw, int dh, int dw, int relu)
{
    int co, ci, ky, kx, k, plane = ho * wo;
    for (co = 0; co < cout; ++co) {
        float *yp = y + (long)co * plane;
        const float *wr = w + (long)co * cin * kh * kw;
        float b = bias ? bias[co] : 0.0f;
        for (k = 0; k < plane; ++k) yp[k] = b;
        for (ci = 0; ci < cin; ++ci)
            for (ky = 0; ky < kh; ++ky)
                for (kx = 0; kx < kw; ++kx)
                    sb_conv_tap(x + (long)ci * h * wd, yp, wr[(ci * kh + ky) * kw + kx], h, wd,
                                ho, wo, ky, kx, sh, sw, ph, pw, dh, dw);
        sb_conv_finish(yp, plane, relu);
    }
}

void sbk_conv2d_csr16(const float *x, float *y, const float *val, const uint16_t *col,
                      const int32_t *rowptr, const float *bias,
                      int cin, int h, int wd, int cout, int ho, int wo, int kh, int kw,
                      int sh, int sw, int ph, int pw, int dh, int dw, int relu)
{
    int co, k, plane = ho * wo;
    (void)cin;
    for (co = 0; co < cout; ++co) {
        float *yp = y + (long)co * plane;
        float b = bias ? bias[co] : 0.0f;
        for (k = 0; k < plane; ++k) yp[k] = b;
        for (k = rowptr[co]; k < rowptr[co + 1]; ++k) {   /* only the stored taps */
            int c = col[k] / (kh * kw), r = col[k] % (kh * kw);
            sb_conv_tap(x + (long)c * h * wd, yp, val[k], h, wd, ho, wo, r / kw, r % kw, sh, sw,
                        ph, pw, dh, dw);
        }
        sb_conv_finish(yp, plane, relu);
    }
}

void sbk_linear_dense(const float *x, float *y, const float *w, const float *bias,
                      int in, int out, int npos, int relu)
{
    int p, o, i;
    for (p = 0; p < npos; ++p) {
        const float *xp = x + (long)p * in;
        for (o = 0; o < out; ++o) {
            const float *wr = w + (long)o * in;
            float acc = bias ? bias[o] : 0.0f;
            for (i = 0; i < in; ++i) acc += wr[i] * xp[i];
            y[(long)p * out + o] = (relu && acc < 0.0f) ? 0.0f : acc;
        }
    }
}

void sbk_linear_csr16(const float *x, float *y, const float *val, const uint16_t *col,
                      const int32_t *rowptr, const float *bias, int in, int out, int npos,
                      int relu)
{
    int p, o, k;
    for (p = 0; p < npos; ++p) {
        const float *xp = x + (long)p * in;
        for (o = 0; o < out; ++o) {
            float acc = bias ? bias[o] : 0.0f;
            for (k = rowptr[o]; k < rowptr[o + 1]; ++k) acc += val[k] * xp[col[k]];
            y[(long)p * out + o] = (relu && acc < 0.0f) ? 0.0f : acc;
        }
    }
}

void sbk_maxpool2d(const float *x, float *y, int c, int h, int w, int ho, int wo, int kh, int kw,
                   int sh, int sw, int ph, int pw, int dh, int dw)
{
    int ch, oy, ox, ky, kx;
    for (ch = 0; ch < c; ++ch) {
        const float *xc = x + (long)ch * h * w;
        for (oy = 0; oy < ho; ++oy) {
            for (ox = 0; ox < wo; ++ox) {
                float m = -FLT_MAX;
                int seen = 0;
                for (ky = 0; ky < kh; ++ky) {
                    int iy = oy * sh - ph + ky * dh;
                    if (iy < 0 || iy >= h) continue;
                    for (kx = 0; kx < kw; ++kx) {
                        int ix = ox * sw - pw + kx * dw;
                        float v;
                        if (ix < 0 || ix >= w) continue;
                        v = xc[(long)iy * w + ix];
                        if (!seen || v > m || v != v) m = v;   /* NaN propagates */
                        seen = 1;
                        if (m != m) break;
                    }
                }
                y[((long)ch * ho + oy) * wo + ox] = m;
            }
        }
    }
}

void sbk_avgpool2d(const float *x, float *y, int c, int h, int w, int ho, int wo, int kh, int kw,
                   int sh, int sw, int ph, int pw, int count_include_pad)
{
    int ch, oy, ox, ky, kx;
    for (ch = 0; ch < c; ++ch) {
        const float *xc = x + (long)ch * h * w;
        for (oy = 0; oy < ho; ++oy) {
            for (ox = 0; ox < wo; ++ox) {
                float acc = 0.0f;
                int n = 0;
                for (ky = 0; ky < kh; ++ky) {
                    int iy = oy * sh - ph + ky;
                    if (iy < 0 || iy >= h) continue;
                    for (kx = 0; kx < kw; ++kx) {
                        int ix = ox * sw - pw + kx;
                        if (ix < 0 || ix >= w) continue;
                        acc += xc[(long)iy * w + ix];
                        ++n;
                    }
                }
                if (count_include_pad) n = kh * kw;
                y[((long)ch * ho + oy) * wo + ox] = n ? acc / (float)n : 0.0f;
            }
        }
    }
}

void sbk_add(const float *a, const float *b, float *y, int n, int relu)
{
    int i;
    for (i = 0; i < n; ++i) {
        float v = a[i] + b[i];
        y[i] = (relu && v < 0.0f) ? 0.0f : v;
    }
}

void sbk_relu(const float *x, float *y, int n)
{
    int i;
    for (i = 0; i < n; ++i) y[i] = x[i] < 0.0f ? 0.0f : x[i];
}

void sbk_channel_affine(const float *x, float *y, const float *scale, const float *shift,
                        int c, int inner, int relu)
{
    int ch, i;
    for (ch = 0; ch < c; ++ch) {
        float s = scale ? scale[ch] : 1.0f, t = shift ? shift[ch] : 0.0f;
        const float *xc = x + (long)ch * inner;
        float *yc = y + (long)ch * inner;
        for (i = 0; i < inner; ++i) {
            float v = xc[i] * s + t;
            yc[i] = (relu && v < 0.0f) ? 0.0f : v;
        }
    }
}

/* ------------------------------------------------------------------------------ int8 */

int32_t sbq_requant(int32_t acc, int32_t m0, int shift)
{
    int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    int64_t x = (int64_t)acc * ((int64_t)1 << left), ab, t;
    int32_t high, mask, rem, threshold;
    if (x > INT32_MAX) x = INT32_MAX;
    if (x < INT32_MIN) x = INT32_MIN;
    /* saturating rounding doubling high multiply (m0 > 0, so no overflow case) */
    ab = x * (int64_t)m0;
    t = ab + (ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30)));
    high = (int32_t)(t / ((int64_t)1 << 31));
    /* rounding divide by 2^right, half away from zero */
    mask = (int32_t)(((int64_t)1 << right) - 1);
    rem = high & mask;
    threshold = (mask >> 1) + (high < 0 ? 1 : 0);
    return (high >> right) + (rem > threshold ? 1 : 0);
}

static int8_t sbq_out(int32_t acc, int32_t m0, int shift, int zp, int lo, int hi)
{
    int32_t v = sbq_requant(acc, m0, shift) + zp;
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

static long sbq_bits(const uint8_t *mask, long base, int n)
{
    long count = 0, j;
    for (j = base; j < base + n; ++j) count += (mask[j >> 3] >> (j & 7)) & 1;
    return count;
}


static int32_t sbq_conv_in(const int8_t *x, int32_t col, int khw, int kw, int h, int wd,
                           int iy0, int ix0, int dh, int dw, int zp)
{
    int ci = col / khw, r = col - ci * khw, ky = r / kw, kx = r - ky * kw;
    int iy = iy0 + ky * dh, ix = ix0 + kx * dw;
    if (iy < 0 || iy >= h || ix < 0 || ix >= wd) return 0;
    return (int32_t)x[((long)ci * h + iy) * wd + ix] - zp;
}

/* ACC += sum over the stored weights of row ROW: w * INPUT(col) */
#define SB_ROW_DOT(ACC, VT, AT, ENC, VAL, IDX, ROWPTR, VSTART, ROW, COLS, INPUT, BR, BC)       \
    do {                                                                                  \
        int32_t k_, c_;                                                                   \
        switch (ENC) {                                                                    \
        case SBQ_DENSE: {                                                                 \
            const VT *w_ = (VAL) + (long)(ROW) * (COLS);                                  \
            for (c_ = 0; c_ < (COLS); ++c_) ACC += (AT)w_[c_] * INPUT(c_);                \
        } break;                                                                          \
        case SBQ_CSR8: {                                                                  \
            const uint8_t *g_ = (const uint8_t *)(IDX);                                   \
            c_ = -1;                                                                      \
            for (k_ = (ROWPTR)[ROW]; k_ < (ROWPTR)[(ROW) + 1]; ++k_) {                    \
                c_ += 1 + g_[k_];                                                         \
                if ((VAL)[k_] != 0) ACC += (AT)(VAL)[k_] * INPUT(c_);                     \
            }                                                                             \
        } break;                                                                          \
        case SBQ_CSR16: {                                                                 \
            const uint16_t *i_ = (const uint16_t *)(IDX);                                 \
            for (k_ = (ROWPTR)[ROW]; k_ < (ROWPTR)[(ROW) + 1]; ++k_)                      \
                ACC += (AT)(VAL)[k_] * INPUT((int32_t)i_[k_]);                            \
        } break;                                                                          \
        case SBQ_CSR32: {                                                                 \
            const uint32_t *i_ = (const uint32_t *)(IDX);                                 \
            for (k_ = (ROWPTR)[ROW]; k_ < (ROWPTR)[(ROW) + 1]; ++k_)                      \
                ACC += (AT)(VAL)[k_] * INPUT((int32_t)i_[k_]);                            \
        } break;                                                                          \
        case SBQ_BSR: {                                                                   \
            const uint16_t *i_ = (const uint16_t *)(IDX);                                 \
            int r_ = (ROW) / (BR), j_;                                                    \
            for (k_ = (ROWPTR)[r_]; k_ < (ROWPTR)[r_ + 1]; ++k_) {                        \
                const VT *b_ = (VAL) + ((long)k_ * (BR) + (ROW) - r_ * (BR)) * (BC);      \
                for (j_ = 0; j_ < (BC); ++j_) {                                           \
                    c_ = (int32_t)i_[k_] * (BC) + j_;                                     \
                    if (b_[j_] != 0 && c_ < (COLS)) ACC += (AT)b_[j_] * INPUT(c_);        \
                }                                                                         \
            }                                                                             \
        } break;                                                                          \
        default: {                                                                        \
            const uint8_t *m_ = (const uint8_t *)(IDX);                                   \
            long b_ = (long)(ROW) * (COLS), v_ = (VSTART);                                \
            for (c_ = 0; c_ < (COLS); ++c_, ++b_)                                         \
                if ((m_[b_ >> 3] >> (b_ & 7)) & 1) ACC += (AT)(VAL)[v_++] * INPUT(c_);    \
        } break;                                                                          \
        }                                                                                 \
    } while (0)

void sbq_conv2d(int enc, int br, int bc, const int8_t *x, int8_t *y, const int8_t *val,
                const void *idx, const int32_t *rowptr, const int32_t *bias, const int32_t *m0,
                const int8_t *shift, int in_zp, int out_zp, int act_min, int act_max,
                int cin, int h, int wd, int cout, int ho, int wo, int kh, int kw,
                int sh, int sw, int ph, int pw, int dh, int dw)
{
    int co, oy, ox, khw = kh * kw, cols = cin * kh * kw;
    long vstart = 0;
    for (co = 0; co < cout; ++co) {
        for (oy = 0; oy < ho; ++oy) {
            for (ox = 0; ox < wo; ++ox) {
                int iy0 = oy * sh - ph, ix0 = ox * sw - pw;
                int32_t acc = bias ? bias[co] : 0;
                if (enc == SBQ_DENSE) {   /* taps in order, no index arithmetic */
                    const int8_t *w = val + (long)co * cols;
                    int ci, ky, kx;
                    for (ci = 0; ci < cin; ++ci) {
                        const int8_t *xc = x + (long)ci * h * wd;
                        for (ky = 0; ky < kh; ++ky) {
                            int iy = iy0 + ky * dh;
                            if (iy < 0 || iy >= h) { w += kw; continue; }
                            for (kx = 0; kx < kw; ++kx, ++w) {
                                int ix = ix0 + kx * dw;
                                if (ix >= 0 && ix < wd)
                                    acc += (int32_t)*w * ((int32_t)xc[(long)iy * wd + ix] - in_zp);
                            }
                        }
                    }
                } else {
#define SBQ_CONV_IN(col) sbq_conv_in(x, (col), khw, kw, h, wd, iy0, ix0, dh, dw, in_zp)
                    SB_ROW_DOT(acc, int8_t, int32_t, enc, val, idx, rowptr, vstart, co, cols,
                               SBQ_CONV_IN, br, bc);
#undef SBQ_CONV_IN
                }
                y[((long)co * ho + oy) * wo + ox] = sbq_out(acc, m0[co], shift[co], out_zp,
                                                             act_min, act_max);
            }
        }
        if (enc == SBQ_BITMASK) vstart += sbq_bits((const uint8_t *)idx, (long)co * cols, cols);
    }
}

void sbq_linear(int enc, int br, int bc, const int8_t *x, int8_t *y, const int8_t *val,
                const void *idx, const int32_t *rowptr, const int32_t *bias, const int32_t *m0,
                const int8_t *shift, int in_zp, int out_zp, int act_min, int act_max,
                int in, int out, int npos)
{
    int o, p;
    long vstart = 0;
    for (o = 0; o < out; ++o) {
        for (p = 0; p < npos; ++p) {
            const int8_t *xp = x + (long)p * in;
            int32_t acc = bias ? bias[o] : 0;
#define SBQ_LIN_IN(col) ((int32_t)xp[col] - in_zp)
            SB_ROW_DOT(acc, int8_t, int32_t, enc, val, idx, rowptr, vstart, o, in, SBQ_LIN_IN,
                       br, bc);
#undef SBQ_LIN_IN
            y[(long)p * out + o] = sbq_out(acc, m0[o], shift[o], out_zp, act_min, act_max);
        }
        if (enc == SBQ_BITMASK) vstart += sbq_bits((const uint8_t *)idx, (long)o * in, in);
    }
}

void sbq_maxpool2d(const int8_t *x, int8_t *y, int c, int h, int w, int ho, int wo, int kh,
                   int kw, int sh, int sw, int ph, int pw, int dh, int dw)
{
    int ch, oy, ox, ky, kx;
    for (ch = 0; ch < c; ++ch) {
        const int8_t *xc = x + (long)ch * h * w;
        for (oy = 0; oy < ho; ++oy)
            for (ox = 0; ox < wo; ++ox) {
                int m = -128;
                for (ky = 0; ky < kh; ++ky) {
                    int iy = oy * sh - ph + ky * dh;
                    if (iy < 0 || iy >= h) continue;
                    for (kx = 0; kx < kw; ++kx) {
                        int ix = ox * sw - pw + kx * dw;
                        if (ix >= 0 && ix < w && xc[(long)iy * w + ix] > m)
                            m = xc[(long)iy * w + ix];
                    }
                }
                y[((long)ch * ho + oy) * wo + ox] = (int8_t)m;
            }
    }
}

void sbq_avgpool2d(const int8_t *x, int8_t *y, int zp, int c, int h, int w, int ho, int wo,
                   int kh, int kw, int sh, int sw, int ph, int pw, int count_include_pad)
{
    int ch, oy, ox, ky, kx;
    for (ch = 0; ch < c; ++ch) {
        const int8_t *xc = x + (long)ch * h * w;
        for (oy = 0; oy < ho; ++oy)
            for (ox = 0; ox < wo; ++ox) {
                int32_t acc = 0, v;
                int n = 0;
                for (ky = 0; ky < kh; ++ky) {
                    int iy = oy * sh - ph + ky;
                    if (iy < 0 || iy >= h) continue;
                    for (kx = 0; kx < kw; ++kx) {
                        int ix = ox * sw - pw + kx;
                        if (ix < 0 || ix >= w) continue;
                        acc += (int32_t)xc[(long)iy * w + ix] - zp;
                        ++n;
                    }
                }
                if (count_include_pad || n == 0) n = count_include_pad ? kh * kw : 1;
                v = (acc > 0 ? (acc + n / 2) / n : (acc - n / 2) / n) + zp;
                y[((long)ch * ho + oy) * wo + ox] = (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v));
            }
    }
}

void sbq_relu(const int8_t *x, int8_t *y, int n, int zp)
{
    int i;
    for (i = 0; i < n; ++i) y[i] = x[i] < zp ? (int8_t)zp : x[i];
}

/* ------------------------------------------------- fp32 CSR-8/-32 and bitmask (gathering) */

static float sb_conv_in(const float *x, int32_t col, int khw, int kw, int h, int wd, int iy0,
                        int ix0, int dh, int dw)
{
    int ci = col / khw, r = col - ci * khw, ky = r / kw, kx = r - ky * kw;
    int iy = iy0 + ky * dh, ix = ix0 + kx * dw;
    if (iy < 0 || iy >= h || ix < 0 || ix >= wd) return 0.0f;
    return x[((long)ci * h + iy) * wd + ix];
}

void sbk_conv2d_sparse(int enc, int br, int bc, const float *x, float *y, const float *val,
                       const void *idx,
                       const int32_t *rowptr, const float *bias,
                       int cin, int h, int wd, int cout, int ho, int wo, int kh, int kw,
                       int sh, int sw, int ph, int pw, int dh, int dw, int relu)
{
    int co, oy, ox, khw = kh * kw, cols = cin * kh * kw;
    long vstart = 0;
    for (co = 0; co < cout; ++co) {
        for (oy = 0; oy < ho; ++oy)
            for (ox = 0; ox < wo; ++ox) {
                int iy0 = oy * sh - ph, ix0 = ox * sw - pw;
                float acc = bias ? bias[co] : 0.0f;
#define SB_CONV_IN(col) sb_conv_in(x, (col), khw, kw, h, wd, iy0, ix0, dh, dw)
                SB_ROW_DOT(acc, float, float, enc, val, idx, rowptr, vstart, co, cols, SB_CONV_IN,
                           br, bc);
#undef SB_CONV_IN
                y[((long)co * ho + oy) * wo + ox] = (relu && acc < 0.0f) ? 0.0f : acc;
            }
        if (enc == SBQ_BITMASK) vstart += sbq_bits((const uint8_t *)idx, (long)co * cols, cols);
    }
}

void sbk_linear_sparse(int enc, int br, int bc, const float *x, float *y, const float *val,
                       const void *idx,
                       const int32_t *rowptr, const float *bias, int in, int out, int npos,
                       int relu)
{
    int o, p;
    long vstart = 0;
    for (o = 0; o < out; ++o) {
        for (p = 0; p < npos; ++p) {
            const float *xp = x + (long)p * in;
            float acc = bias ? bias[o] : 0.0f;
#define SB_LIN_IN(col) (xp[col])
            SB_ROW_DOT(acc, float, float, enc, val, idx, rowptr, vstart, o, in, SB_LIN_IN,
                       br, bc);
#undef SB_LIN_IN
            y[(long)p * out + o] = (relu && acc < 0.0f) ? 0.0f : acc;
        }
        if (enc == SBQ_BITMASK) vstart += sbq_bits((const uint8_t *)idx, (long)o * in, in);
    }
}
