/* sparsebench compiled kernels: plain C ABI (loaded from Python with ctypes).
 *
 * Conventions (all entry points):
 *   - the sparse weight is described by a struct (sb_linear / sb_conv2d) that the caller
 *     fills once; per call only activations, batch size, output and threads are passed.
 *   - float32 data, row-major / NCHW, C-contiguous; sizes are int64_t.
 *   - row pointers are int32 (M+1 entries, row_ptr[0] == 0, non-decreasing);
 *     column indices are int16 or int32, selected by index_bits (16 or 32).
 *   - bias may be NULL; act fuses an activation into the store: SB_ACT_NONE, SB_ACT_RELU
 *     (max(y, 0)) or SB_ACT_GELU (x/2 (1 + erf(x/sqrt 2)), |error| <= 2e-7).
 *   - 1 <= num_threads <= 255; the kernel runs on that many threads (1 = inline, no
 *     threading): the caller plus num_threads-1 workers of a persistent pool that claim
 *     chunks of work dynamically, so a worker descheduled before claiming never stalls the
 *     call; after one that stalled it mid-chunk, calls run on the caller alone for a while
 *     (the straggler guard, kernels/README.md "Threads").
 *   - return 0 on success, an SB_E* code otherwise. Index ranges are NOT checked here
 *     (the Python loader validates them once, at prepare time).
 */
#ifndef SPARSEBENCH_KERNELS_H
#define SPARSEBENCH_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SB_ABI_VERSION 10

#define SB_ACT_NONE 0
#define SB_ACT_RELU 1
#define SB_ACT_GELU 2

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
 *   "conv_layout"        0 shift, 1 kx-copy, 2 taps, 3 auto (default; csr_conv.cpp), new plans
 *   "conv_l1_kb"         input KB per channel block of a conv tile (applies to new plans)
 *   "conv_prefetch"      conv weight-stream software prefetch distance in nonzeros (0: off)
 *   "linear_chunks"      linear row chunks per thread (default 2)
 *   "linear_min_parallel" work (nnz*batch + 8*rows*batch) below which a linear runs on one thread
 *   "linear_panels"      1 = a CSR linear with a K-panel copy uses it at batch >= 64 (default),
 *                        0 = the row-major path (for A/B)
 *   "linear_prefetch"    K-panel path: prefetch the weight stream this many nonzeros past the
 *                        next row (default 256, 0 = off)
 *   "linear_tile"        1 = batched CSR results go through a 16-row tile (default), 0 = stored
 *                        per row with stride M (the previous kernel, for A/B runs)
 *   "conv_chunks"        conv work chunks per thread (default 2)
 *   "conv_bands"         new conv plans: position bands instead of sb_conv2d_plan's `bands`
 *                        argument (0 = the argument, default)
 *   "conv_pairs"         new conv plans: rows of a dense weight run four at a time (2, default),
 *                        in pairs (1) or alone (0)
 *   "conv_pack_min"      packed floats below which conv packing is not split across threads
 *                        (default 32768)
 *   "pool_backoff_us"    thread pool straggler guard: base back-off period in us (default
 *                        10000; 0 = guard off); setting it also ends a running back-off
 *   "pool_spin_us"       us a waiting pool thread (worker or caller) spins before sleeping (50)
 *   "pool_confirm_us"    straggler guard: a second straggle within this many us (or 4x the
 *                        first wait) engages it (default 5000; 0 = the first one does)
 *   "pool_hold_us"       us a waiting pool thread spins before sleeping while the pool is held
 *                        (sb_pool_hold; default 2000, never less than pool_spin_us)
 *   "pool_hold_yield"    1 (default): past pool_spin_us a held spin calls sched_yield each round
 *   "pool_test_delay_us" tests only: pool worker 1 sleeps this long before each chunk it claims
 * Counters (value >= 0 resets them): "pool_jobs" multi-threaded jobs the pool ran,
 *   "pool_degraded_jobs" multi-threaded jobs (a kernel call runs one or more) that the
 *   straggler guard ran on the caller alone,
 *   "pool_straggles" times the guard engaged, "pool_worker_chunks" chunks run by workers,
 *   "pool_sleeps" times a worker stopped spinning and slept.
 * Returns the previous value, or -1 for an unknown key (value < 0 only queries). */
int sb_tuning(const char *key, int value);

/* Hold the thread pool (delta +1) for a run of kernel calls that come back to back, release it
 * (-1) after; 0 queries. While any caller holds it, waiting pool threads spin up to
 * "pool_hold_us" before sleeping instead of "pool_spin_us" (waking a sleeping thread costs tens
 * of us on a VM). Thread-safe; returns the holder count after the change, or -1 (and no
 * change) when it would go below 0. */
int sb_pool_hold(int delta);

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
  int64_t act;                    /* SB_ACT_NONE / SB_ACT_RELU / SB_ACT_GELU */
  /* Optional K-panel copy of a CSR weight (all NULL / 0 = none; BSR ignores it), used at batch
   * >= 64 on AVX-512: the columns cut into panels of panel_cols (1..256) and the nonzeros
   * regrouped panel by panel, so that 64 batch elements of one panel of the transposed input
   * (panel_cols x 256 bytes) stay in cache while every row reads it. Nonzero j of panel p,
   * row m (panel_ptr[p * (M + 1) + m] <= j < panel_ptr[p * (M + 1) + m + 1]) has the value
   * panel_values[j] and the column p * panel_cols + panel_offsets[j]. Order within a row does
   * not matter. Built by sb_csr_panels. */
  const int32_t *panel_ptr;       /* ceil(K / panel_cols) * (M + 1) pointers */
  const uint8_t *panel_offsets;   /* nnz columns within the panel */
  const float *panel_values;      /* nnz values */
  int64_t panel_cols;             /* 0 = no panel copy */
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
  int64_t act; /* SB_ACT_*, applied after the residual add */
} sb_conv2d;

/* Y[B, M] = X[B, K] @ W^T (+ bias) (relu) with W in CSR (block_rows/cols ignored). */
int sb_csr_linear(const sb_linear *w, const float *x, int64_t batch, float *y, int num_threads);

/* n (1..8) CSR weights with the same number of columns applied to one input: y_i = act_i(x
 * W_i^T + b_i), y_i of shape (batch, M_i). When every weight has a K-panel copy and batch >= 64
 * (AVX-512) the input is transposed once for all of them and their rows share the parallel
 * regions (attention's Q, K and V projections); otherwise the same as n sb_csr_linear calls. */
int sb_csr_linear_group(const sb_linear *const *ws, int64_t n, const float *x, int64_t batch,
                        float *const *ys, int num_threads);

/* y = act2(act1(x W1^T + b1) W2^T + b2) for two CSR weights with first->rows ==
 * second->cols, y of shape (batch, second->rows): a transformer's feed-forward pair. When both
 * have K-panel copies and batch >= 64 (AVX-512) the intermediate stays in the kernel's
 * transposed layout and is never written; otherwise the same as two sb_csr_linear calls.
 * y may be x itself (second->rows == first->cols), not a partial overlap of it. */
int sb_csr_linear_chain(const sb_linear *first, const sb_linear *second, const float *x,
                        int64_t batch, float *y, int num_threads);

/* Fill the K-panel copy (sb_linear.panel_*) of the CSR weight w, panels of panel_cols (1..256)
 * columns: the caller allocates panel_ptr (ceil(K / panel_cols) * (M + 1) int32), offsets and
 * values (nnz each), then sets the four fields of its descriptor. SB_EINVAL for a column
 * index outside [0, K). */
int sb_csr_panels(const sb_linear *w, int64_t panel_cols, int32_t *panel_ptr,
                  uint8_t *panel_offsets, float *panel_values);

/* Same with W in block-sparse row format (the scipy.sparse.bsr_matrix layout). */
int sb_bsr_linear(const sb_linear *w, const float *x, int64_t batch, float *y, int num_threads);

/* Output size of a convolution along one axis: (in + 2*pad - k) / stride + 1, or 0. */
int64_t sb_conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad);

/* Sparse 2-D convolution without im2col: x is N x Cin x H x W, y is N x Cout x Ho x Wo
 * with Ho, Wo from sb_conv_out_size (both must be > 0). Allocates its scratch per call;
 * the planned API below reuses it. */
int sb_csr_conv2d(const sb_conv2d *w, const float *x, int64_t n, int64_t h, int64_t width,
                  float *y, int num_threads);

/* A convolution planned for one input shape: sb_conv2d_plan allocates and fills it (tap
 * offsets, channel blocks, the layout and tile choice, scratch for the packed input and the
 * extended output); sb_conv2d_run executes it; sb_conv2d_plan_free releases it. The plan
 * keeps pointers to the weight descriptor `w` and to `scale`: both must outlive it and stay
 * unchanged. A plan is not re-entrant (its scratch is shared): one sb_conv2d_run at a time.
 * Column indices must be sorted within each row. The fields are informational. */
typedef struct sb_conv_plan {
  int64_t n, h, w;          /* input shape (N, H, W) */
  int64_t ho, wo;           /* convolution output */
  int64_t hq, wq;           /* rows per image and row pitch of the packed layout */
  int64_t plane;            /* floats per (copy, channel) plane */
  int64_t positions;        /* extended output positions per channel */
  int64_t tile, ntiles;     /* output positions per register tile, tiles per channel */
  int64_t direct_in;        /* 1: x is used in place (no packing) */
  int64_t direct_out;       /* 1: the extended output is y itself */
  int64_t pool;             /* fused max-pool window (= stride), -1 global average, 0 none */
  int64_t yh, yw;           /* final output rows/cols (after the pool) */
  int64_t layout;           /* 0: shift (phase copies), 1: kx-copy, 2: taps */
  int64_t channel_blocks;   /* input-channel blocks (partial sums between them) */
  int64_t scratch_bytes;    /* memory owned by the plan */
  int64_t rows_paired;      /* 1: every row has the same taps (a dense weight), run in pairs */
  int64_t bands;            /* position bands, each packed with its halo rows (1: the whole map) */
  int64_t row_out;          /* 1: not direct_out, but tiles write their output runs straight to y */
} sb_conv_plan;

/* Plan w for input N x Cin x H x W with a fused max-pool `pool` (window = stride; 0/1: none;
 * -1: global average pool, y is N x Cout x 1 x 1) and optional
 * post-activation channel scales (Cout floats, or NULL). `bands`: how many position bands to
 * cut the map into (at most 16; fewer when the map is small, 1 with a pool): a run with at
 * most that many threads gives each thread whole bands, packed and computed by that thread
 * alone; pass the thread count the plan will run with (1: no bands). *out receives the plan. */
int sb_conv2d_plan(const sb_conv2d *w, int64_t n, int64_t h, int64_t width, int64_t pool,
                   const float *scale, int64_t bands, sb_conv_plan **out);
void sb_conv2d_plan_free(sb_conv_plan *p);

/* y = pool(scale * act(conv(x) + bias + residual)); residual (N x Cout x Ho x Wo) may be NULL.
 * y is N x Cout x yh x yw. */
int sb_conv2d_run(const sb_conv2d *w, const sb_conv_plan *p, const float *x,
                  const float *residual, float *y, int num_threads);
/* sb_conv2d_run that also writes y[:, :, ::2, ::2] (Cout x ceil(Ho/2) x ceil(Wo/2)) into sub,
 * from the registers: for plans whose output is direct (p->direct_out: batch 1, no pool), else
 * SB_EINVAL. sub must not overlap x, y or the residual. (ResNet's strided projection reads it.) */
int sb_conv2d_run_sub(const sb_conv2d *w, const sb_conv_plan *p, const float *x,
                      const float *residual, float *y, float *sub, int num_threads);

/* Max-pool over NCHW maps: y (N x C x Ho x Wo, Ho/Wo from sb_pool_out_size) = max over each
 * kh x kw window at stride (sh, sw) with pads (ph, pw) read as -inf; pads at most half the
 * window (torch's rule); ceil_mode 1 rounds the output size up (a window must start inside the
 * input or the left padding). */
int64_t sb_pool_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t ceil_mode);
int sb_maxpool2d(const float *x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh,
                 int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t ceil_mode,
                 float *y, int num_threads);

/* Dense convolution of few input channels (an image model's stem, dense_conv.cpp): output
 * channels in vector lanes, optional fused max-pool. weight is Cout x Cin x kh x kw (copied and
 * repacked; Cout a multiple of 16), bias Cout floats or NULL, act SB_ACT_NONE or SB_ACT_RELU.
 * pool_kh 0: no pool; else y = maxpool(act(conv(x) + bias)) with the window, stride, pads (at
 * most half the window, read as -inf) and ceil mode of sb_maxpool2d. */
typedef struct sb_dense_conv sb_dense_conv;
int sb_dense_conv_create(const float *weight, const float *bias, int64_t cout, int64_t cin,
                         int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                         int act, int64_t pool_kh, int64_t pool_kw, int64_t pool_sh,
                         int64_t pool_sw, int64_t pool_ph, int64_t pool_pw, int64_t pool_ceil,
                         sb_dense_conv **out);
void sb_dense_conv_free(sb_dense_conv *c);
/* y's spatial size (pooled, or the conv's) for an h x w input; SB_EINVAL if it is empty. */
int sb_dense_conv_out_size(const sb_dense_conv *c, int64_t h, int64_t w, int64_t *yh,
                           int64_t *yw);
/* x is n x Cin x h x w, y n x Cout x yh x yw (NCHW, not overlapping x). */
int sb_dense_conv_run(const sb_dense_conv *c, const float *x, int64_t n, int64_t h, int64_t w,
                      float *y, int num_threads);

/* ---- transformer blocks (transformer.cpp) ------------------------------------------------ */

/* y = LayerNorm(x + residual) over the last axis of a rows x cols matrix:
 * (s - mean) / sqrt(var + eps) * gamma + beta with the biased variance (two passes, as torch).
 * residual, gamma, beta may be NULL (no add, scale 1, shift 0); y may be x or residual. */
int sb_add_layernorm(const float *x, const float *residual, const float *gamma,
                     const float *beta, float eps, int64_t rows, int64_t cols, float *y,
                     int num_threads);

/* Scaled dot-product attention on the Linear outputs' layout: q is batch x seq_q x
 * (heads*head_dim), k and v batch x seq_k x (heads*head_dim), out like q. Per (batch b, head h):
 * out = softmax(q k^T * scale + mask) v, the softmax over keys, max-subtracted. mask (additive,
 * float) may be NULL; element (b, h, i, j) is mask[b*mask_batch_stride + h*mask_head_stride +
 * i*mask_row_stride + j] (stride 0: broadcast over that axis). A query whose keys are all
 * masked with -inf gets a zero output row (as the SDPA exports' Where(IsNaN(P), 0, P); a plain
 * softmax would give NaN). out must not overlap q, k, v. Threads take (batch, head) pairs. */
int sb_attention(const float *q, const float *k, const float *v, const float *mask,
                 int64_t mask_batch_stride, int64_t mask_head_stride, int64_t mask_row_stride,
                 int64_t batch, int64_t seq_q, int64_t seq_k, int64_t heads, int64_t head_dim,
                 float scale, float *out, int num_threads);

/* y[i, :] = table[idx[i], :] for i < n (an embedding lookup; ONNX Gather on axis 0): table is
 * rows x cols, negative ids count from the end. An id outside [-rows, rows) is SB_EINVAL and
 * leaves y untouched. */
int sb_gather_rows(const float *table, int64_t rows, int64_t cols, const int64_t *idx,
                   int64_t n, float *y);

/* y[i] = alpha * a[i] + b[i % b_size] over n floats (b_size divides n: b repeats, e.g. a
 * (1, T, C) addend of a (B, T, C) tensor); b may be NULL (y = alpha * a). y may be a. */
int sb_scale_add(const float *a, float alpha, const float *b, int64_t b_size, int64_t n,
                 float *y, int num_threads);

/* An attention mask from a (batch x keys) key mask: y[b][i][j] = m[b * keys + j] != 0 ? on :
 * off for i < rows (y is batch x rows x keys; rows 1 when the attention broadcasts it). */
int sb_key_mask(const int64_t *m, int64_t batch, int64_t rows, int64_t keys, float on, float off,
                float *y);

/* y = softmax over the last axis of a rows x cols matrix (max-subtracted, as torch): a row of
 * NaN or +inf, or of all -inf, gives NaN, as torch does. y may be x. Threads take rows. */
int sb_softmax(const float *x, int64_t rows, int64_t cols, float *y, int num_threads);

#ifdef __cplusplus
}
#endif

#endif /* SPARSEBENCH_KERNELS_H */
