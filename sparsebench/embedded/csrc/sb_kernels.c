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
