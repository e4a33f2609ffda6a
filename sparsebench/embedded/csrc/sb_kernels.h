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

/* ---- int8, TensorFlow Lite's scheme: int8 activations with a zero point, symmetric per-row
 * int8 weights, int32 bias and accumulators, per-row requantisation by a Q31 multiplier m0 and
 * a shift (>0: left). Weight encodings (enc): */
#define SBQ_DENSE 0    /* val: rows x cols int8 */
#define SBQ_CSR8 1     /* val int8, idx uint8 gap to the previous stored column (+1), rowptr */
#define SBQ_CSR16 2    /* val int8, idx uint16 column, rowptr int32 */
#define SBQ_CSR32 3    /* val int8, idx uint32 column, rowptr int32 */
#define SBQ_BITMASK 4  /* idx: one bit per weight, row-major, LSB first; val: nonzeros in order */
#define SBQ_BSR 5      /* br x bc blocks holding a nonzero (matrix zero-padded to whole blocks):
                        * val block after block (row-major inside), idx uint16 block column,
                        * rowptr int32 per block row; br, bc only matter for SBQ_BSR */

int32_t sbq_requant(int32_t acc, int32_t m0, int shift);
void sbq_conv2d(int enc, int br, int bc, const int8_t *x, int8_t *y, const int8_t *val,
                const void *idx, const int32_t *rowptr, const int32_t *bias, const int32_t *m0,
                const int8_t *shift, int in_zp, int out_zp, int act_min, int act_max,
                int cin, int h, int wd, int cout, int ho, int wo, int kh, int kw,
                int sh, int sw, int ph, int pw, int dh, int dw);
void sbq_linear(int enc, int br, int bc, const int8_t *x, int8_t *y, const int8_t *val,
                const void *idx, const int32_t *rowptr, const int32_t *bias, const int32_t *m0,
                const int8_t *shift, int in_zp, int out_zp, int act_min, int act_max,
                int in, int out, int npos);
void sbq_maxpool2d(const int8_t *x, int8_t *y, int c, int h, int w, int ho, int wo, int kh,
                   int kw, int sh, int sw, int ph, int pw, int dh, int dw);
void sbq_avgpool2d(const int8_t *x, int8_t *y, int zp, int c, int h, int w, int ho, int wo,
                   int kh, int kw, int sh, int sw, int ph, int pw, int count_include_pad);
void sbq_relu(const int8_t *x, int8_t *y, int n, int zp);

/* fp32 weights in the CSR-8, CSR-32, bitmask or BSR (SBQ_CSR8, _CSR32, _BITMASK, _BSR) layouts
 * above, float values; a gather per output element (CSR-16 has the scatter kernels above). */
void sbk_conv2d_sparse(int enc, int br, int bc, const float *x, float *y, const float *val,
                       const void *idx,
                       const int32_t *rowptr, const float *bias,
                       int cin, int h, int wd, int cout, int ho, int wo, int kh, int kw,
                       int sh, int sw, int ph, int pw, int dh, int dw, int relu);
void sbk_linear_sparse(int enc, int br, int bc, const float *x, float *y, const float *val,
                       const void *idx,
                       const int32_t *rowptr, const float *bias, int in, int out, int npos,
                       int relu);

#endif
