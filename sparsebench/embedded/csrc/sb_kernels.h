/* sparsebench reference kernels: plain C99, float32, NCHW, batch 1, no allocation.
 * Conv weights are Cout x (Cin*kh*kw) matrices, column c*kh*kw + ky*kw + kx (PyTorch order).
 * CSR: float values, uint16 column indices, int32 row pointers (rows + 1). */
#ifndef SB_KERNELS_H
#define SB_KERNELS_H

#include <stdint.h>

void sbk_conv2d_dense(const float *x, float *y, const float *w, const float *bias,
                      int cin, int h, int wd, int cout, int ho, int wo, int kh, int kw,
                      int sh, int sw, int ph, int pw, int dh, int dw, int relu);
void sbk_conv2d_csr16(const float *x, float *y, const float *val, const uint16_t *col,
                      const int32_t *rowptr, const float *bias,
                      int cin, int h, int wd, int cout, int ho, int wo, int kh, int kw,
                      int sh, int sw, int ph, int pw, int dh, int dw, int relu);
void sbk_linear_dense(const float *x, float *y, const float *w, const float *bias,
                      int in, int out, int npos, int relu);
void sbk_linear_csr16(const float *x, float *y, const float *val, const uint16_t *col,
                      const int32_t *rowptr, const float *bias, int in, int out, int npos,
                      int relu);
void sbk_maxpool2d(const float *x, float *y, int c, int h, int w, int ho, int wo, int kh, int kw,
                   int sh, int sw, int ph, int pw, int dh, int dw);
void sbk_avgpool2d(const float *x, float *y, int c, int h, int w, int ho, int wo, int kh, int kw,
                   int sh, int sw, int ph, int pw, int count_include_pad);
void sbk_add(const float *a, const float *b, float *y, int n, int relu);
void sbk_relu(const float *x, float *y, int n);
/* y[c][i] = x[c][i] * scale[c] + shift[c] over c channels of `inner` elements; scale or shift
 * may be NULL; c = 1 broadcasts one value over everything. */
void sbk_channel_affine(const float *x, float *y, const float *scale, const float *shift,
                        int c, int inner, int relu);

#endif
