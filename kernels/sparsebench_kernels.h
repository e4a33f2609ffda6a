/* sparsebench compiled kernels: plain C ABI (loaded from Python with ctypes).
 *
 * Conventions (all entry points):
 *   - the sparse weight is described by a struct (sb_linear / sb_conv2d) that the caller
 *     fills once; per call only activations, batch size, output and threads are passed.
 *   - float32 data, row-major / NCHW, C-contiguous; sizes are int64_t.
 *   - row pointers are int32 (M+1 entries, row_ptr[0] == 0, non-decreasing);
 *     column indices are int16 or int32, selected by index_bits (16 or 32).
 *   - bias may be NULL; relu != 0 fuses max(y, 0) into the store.
 *   - 1 <= num_threads <= 255; the kernel runs on that many threads (1 = inline, no
 *     threading): the caller plus num_threads-1 workers of a persistent pool that claim
 *     chunks of work dynamically, so a descheduled worker never stalls the call.
 *   - return 0 on success, an SB_E* code otherwise. Index ranges are NOT checked here
 *     (the Python loader validates them once, at prepare time).
 */
#ifndef SPARSEBENCH_KERNELS_H
#define SPARSEBENCH_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SB_ABI_VERSION 1

#define SB_OK 0
#define SB_EINVAL 1   /* NULL pointer, negative/zero size, bad stride, ... */
#define SB_EINDEX 2   /* index_bits is not 16 or 32 */
#define SB_ENOMEM 3   /* scratch allocation failed */
#define SB_ETHREADS 4 /* num_threads < 1 or > 255 */

/* SB_ABI_VERSION of the compiled library; the loader refuses a mismatch. */
int sb_abi_version(void);

/* Instruction set the library was compiled for: "avx512", "avx2" or "scalar". */
const char *sb_isa(void);

/* Benchmark-only tuning knobs (process-global, not thread-safe):
 *   "spmv_gather"        1 = AVX-512/AVX2 gathers for batch<transpose_batch, 0 = scalar loads
 *   "transpose_batch"    batch size from which X is transposed and vectorised over the batch
 *   "batch_chunk"        batch elements per transposed chunk (16..64, multiple of the vector)
 * Returns the previous value, or -1 for an unknown key (value < 0 only queries). */
int sb_tuning(const char *key, int value);

/* A sparse linear weight W (M x K); y = x @ W^T (+ bias) (relu). All fields are 8 bytes,
 * so the layout has no padding (mirrored by ctypes.Structure in sparsebench/native.py). */
typedef struct sb_linear {
  int64_t rows, cols;             /* M, K */
  int64_t block_rows, block_cols; /* BSR block shape R x C (M % R == 0, K % C == 0); CSR: 1, 1 */
  const int32_t *row_ptr;         /* CSR: M+1 entries; BSR: M/R+1 block-row pointers */
  const void *col_idx;            /* CSR: column of each value; BSR: block column (0..K/C-1) */
  const float *values;            /* CSR: nnz floats; BSR: nblocks*R*C, each block row-major */
  const float *bias;              /* M floats or NULL */
  int64_t index_bits;             /* 16 or 32: width of col_idx entries */
  int64_t relu;                   /* nonzero: fused max(y, 0) */
} sb_linear;

/* A sparse convolution weight: CSR(Cout x Cin*kh*kw), column index c*kh*kw + ky*kw + kx. */
typedef struct sb_conv2d {
  int64_t out_channels, in_channels;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w; /* zero padding */
  const int32_t *row_ptr;                                       /* Cout+1 entries */
  const void *col_idx;
  const float *values;
  const float *bias; /* Cout floats or NULL */
  int64_t index_bits;
  int64_t relu;
} sb_conv2d;

/* Y[B, M] = X[B, K] @ W^T (+ bias) (relu) with W in CSR (block_rows/cols ignored). */
int sb_csr_linear(const sb_linear *w, const float *x, int64_t batch, float *y, int num_threads);

/* Same with W in block-sparse row format (the scipy.sparse.bsr_matrix layout). */
int sb_bsr_linear(const sb_linear *w, const float *x, int64_t batch, float *y, int num_threads);

/* Output size of a convolution along one axis: (in + 2*pad - k) / stride + 1, or 0. */
int64_t sb_conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad);

/* Sparse 2-D convolution without im2col: x is N x Cin x H x W, y is N x Cout x Ho x Wo
 * with Ho, Wo from sb_conv_out_size (both must be > 0). */
int sb_csr_conv2d(const sb_conv2d *w, const float *x, int64_t n, int64_t h, int64_t width,
                  float *y, int num_threads);

#ifdef __cplusplus
}
#endif

#endif /* SPARSEBENCH_KERNELS_H */
