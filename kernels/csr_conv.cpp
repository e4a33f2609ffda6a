// Sparse 2-D convolution (NCHW) without a full im2col.
//
// Planned once per input shape (sb_conv2d_plan), run many times (sb_conv2d_run).
//
// Layout. The input is repacked per call into "copies" (zero padding included) laid out
// [copy][Cin][N][Hq][pitch], such that output position p = (n*Hq + oy)*pitch + ox of every
// tap (c, ky, kx) reads element p + offset(c, ky, kx) of the packed array. Each nonzero weight
// is then one broadcast-FMA over a contiguous run of output positions. Three layouts:
//   * shift: stride_h*stride_w phase copies (about one copy of the input) with row pitch
//     Wo + (kw-1)/sw; kx is a shift of the read. Wastes (kw-1)/sw output columns per row and
//     most loads split cache lines. Used for wide maps and 1x1 kernels.
//   * kx-copy: stride_h*kw copies (one per kx) with row pitch Wo: no wasted columns, loads
//     aligned when Wo is a multiple of 16. Used up to 16 wide, and at batch 1 for widths that
//     are multiples of 16.
//   * taps: kh*kw copies (the im2col of the map): all lanes useful, all loads aligned. Used
//     only for maps of at most 16 outputs filling 16-32 lanes (a few hundred KB of copies).
// Batched images are stacked in the position axis, so small maps at batch > 1 fill vectors.
//
// Tiles. Output positions are cut into register tiles of T = W*NV floats (W = 4/8/16 lanes,
// NV vectors); for each tile and output channel the row's nonzeros stream through and the
// tile stays in registers. The weight stream is the plan's own copy of the nonzeros as
// (int32 offset, value) pairs in exactly the order they are read. When the input a tile
// reads does not fit L1 the input channels are blocked and partial sums of up to 16 KB of
// output channels stay in an L1 buffer between blocks.
//
// Epilogue: bias in registers; then either the final epilogue in registers (when the
// extended layout is y itself: batch 1, no wasted columns, no pool; sb_conv2d_run_sub also
// writes y[:, :, ::2, ::2] from there, and a batch-1 global average pool sums there), or
// without a pool each tile's runs of real outputs written straight to y ("row_out"), or a
// compaction pass per output channel adding the residual, activation, channel scale and fused
// max-pool. The first two prefetch the lines of y and of the residual that they will store a
// few output channels later (one stream per channel: too many for the hardware prefetchers).
// A band's or the map's last partial tile runs in the narrowest tile that holds it.
//
// Threads. A plan made for T threads (sb_conv2d_plan's `bands`) cuts the map into T position
// bands of equal size (at multiples of 16 positions; not with a pool, not for maps under a
// tile per band). Each band has its own packed region holding its rows and its halo rows (the
// rows below it that its taps read), so one chunk packs a band and computes every output
// channel on it: no barrier between packing and compute, no packed line read by two cores,
// and each thread writes its own part of y, which the next layer banded the same way reads
// from the same core's cache. Small maps at batch 1 written straight to y, with two or more
// channel blocks, split the input-channel blocks instead (each chunk packs and sums its own
// blocks into a buffer; a second job adds the buffers and runs the epilogue); their blocks
// are a multiple of the thread count, so thread t sums the t-th share of the input channels,
// and 1x1 reductions on unaligned maps are split this way too. Otherwise (one
// band, or more threads than bands) threads pack planes, then claim chunks of output channels
// (balanced by nnz) over the whole map.
// Packing. Every plan packs into one grow-only region of the calling thread (unless
// conv_shared_pack was 0 when it was planned), so a layer's packed input is written where the
// previous layer's was, still in cache. Narrow maps are packed from a precomputed index map:
// a permute of two loads per 16 floats whose sources lie within 32 consecutive floats, an
// AVX-512 gather otherwise.
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <atomic>
#include <initializer_list>

#include "common.hpp"
#include "sparsebench_kernels.h"

namespace sb {
struct Nz;
}

constexpr int64_t sb_kMaxBands = 16;

struct sb_conv_plan_impl {
  sb_conv_plan pub;
  const sb_conv2d *w;
  int64_t magic;
  int64_t layout;       // kShift, kKxCopy or kTaps
  int64_t per_row;      // copies per packed row phase: stride_w (shift) or kernel_w
  int64_t ncopies, pitch, ncb, cbs, ext_stride, window;
  int64_t nbands;       // position bands (see sb_conv2d_run), 1: one band, the whole map
  int64_t band_pos[sb_kMaxBands + 1];  // first output position of each band (+ positions)
  int64_t band_floats;  // packed floats per band (copies x Cin x plane)
  int64_t row_out;      // 1: tiles write their output runs straight to y (no ext, no compaction)
  int64_t gap_direct;   // 1: a global average pool summed from the registers (batch 1, pitch Wo)
  int64_t compacts;     // 1: tiles write extended rows (ext) that a compaction pass finishes
  int32_t *sub_tab;     // direct output: per 16 positions, the mask of those with even row and
                        // column and how many such positions precede them (sb_conv2d_run_sub)
  int64_t sub_plane;    // floats per channel of the subsample, ceil(Ho/2) x ceil(Wo/2)
  int64_t quads;        // 1: rows with the same taps run four at a time (tiles of at most 96)
  int32_t *gmap;        // gather packing: source index in a channel plane per packed float
  int32_t *gbase;       // per packed float k: the lowest source index s of the 16 from k when
                        // they all lie in [s, s + 32) (packed by a permute of two loads),
                        // kGatherAny when they do not (a gather), kGatherNone when all are padding
  sb::Nz *stream;       // nnz (offset, value) pairs in traversal order (window, block, row)
  int32_t *seg;         // Cout x ncb x 2: [start, end) of each (row, block) in the stream
  float *pack;          // packed input (NULL when x is used in place or shared_pack)
  int64_t shared_pack;  // 1: packed into the calling thread's scratch (kScratchConvPack)
  int64_t private_pack;  // 1: on 2+ threads every thread packs the whole map into its own scratch
  float *ext;           // extended output (NULL when direct)
  const float *scale;
  void *mem;
};

namespace sb {

// One nonzero of the weight stream: input offset of its tap and its value.
struct Nz {
  int32_t off;
  float val;
};

int g_conv_layout = 3;    // 0 shift, 1 kx-copy, 2 taps, 3 auto
int g_conv_l1_kb = 0;     // input KB per channel block (0: auto, see l1_budget_kb)
int g_conv_ksplit_share = 1;  // new plans, 2+ threads: input-channel blocks a multiple of the
                              // threads, and 1x1 reductions on unaligned maps split by input
                              // channels (see sb_conv2d_plan)
int g_conv_block_nnz = 32;  // new 1x1 plans: channel blocks of at least this many nonzeros per
                            // row on average (0: the L1 budget alone)
int g_conv_prefetch = 128;  // weight-stream prefetch distance in nonzeros (0: off)
int g_conv_chunks = 2;      // output-channel chunks per thread
int g_conv_pack_min = 32768;  // packed floats below which packing stays on the caller
int g_conv_pairs = 2;         // new plans: rows with the same taps computed in pairs (1) or
                              // fours, in tiles of at most 96 positions (2)
int g_conv_bands = 0;         // new plans: position bands (0: sb_conv2d_plan's argument)
int g_conv_row_out = 1;       // new plans: row-scatter epilogue instead of ext + compaction
int g_conv_tile_nv = 0;       // new plans: vectors per tile, 1..8 (else auto: pick_tile)
int g_conv_shared_pack = 1;  // new plans pack into the calling thread's scratch, not their own
int g_conv_ksplit = 1;       // small maps on 2+ threads: split by input-channel blocks
int g_conv_gather = 2;        // new plans, narrow maps: 0 row copies, 1 gathers, 2 permutes
                              // where 16 packed floats come from 32 consecutive ones, else gathers
int g_conv_aligned_1x1 = 1;   // new plans: pack a 1x1's map whose planes are not 64-byte aligned
int g_conv_private_pack = 32;  // new plans, 2+ threads: per-thread aligned planes from this many
                               // nonzeros per input channel (0: off; see sb_conv2d_run)
int g_conv_gap_direct = 1;     // new plans: a batch-1 global average pool from the tile's
                              // registers (0: extended rows and the compaction pass)
int g_conv_ksplit_gap = 1;    // such a plan on 2+ threads may split its input channels too
int g_conv_out_prefetch = 8;  // direct-output epilogue: prefetch y (and the residual) this many
                              // output channels ahead (0: off)

namespace {

constexpr int64_t kMagic = 0x5342434f4e56ll;  // "SBCONV"
constexpr int64_t kMaxPacked = 2147483647;    // offsets are int32
// 64 KB of partial sums per window of output rows (in L2): a window's rows read each input
// block once per tile. 16 KB windows (4096) re-read it 2-4x as often; 64 KB were 2% faster on
// ResNet-50 at 1 thread (24.06 -> 23.48 ms, 12 rounds; 2 threads 0.997x), 3x3 256 -> 256 at
// 14x14 3% alone; 8 and 4 KB windows 2-7% slower.
constexpr int64_t kPartialFloats = 16384;
constexpr int64_t kGlobalAvg = -1;            // pool value: global average pool

SB_INLINE int64_t ceil_div_pos(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }
SB_INLINE int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// Tile width in floats: 4 or 8 when everything fits, else 16*NV with NV in 1..8: the whole
// extent when it fits 8 vectors, else the NV with the least work, counting each nonzero as NV
// loads + 2 (value, offset) per tile. 7 (112) fits ResNet's 28x28 and 14x14 maps without
// waste, where 8 (128) pads 784 positions to 896: 1x1 and 3x3 layers of those maps alone were
// 1-8% faster on Zen 4 with 112 (ResNet-50 90%: 0.5% at 1 thread, 2% at 2). 10, 12 and 16
// vectors were slower (more channel blocks for the same L1 budget). Knob conv_tile_nv forces
// NV (1..8) for new plans.
int64_t pick_tile(int64_t positions) {
  if (g_conv_tile_nv >= 1 && g_conv_tile_nv <= 8) return 16 * (int64_t)g_conv_tile_nv;
#if SB_AVX512
  if (positions <= 4) return 4;
  if (positions <= 8) return 8;
#endif
  if (positions <= 128) return round_up(positions, 16);
  int64_t best = 8;
  double best_cost = 1e300;
  for (int64_t nv : {8, 7, 6, 5, 4}) {
    const double lanes = (double)round_up(positions, nv * 16);
    const double cost = lanes * (double)(nv + 2) / (double)nv;
    if (cost < best_cost) best = nv, best_cost = cost;
  }
  return best * 16;
}

// Input KB per channel block (knob conv_l1_kb; 0: auto). Auto: 64 for 1x1 kernels, whose tile
// reads each channel's run of positions once per nonzero, so a block past L1 still streams well
// from L2 (ResNet-50's 1x1s on Zen 4's 32 KB L1d: as fast or faster with 64 KB than with 32);
// for larger kernels, whose taps re-read overlapping runs, the L1d size clamped to 16..64 KB
// (there 32 KB rather than 64 made ResNet-50's 3x3s at 56x56 and 28x28 9-15% faster, 14x14 and
// 7x7 unchanged). On a Xeon with a 48 KB L1d, 64 had been measured best on the whole model;
// there this rule gives its spatial kernels 48: measured on such a Xeon later, ResNet-50 90% was
// 1.023x / 1.089x slower (1 / 2 threads) with 64 for every kernel, 1.058x / 1.106x with 32.
int64_t l1_budget_kb(int64_t kernel_taps) {
  if (g_conv_l1_kb > 0) return g_conv_l1_kb;
  if (kernel_taps == 1) return 64;
  static const int64_t l1d_kb = [] {
    const long b = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    return b > 0 ? (int64_t)(b / 1024) : (int64_t)64;
  }();
  return l1d_kb < 16 ? 16 : l1d_kb > 64 ? 64 : l1d_kb;
}

struct Geo {  // one candidate layout
  int64_t copies, pitch, hq, positions, tile, plane, direct_in, direct_out;
};

constexpr int32_t kGatherAny = -1, kGatherNone = -2;  // gbase entries that are not a base

constexpr int64_t kShift = 0, kKxCopy = 1, kTaps = 2, kAuto = 3;

// A 1x1 kernel with unit stride and no padding: its packed planes are copies of x's.
bool plain_1x1(const sb_conv2d *w) {
  return w->kernel_h == 1 && w->kernel_w == 1 && w->stride_h == 1 && w->stride_w == 1 &&
         w->pad_h == 0 && w->pad_w == 0;
}

// The layouts (see the file comment); taps: one copy per (ky, kx), i.e. an im2col of the map,
// used only for small maps, where it makes every load aligned and every lane useful.
Geo layout_geometry(const sb_conv2d *w, int64_t n, int64_t h, int64_t width, int64_t ho,
                    int64_t wo, int64_t pool, int64_t layout, bool pack_planes) {
  const int64_t sh = w->stride_h, sw = w->stride_w, kh = w->kernel_h, kw = w->kernel_w;
  Geo g{};
  g.hq = layout == kTaps ? ho : ho + (kh - 1) / sh;
  g.pitch = layout == kShift ? wo + (kw - 1) / sw : wo;
  g.copies = layout == kShift ? sh * sw : layout == kKxCopy ? sh * kw : kh * kw;
  g.positions = ((n - 1) * g.hq + ho - 1) * g.pitch + wo;
  g.tile = pick_tile(g.positions);
  g.direct_in = sh == 1 && sw == 1 && w->pad_h == 0 && w->pad_w == 0 && n == 1 &&
                (layout == kShift || (kh == 1 && kw == 1)) && !pack_planes;
  // the packed planes start on 64-byte boundaries unless x is used in place
  g.plane = g.direct_in ? h * width : round_up(n * g.hq * g.pitch, 16);
  // batch 1 (y is [Cout][Ho][Wo]); rows past Ho are never computed, so the pitch must match
  g.direct_out = n == 1 && g.pitch == wo && (pool == 0 || pool == 1);
  return g;
}

struct Job {
  const sb_conv2d *w;
  const sb_conv_plan_impl *pl;
  const float *xp;        // packed input (or x itself) of output position xpos
  int64_t xpos;
  const float *residual;  // N x Cout x Ho x Wo or NULL
  float *y;
  int act;
  int64_t prefetch;  // nonzeros ahead to prefetch in the weight stream (0: off)
  int64_t out_prefetch = g_conv_out_prefetch;  // output channels ahead to prefetch y lines
  int64_t cb0 = 0, cb1 = -1;  // input-channel blocks [cb0, cb1) (cb1 < 0: to the last)
  float *raw = nullptr;       // not NULL: the blocks' sums go here, [Cout][positions], with no
                              // bias or epilogue (a split over input channels, sb_conv2d_run)
  float *sub = nullptr;       // not NULL: y[:, :, ::2, ::2] is also written here (direct output)
};

// Output positions [p0, p0 + n) of channel co, at src[0, n), into the subsample sub (the
// positions of even row and column, in order; see sub_tab).
SB_INLINE void sub_run(const sb_conv_plan_impl *pl, float *sub, int64_t co, const float *src,
                       int64_t p0, int64_t n) {
  float *SB_RESTRICT dst = sub + co * pl->sub_plane;
  for (int64_t p = p0; p < p0 + n; ++p) {
    const uint32_t m = (uint32_t)pl->sub_tab[2 * (p >> 4)], bit = (uint32_t)(p & 15);
    if (m >> bit & 1u)
      dst[pl->sub_tab[2 * (p >> 4) + 1] + __builtin_popcount(m & ((1u << bit) - 1u))] = src[p - p0];
  }
}

// The lines of y[at, at + n) (for writing: no read-for-ownership stall when the tile stores
// them) and of the residual's same range, which a tile stores k.out_prefetch output channels
// later: each channel's run is its own stream, a plane apart, too many for the hardware
// prefetchers.
SB_INLINE void prefetch_out(const Job &k, int64_t at, int64_t n) {
  for (int64_t q = 0; q < n; q += 16) {
    __builtin_prefetch(k.y + at + q, 1, 3);
    if (k.residual) __builtin_prefetch(k.residual + at + q, 0, 3);
  }
}

// The lines of the subsample that channel co's positions [p0, p0 + n) write (as prefetch_out).
SB_INLINE void prefetch_sub(const Job &k, int64_t co, int64_t p0, int64_t n) {
  const int32_t *t = k.pl->sub_tab;
  const float *at = k.sub + co * k.pl->sub_plane;
  const int64_t a = t[2 * (p0 >> 4) + 1], e = t[2 * ((p0 + n - 1) >> 4) + 1] + 16;
  for (int64_t q = a; q < e; q += 16) __builtin_prefetch(at + q, 1, 3);
}

// Stacked packed rows [r0, r1) (row R = n * hq + i) of copy (a, u) of channel c into its plane
// dst, row R at dst + (R - row0) * pitch; with row0 == 0 and r1 == n * hq (one band) this also
// zeroes the plane's alignment tail.
void pack_copy(const sb_conv2d *w, const sb_conv_plan_impl *pl, const float *x, int64_t a,
               int64_t u, int64_t c, float *dst, int64_t row0, int64_t r0, int64_t r1) {
  const sb_conv_plan &p = pl->pub;
  const int64_t Cin = w->in_channels, sh = w->stride_h, sw = w->stride_w;
  const int64_t H = p.h, W = p.w, hq = p.hq, pitch = pl->pitch;
  const int64_t shift = u - w->pad_w;  // ix = sw*j + shift
  int64_t jlo = ceil_div_pos(-shift, sw);
  int64_t jhi = W - 1 - shift < 0 ? 0 : (W - 1 - shift) / sw + 1;
  if (jhi > pitch) jhi = pitch;
  if (jlo > jhi) jlo = jhi;
#if SB_AVX512
  // short unit-stride rows: per 16-column block, the lanes read from the source row (masked
  // lanes are neither read nor faulted) and the lanes stored; the same for every row
  const bool vec = sw == 1 && pitch <= 64;
  const int64_t nb = (pitch + 15) / 16;
  __mmask16 ld[4] = {0, 0, 0, 0}, st[4] = {0, 0, 0, 0};
  for (int64_t b = 0; vec && b < nb; ++b) {
    const int64_t j0 = 16 * b, lo = jlo - j0 > 0 ? jlo - j0 : 0, hi = jhi - j0 < 16 ? jhi - j0 : 16;
    ld[b] = hi > lo ? (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u)) : (__mmask16)0;
    const int64_t lanes = pitch - j0 < 16 ? pitch - j0 : 16;
    st[b] = (__mmask16)((1u << lanes) - 1u);
  }
#endif
  // a 1x1 kernel's unpadded unit-stride map: its rows are contiguous on both sides
  const bool whole = plain_1x1(w) && pitch == W && hq == H;
  for (int64_t n = r0 / hq; n < p.n && n * hq < r1; ++n) {
    const int64_t i0 = r0 - n * hq > 0 ? r0 - n * hq : 0, i1 = r1 - n * hq < hq ? r1 - n * hq : hq;
    const float *plane = x + (n * Cin + c) * H * W;
    if (whole) {
      std::memcpy(dst + (n * hq + i0 - row0) * pitch, plane + i0 * W,
                  (size_t)((i1 - i0) * W) * sizeof(float));
      continue;
    }
    for (int64_t i = i0; i < i1; ++i) {
      float *d = dst + (n * hq + i - row0) * pitch;
      const int64_t iy = sh * i + a - w->pad_h;
      const bool inside = iy >= 0 && iy < H;
#if SB_AVX512
      if (vec) {
        const float *src = plane + (inside ? iy * W + shift : 0);  // d[j] = src[j], j in [jlo, jhi)
        for (int64_t b = 0; b < nb; ++b)
          _mm512_mask_storeu_ps(d + 16 * b, st[b],
                                inside ? _mm512_maskz_loadu_ps(ld[b], src + 16 * b)
                                       : _mm512_setzero_ps());
        continue;
      }
#endif
      if (!inside) {
        std::memset(d, 0, (size_t)pitch * sizeof(float));
        continue;
      }
      const float *src = plane + iy * W;
      for (int64_t j = 0; j < jlo; ++j) d[j] = 0.f;
      if (sw == 1) {
        std::memcpy(d + jlo, src + jlo + shift, (size_t)(jhi - jlo) * sizeof(float));
      } else {
        int64_t j = jlo;
#if SB_AVX512
        // stride 2: the even lanes of two vectors (the second one's last lane is never read,
        // so the row's last element is the furthest read)
        if (sw == 2) {
          const __m512i ev =
              _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
          for (; j + 16 <= jhi; j += 16) {
            const float *s2 = src + 2 * j + shift;
            const __m512 lo = _mm512_loadu_ps(s2), hi = _mm512_maskz_loadu_ps(0x7fff, s2 + 16);
            _mm512_storeu_ps(d + j, _mm512_permutex2var_ps(lo, ev, hi));
          }
        }
#endif
        for (; j < jhi; ++j) d[j] = src[sw * j + shift];
      }
      for (int64_t j = jhi; j < pitch; ++j) d[j] = 0.f;
    }
  }
  if (row0 != 0 || r1 < p.n * hq) return;
  const int64_t used = p.n * hq * pitch;  // zero the alignment tail of the plane
  for (int64_t i = used; i < p.plane; ++i) dst[i] = 0.f;
}

#if SB_AVX512
// Gather packing for narrow maps: rows [i0, i1) of every copy of channels [c0, c1) of image n
// from a precomputed map (source index within the H*W channel plane, -1 for padding) into the
// band at `band` whose first row is stacked row row0, 16 floats at a time. Where the 16
// sources of a vector lie within 32 consecutive floats (gbase), two loads and a permute
// instead of a gather. Channels are the inner loop, in blocks of kGatherBlock whose planes
// stay in L1: a vector's indices and masks are computed once for the block.
// 1 thread, 3x3 at 90%: 512 channels of 4x4 (taps) 25.9 -> 9.0 us, 256 of 8x8 (kx-copy)
// 17 -> 7.7, 256 of 14x14 (shift) 37 -> 20, 512 of 7x7 28 -> 12.
constexpr int64_t kGatherBlock = 16;

void pack_gather(const sb_conv2d *w, const sb_conv_plan_impl *pl, const float *x, int64_t c0,
                 int64_t c1, int64_t n, int64_t i0, int64_t i1, float *band, int64_t row0) {
  const sb_conv_plan &p = pl->pub;
  const int64_t img = p.hq * pl->pitch, HW = p.h * p.w, Cin = w->in_channels;
  const int64_t end = i1 * pl->pitch;
  for (int64_t cb = c0; cb < c1; cb += kGatherBlock) {
    const int64_t ce = std::min(c1, cb + kGatherBlock);
    const float *src0 = x + (n * Cin + cb) * HW;
    for (int64_t copy = 0; copy < pl->ncopies; ++copy) {
      // map index k goes to band[base + k] (base < 0 when the band starts inside image n)
      float *dst0 = band + (copy * Cin + cb) * p.plane + (n * p.hq - row0) * pl->pitch;
      const int32_t *map = pl->gmap + copy * img, *gbase = pl->gbase + copy * img;
      for (int64_t k = i0 * pl->pitch; k < end; k += 16) {
        const __mmask16 lanes = end - k >= 16 ? (__mmask16)0xffff
                                              : (__mmask16)((1u << (end - k)) - 1u);
        const int32_t s = gbase[k];
        float *d = dst0 + k;
        const float *sc = src0;
        if (s == kGatherNone) {
          for (int64_t c = cb; c < ce; ++c, d += p.plane)
            _mm512_mask_storeu_ps(d, lanes, _mm512_setzero_ps());
          continue;
        }
        const __m512i idx = _mm512_maskz_loadu_epi32(lanes, map + k);
        const __mmask16 m = _mm512_mask_cmpge_epi32_mask(lanes, idx, _mm512_setzero_si512());
        if (s < 0) {
          for (int64_t c = cb; c < ce; ++c, d += p.plane, sc += HW)
            _mm512_mask_storeu_ps(d, lanes,
                                  _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, sc, 4));
          continue;
        }
        // every source in [s, s + 32): two loads (masked: none past the plane), a permute
        const int64_t left = HW - s;  // >= 1
        const __mmask16 m1 = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
        const __mmask16 m2 = left >= 32 ? (__mmask16)0xffff
                             : left <= 16 ? (__mmask16)0 : (__mmask16)((1u << (left - 16)) - 1u);
        const __m512i rel = _mm512_sub_epi32(idx, _mm512_set1_epi32(s));
        for (int64_t c = cb; c < ce; ++c, d += p.plane, sc += HW) {
          const __m512 lo = _mm512_maskz_loadu_ps(m1, sc + s);
          const __m512 hi = _mm512_maskz_loadu_ps(m2, sc + s + 16);
          _mm512_mask_storeu_ps(d, lanes, _mm512_maskz_permutex2var_ps(m, lo, rel, hi));
        }
      }
    }
  }
}
#endif

// Activation then channel scale, in place on r[0, n).
void post_range(float *SB_RESTRICT r, int64_t n, int act, bool scaled, float sc) {
  if (act == kActRelu)
    for (int64_t x = 0; x < n; ++x) r[x] = r[x] < 0.f ? 0.f : r[x];
  else if (act == kActGelu)
    act_range(r, n, act);
  if (scaled)
    for (int64_t x = 0; x < n; ++x) r[x] *= sc;
}

// A run of a tile's output positions: tile offset t0, length len, its place in y (plus
// co * ho * wo for channel co).
struct OutRun {
  int32_t t0, len;
  int64_t yoff;
};
constexpr int64_t kMaxRuns = 130;  // a 128-position tile: at most one run per position (+2)

// The runs of output positions in extended positions [p0, p0 + valid) (row-out plans): the
// padded columns of the shift layout and the rows between stacked images are skipped.
int tile_runs(const sb_conv_plan_impl *pl, int64_t Cout, int64_t p0, int64_t valid,
              OutRun *runs) {
  const sb_conv_plan &p = pl->pub;
  const int64_t pitch = pl->pitch, img = p.hq * pitch, ho = p.ho, wo = p.wo, end = p0 + valid;
  int nrun = 0;
  for (int64_t q = p0; q < end;) {
    const int64_t n = q / img, r = q - n * img, oy = r / pitch, ox = r - oy * pitch;
    if (oy >= ho) {  // halo rows below an image: on to the next image
      q = (n + 1) * img;
      continue;
    }
    if (ox >= wo) {  // padded columns: on to the next row
      q += pitch - ox;
      continue;
    }
    // rows are contiguous in y when the pitch is the width: a run may span rows of one image
    const int64_t stop = pitch == wo ? n * img + ho * wo : q + (wo - ox);
    const int64_t len = (stop < end ? stop : end) - q;
    runs[nrun++] = OutRun{(int32_t)(q - p0), (int32_t)len, n * Cout * ho * wo + oy * wo + ox};
    q += len;
  }
  return nrun;
}

// Channel co's tile sums (bias included) from tb to y: residual, activation, channel scale.
void store_runs(const Job &k, int64_t co, const float *SB_RESTRICT tb, const OutRun *runs,
                int nrun) {
  const sb_conv_plan &p = k.pl->pub;
  const int64_t at = co * p.ho * p.wo;
  const float *scale = k.pl->scale;
  if (k.out_prefetch && co + k.out_prefetch < k.w->out_channels)
    for (int i = 0; i < nrun; ++i)
      prefetch_out(k, at + k.out_prefetch * p.ho * p.wo + runs[i].yoff, runs[i].len);
  for (int i = 0; i < nrun; ++i) {
    float *SB_RESTRICT dst = k.y + at + runs[i].yoff;
    const float *src = tb + runs[i].t0;
    const int64_t len = runs[i].len;
    if (k.residual) {
      const float *SB_RESTRICT res = k.residual + at + runs[i].yoff;
      for (int64_t x = 0; x < len; ++x) dst[x] = src[x] + res[x];
    } else {
      std::memcpy(dst, src, (size_t)len * sizeof(float));
    }
    post_range(dst, len, k.act, scale != nullptr, scale ? scale[co] : 1.f);
  }
}

// dst[x] = max of the 2x2 window at column 2x of rows a and b.
void pool2(const float *SB_RESTRICT a, const float *SB_RESTRICT b, float *SB_RESTRICT dst,
           int64_t yw) {
  int64_t x = 0;
#if SB_AVX512
  const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (; x + 16 <= yw; x += 16) {
    const __m512 a0 = _mm512_loadu_ps(a + 2 * x), a1 = _mm512_loadu_ps(a + 2 * x + 16);
    const __m512 b0 = _mm512_loadu_ps(b + 2 * x), b1 = _mm512_loadu_ps(b + 2 * x + 16);
    const __m512 ma = _mm512_max_ps(_mm512_permutex2var_ps(a0, ev, a1),
                                    _mm512_permutex2var_ps(a0, od, a1));
    const __m512 mb = _mm512_max_ps(_mm512_permutex2var_ps(b0, ev, b1),
                                    _mm512_permutex2var_ps(b0, od, b1));
    _mm512_storeu_ps(dst + x, _mm512_max_ps(ma, mb));
  }
#endif
  for (; x < yw; ++x) {
    float m = a[2 * x];
    const float v[3] = {a[2 * x + 1], b[2 * x], b[2 * x + 1]};
    for (float u : v)
      if (u > m || u != u) m = u;
    dst[x] = m;
  }
}

// A tile's sum of one output channel's pooled values into the global average y[co] (batch 1):
// the first tile (position 0) sets it, later ones add; one chunk runs all tiles of a channel.
SB_INLINE void gap_add(const Job &k, int64_t co, int64_t p0, float sum) {
  const float v = sum / (float)k.pl->pub.positions;
  k.y[co] = p0 == 0 ? v : k.y[co] + v;
}

// Residual, activation, channel scale and max-pool (or global average) from the extended
// rows to NCHW y: channels [c0, c1), extended positions [pa, pb) (a part of the map only
// without a pool).
void compact(const Job &k, int64_t c0, int64_t c1, int64_t pa, int64_t pb) {
  const sb_conv_plan &p = k.pl->pub;
  const int64_t Cout = k.w->out_channels, ho = p.ho, wo = p.wo, pitch = k.pl->pitch;
  const int64_t img = p.hq * pitch, P = p.pool > 1 ? p.pool : 1;
  const int act = k.act;
  const float *scale = k.pl->scale;
  for (int64_t co = c0; co < c1; ++co) {
    const float sc = scale ? scale[co] : 1.0f;
    const bool scaled = scale != nullptr;
    for (int64_t n = 0; n < p.n; ++n) {
      float *base = k.pl->ext + co * k.pl->ext_stride + n * img;  // this chunk's rows
      // columns [x0, x1) of conv output row oy of this (n, co): residual added, activation,
      // scale, in place
      auto finish_span = [&](int64_t oy, int64_t x0, int64_t x1) -> float * {
        float *SB_RESTRICT row = base + oy * pitch;
        if (k.residual) {
          const float *SB_RESTRICT res = k.residual + ((n * Cout + co) * ho + oy) * wo;
          for (int64_t x = x0; x < x1; ++x) row[x] += res[x];
        }
        post_range(row + x0, x1 - x0, act, scaled, sc);
        return row;
      };
      auto finish_row = [&](int64_t oy, int64_t len) { return finish_span(oy, 0, len); };
      if (p.pool == kGlobalAvg) {
        float sum = 0.f;
        for (int64_t oy = 0; oy < ho; ++oy) {
          const float *row = finish_row(oy, wo);
          for (int64_t x = 0; x < wo; ++x) sum += row[x];
        }
        k.y[n * Cout + co] = sum / (float)(ho * wo);
      } else if (P == 1) {
        const int64_t first = n * img;  // position of the image's row 0
        const int64_t lo = pa > first ? (pa - first) / pitch : 0;
        const int64_t hi = pb - first < ho * pitch ? (pb - first + pitch - 1) / pitch : ho;
        for (int64_t oy = lo; oy < hi; ++oy) {  // the part of each row inside [pa, pb)
          const int64_t r = first + oy * pitch;
          const int64_t x0 = pa > r ? pa - r : 0, x1 = pb - r < wo ? pb - r : wo;
          if (x0 >= x1) continue;
          const float *row = finish_span(oy, x0, x1);
          std::memcpy(k.y + ((n * Cout + co) * ho + oy) * wo + x0, row + x0,
                      (size_t)(x1 - x0) * sizeof(float));
        }
      } else {
        const int64_t yh = p.yh, yw = p.yw, span = yw * P;
        for (int64_t py = 0; py < yh; ++py) {
          for (int64_t dy = 0; dy < P; ++dy) finish_row(py * P + dy, span);
          const float *rows = base + py * P * pitch;
          float *dst = k.y + ((n * Cout + co) * yh + py) * yw;
          if (P == 2) {
            pool2(rows, rows + pitch, dst, yw);
            continue;
          }
          for (int64_t px = 0; px < yw; ++px) {
            float m = rows[px * P];
            for (int64_t dy = 0; dy < P; ++dy)
              for (int64_t dx = 0; dx < P; ++dx) {
                const float v = rows[dy * pitch + px * P + dx];
                if (v > m || v != v) m = v;
              }
            dst[px] = m;
          }
        }
      }
    }
  }
}

#if SB_AVX512
template <int W>
struct V;
template <>
struct V<16> {
  using T = __m512;
  using M = __mmask16;
  static SB_INLINE T zero() { return _mm512_setzero_ps(); }
  static SB_INLINE T set1(float v) { return _mm512_set1_ps(v); }
  static SB_INLINE T load(const float *p) { return _mm512_loadu_ps(p); }
  static SB_INLINE T loadm(M m, const float *p) { return _mm512_maskz_loadu_ps(m, p); }
  static SB_INLINE T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static SB_INLINE T add(T a, T b) { return _mm512_add_ps(a, b); }
  static SB_INLINE T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static SB_INLINE T relu(T a) { return _mm512_max_ps(a, _mm512_setzero_ps()); }
  static SB_INLINE void store(float *p, T v) { _mm512_storeu_ps(p, v); }
  static SB_INLINE void storem(float *p, M m, T v) { _mm512_mask_storeu_ps(p, m, v); }
  static SB_INLINE T addm(T a, M m, T b) { return _mm512_mask_add_ps(a, m, a, b); }
  static SB_INLINE M mask(int64_t lanes) {
    return lanes >= 16 ? (M)0xffff : lanes <= 0 ? (M)0 : (M)((1u << lanes) - 1u);
  }
};
template <>
struct V<8> {
  using T = __m256;
  using M = __mmask8;
  static SB_INLINE T zero() { return _mm256_setzero_ps(); }
  static SB_INLINE T set1(float v) { return _mm256_set1_ps(v); }
  static SB_INLINE T load(const float *p) { return _mm256_loadu_ps(p); }
  static SB_INLINE T loadm(M m, const float *p) { return _mm256_maskz_loadu_ps(m, p); }
  static SB_INLINE T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static SB_INLINE T add(T a, T b) { return _mm256_add_ps(a, b); }
  static SB_INLINE T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static SB_INLINE T relu(T a) { return _mm256_max_ps(a, _mm256_setzero_ps()); }
  static SB_INLINE void store(float *p, T v) { _mm256_storeu_ps(p, v); }
  static SB_INLINE void storem(float *p, M m, T v) { _mm256_mask_storeu_ps(p, m, v); }
  static SB_INLINE T addm(T a, M m, T b) { return _mm256_mask_add_ps(a, m, a, b); }
  static SB_INLINE M mask(int64_t lanes) {
    return lanes >= 8 ? (M)0xff : lanes <= 0 ? (M)0 : (M)((1u << lanes) - 1u);
  }
};
template <>
struct V<4> {
  using T = __m128;
  using M = __mmask8;
  static SB_INLINE T zero() { return _mm_setzero_ps(); }
  static SB_INLINE T set1(float v) { return _mm_set1_ps(v); }
  static SB_INLINE T load(const float *p) { return _mm_loadu_ps(p); }
  static SB_INLINE T loadm(M m, const float *p) { return _mm_maskz_loadu_ps(m, p); }
  static SB_INLINE T fma(T a, T b, T c) { return _mm_fmadd_ps(a, b, c); }
  static SB_INLINE T add(T a, T b) { return _mm_add_ps(a, b); }
  static SB_INLINE T mul(T a, T b) { return _mm_mul_ps(a, b); }
  static SB_INLINE T relu(T a) { return _mm_max_ps(a, _mm_setzero_ps()); }
  static SB_INLINE void store(float *p, T v) { _mm_storeu_ps(p, v); }
  static SB_INLINE void storem(float *p, M m, T v) { _mm_mask_storeu_ps(p, m, v); }
  static SB_INLINE T addm(T a, M m, T b) { return _mm_mask_add_ps(a, m, a, b); }
  static SB_INLINE M mask(int64_t lanes) {
    return lanes >= 4 ? (M)0xf : lanes <= 0 ? (M)0 : (M)((1u << lanes) - 1u);
  }
};

// acc[q] += sum over nonzeros j of val[j] * xp[off[j] + W*q ...] (masked lanes read as 0).
template <int W, int NV, bool Tail>
SB_INLINE void tile_acc(const float *SB_RESTRICT xp, const Nz *SB_RESTRICT nz, int64_t n,
                        const typename V<W>::M *mk, typename V<W>::T *acc, int64_t pf) {
  using Vt = V<W>;
  constexpr int NCH = NV == 1 ? 8 : NV <= 2 ? 4 : 2;  // independent accumulator chains (FMA latency)
  typename Vt::T a[NCH][NV];
  for (int q = 0; q < NV; ++q) a[0][q] = acc[q];
  for (int h = 1; h < NCH; ++h)
    for (int q = 0; q < NV; ++q) a[h][q] = Vt::zero();
  int64_t j = 0;
  for (; j + NCH <= n; j += NCH) {
    if (pf) _mm_prefetch((const char *)(nz + j + pf), _MM_HINT_T0);
    for (int h = 0; h < NCH; ++h) {
      const typename Vt::T v = Vt::set1(nz[j + h].val);
      const float *s = xp + nz[j + h].off;
      for (int q = 0; q < NV; ++q)
        a[h][q] = Vt::fma(v, Tail ? Vt::loadm(mk[q], s + W * q) : Vt::load(s + W * q), a[h][q]);
    }
  }
  for (; j < n; ++j) {
    const typename Vt::T v = Vt::set1(nz[j].val);
    const float *s = xp + nz[j].off;
    for (int q = 0; q < NV; ++q)
      a[0][q] = Vt::fma(v, Tail ? Vt::loadm(mk[q], s + W * q) : Vt::load(s + W * q), a[0][q]);
  }
  for (int q = 0; q < NV; ++q) {
    typename Vt::T r = a[0][q];
    for (int h = 1; h < NCH; ++h) r = Vt::add(r, a[h][q]);
    acc[q] = r;
  }
}

// Two output channels with the same taps (nz0[j].off == nz1[j].off): every input vector is
// loaded once for both (a dense weight, e.g. ResNet's 7x7 stem: half the loads per FMA).
template <int W, int NV, bool Tail>
SB_INLINE void tile_acc2(const float *SB_RESTRICT xp, const Nz *SB_RESTRICT nz0,
                         const Nz *SB_RESTRICT nz1, int64_t n, const typename V<W>::M *mk,
                         typename V<W>::T *acc0, typename V<W>::T *acc1, int64_t pf) {
  using Vt = V<W>;
  typename Vt::T a[NV], b[NV];
  for (int q = 0; q < NV; ++q) a[q] = acc0[q], b[q] = acc1[q];
  for (int64_t j = 0; j < n; ++j) {
    if (pf && (j & 7) == 0) {
      _mm_prefetch((const char *)(nz0 + j + pf), _MM_HINT_T0);
      _mm_prefetch((const char *)(nz1 + j + pf), _MM_HINT_T0);
    }
    const typename Vt::T v0 = Vt::set1(nz0[j].val), v1 = Vt::set1(nz1[j].val);
    const float *s = xp + nz0[j].off;
    for (int q = 0; q < NV; ++q) {
      const typename Vt::T x = Tail ? Vt::loadm(mk[q], s + W * q) : Vt::load(s + W * q);
      a[q] = Vt::fma(v0, x, a[q]);
      b[q] = Vt::fma(v1, x, b[q]);
    }
  }
  for (int q = 0; q < NV; ++q) acc0[q] = a[q], acc1[q] = b[q];
}

// Four output channels with the same taps (a dense weight): each input vector is loaded once
// for four FMAs; 4 x NV accumulators, so NV <= 6.
template <int W, int NV, bool Tail>
SB_INLINE void tile_acc4(const float *SB_RESTRICT xp, const Nz *const *nz, int64_t n,
                         const typename V<W>::M *mk, typename V<W>::T (*acc)[NV], int64_t pf) {
  using Vt = V<W>;
  typename Vt::T a[4][NV];
  for (int r = 0; r < 4; ++r)
    for (int q = 0; q < NV; ++q) a[r][q] = acc[r][q];
  const Nz *SB_RESTRICT z0 = nz[0], *SB_RESTRICT z1 = nz[1], *SB_RESTRICT z2 = nz[2],
                        *SB_RESTRICT z3 = nz[3];
  for (int64_t j = 0; j < n; ++j) {
    if (pf && (j & 7) == 0)
      for (int r = 0; r < 4; ++r) _mm_prefetch((const char *)(nz[r] + j + pf), _MM_HINT_T0);
    const typename Vt::T v0 = Vt::set1(z0[j].val), v1 = Vt::set1(z1[j].val),
                         v2 = Vt::set1(z2[j].val), v3 = Vt::set1(z3[j].val);
    const float *s = xp + z0[j].off;
    for (int q = 0; q < NV; ++q) {
      const typename Vt::T x = Tail ? Vt::loadm(mk[q], s + W * q) : Vt::load(s + W * q);
      a[0][q] = Vt::fma(v0, x, a[0][q]);
      a[1][q] = Vt::fma(v1, x, a[1][q]);
      a[2][q] = Vt::fma(v2, x, a[2][q]);
      a[3][q] = Vt::fma(v3, x, a[3][q]);
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int q = 0; q < NV; ++q) acc[r][q] = a[r][q];
}

// Output channels [c0, c1) at output positions [pa, pb), in tiles of T from pa.
template <int W, int NV>
void conv_rows(const Job &k, int64_t c0, int64_t c1, int64_t pa, int64_t pb) {
  using Vt = V<W>;
  constexpr int64_t T = W * NV;
  const sb_conv_plan_impl *pl = k.pl;
  const sb_conv_plan &p = pl->pub;
  const sb_conv2d *w = k.w;
  const Nz *stream = pl->stream;
  const int32_t *seg = pl->seg;
  const int64_t P = p.positions, ncb = pl->ncb, win = pl->window;
  alignas(64) float partial[kPartialFloats];
  for (int64_t p0 = pa; p0 < pb; p0 += T) {
    const int64_t valid = pb - p0 < T ? pb - p0 : T;
    typename Vt::M mk[NV];
    for (int q = 0; q < NV; ++q) mk[q] = Vt::mask(valid - W * q);
    const float *xt = k.xp + (p0 - k.xpos);
    OutRun runs[kMaxRuns];
    const int nrun = pl->row_out ? tile_runs(pl, w->out_channels, p0, valid, runs) : 0;
    // output-channel windows are aligned to multiples of `win`, as the stream is ordered
    for (int64_t w0 = c0 / win * win; w0 < c1; w0 += win) {
      const int64_t a0 = w0 > c0 ? w0 : c0, a1 = w0 + win < c1 ? w0 + win : c1;
      const int64_t cbe = k.cb1 < 0 ? ncb : k.cb1;
      for (int64_t cb = k.cb0; cb < cbe; ++cb) {
        const bool first = cb == k.cb0, last = cb == cbe - 1;
        // the sums of row co for this block are in acc: keep them or run the epilogue
        auto finish_row = [&](int64_t co, typename Vt::T *acc) {
          float *part = partial + (co - w0) * T;
          if (!last) {
            for (int q = 0; q < NV; ++q) Vt::store(part + W * q, acc[q]);
            return;
          }
          if (k.raw) {
            float *ro = k.raw + co * P + p0;
            for (int q = 0; q < NV; ++q) Vt::storem(ro + W * q, mk[q], acc[q]);
            return;
          }
          const typename Vt::T bb = Vt::set1(w->bias ? w->bias[co] : 0.f);
          if (pl->gap_direct) {  // y[co] = mean of scale * act(conv + bias + residual)
            const float *ro = k.residual ? k.residual + co * P + p0 : nullptr;
            const typename Vt::T sc = Vt::set1(pl->scale ? pl->scale[co] : 1.f);
            typename Vt::T s = Vt::zero();
            for (int q = 0; q < NV; ++q) {
              typename Vt::T v = Vt::add(acc[q], bb);
              if (ro) v = Vt::add(v, Vt::loadm(mk[q], ro + W * q));
              if (k.act == kActRelu) v = Vt::relu(v);
              if (pl->scale) v = Vt::mul(v, sc);
              s = Vt::addm(s, mk[q], v);
            }
            alignas(64) float lanes[W];
            Vt::store(lanes, s);
            float sum = 0.f;
            for (int i = 0; i < W; ++i) sum += lanes[i];
            gap_add(k, co, p0, sum);
            return;
          }
          if (p.direct_out) {
            float *yo = k.y + co * P + p0;
            const float *ro = k.residual ? k.residual + co * P + p0 : nullptr;
            if (k.out_prefetch && co + k.out_prefetch < w->out_channels) {
              prefetch_out(k, (co + k.out_prefetch) * P + p0, valid);
              if (k.sub) prefetch_sub(k, co + k.out_prefetch, p0, valid);
            }
            const typename Vt::T sc = Vt::set1(pl->scale ? pl->scale[co] : 1.f);
            for (int q = 0; q < NV; ++q) {
              typename Vt::T v = Vt::add(acc[q], bb);
              if (ro) v = Vt::add(v, Vt::loadm(mk[q], ro + W * q));
              if (k.act == kActRelu) v = Vt::relu(v);
              if (pl->scale && k.act != kActGelu) v = Vt::mul(v, sc);
              Vt::storem(yo + W * q, mk[q], v);
              if constexpr (W == 16) {  // its even-row, even-column lanes, packed, into sub
                if (k.sub && k.act != kActGelu) {  // branch-free: a vector of an odd row
                  const int32_t *t = pl->sub_tab + 2 * ((p0 >> 4) + q);  // stores nothing
                  const __mmask16 m = (__mmask16)t[0];
                  _mm512_mask_storeu_ps(k.sub + co * pl->sub_plane + t[1],
                                        (__mmask16)((1u << __builtin_popcount(m)) - 1u),
                                        _mm512_maskz_compress_ps(m, v));
                }
              }
            }
            if (k.act == kActGelu) {  // rare for convolutions: scalar
              for (int64_t i = 0; i < valid; ++i) {
                const float g = gelu_scalar(yo[i]);
                yo[i] = pl->scale ? g * pl->scale[co] : g;
              }
            }
            if (k.sub && (W != 16 || k.act == kActGelu)) sub_run(pl, k.sub, co, yo, p0, valid);
          } else if (pl->row_out) {
            alignas(64) float tb[T];
            for (int q = 0; q < NV; ++q) Vt::store(tb + W * q, Vt::add(acc[q], bb));
            store_runs(k, co, tb, runs, nrun);
          } else {
            float *eo = pl->ext + co * pl->ext_stride + p0;  // masked: chunks may abut
            for (int q = 0; q < NV; ++q) Vt::storem(eo + W * q, mk[q], Vt::add(acc[q], bb));
          }
        };
        auto start = [&](int64_t co, typename Vt::T *acc) {
          const float *part = partial + (co - w0) * T;
          for (int q = 0; q < NV; ++q) acc[q] = first ? Vt::zero() : Vt::load(part + W * q);
        };
        int64_t co = a0;
        if constexpr (NV <= 6) {
          if (pl->quads)
            for (; co + 3 < a1; co += 4) {
              const Nz *nz[4];
              typename Vt::T acc[4][NV];
              for (int r = 0; r < 4; ++r) {
                nz[r] = stream + seg[2 * ((co + r) * ncb + cb)];
                start(co + r, acc[r]);
              }
              const int64_t n = seg[2 * (co * ncb + cb) + 1] - seg[2 * (co * ncb + cb)];
              if (valid == T) tile_acc4<W, NV, false>(xt, nz, n, mk, acc, k.prefetch);
              else tile_acc4<W, NV, true>(xt, nz, n, mk, acc, k.prefetch);
              for (int r = 0; r < 4; ++r) finish_row(co + r, acc[r]);
            }
        }
        if (p.rows_paired)
          for (; co + 1 < a1; co += 2) {
            const int64_t s0 = seg[2 * (co * ncb + cb)], n = seg[2 * (co * ncb + cb) + 1] - s0;
            const int64_t s1 = seg[2 * ((co + 1) * ncb + cb)];
            typename Vt::T acc0[NV], acc1[NV];
            start(co, acc0);
            start(co + 1, acc1);
            if (valid == T)
              tile_acc2<W, NV, false>(xt, stream + s0, stream + s1, n, mk, acc0, acc1, k.prefetch);
            else
              tile_acc2<W, NV, true>(xt, stream + s0, stream + s1, n, mk, acc0, acc1, k.prefetch);
            finish_row(co, acc0);
            finish_row(co + 1, acc1);
          }
        for (; co < a1; ++co) {
          const int64_t s0 = seg[2 * (co * ncb + cb)], n = seg[2 * (co * ncb + cb) + 1] - s0;
          typename Vt::T acc[NV];
          start(co, acc);
          if (valid == T) tile_acc<W, NV, false>(xt, stream + s0, n, mk, acc, k.prefetch);
          else tile_acc<W, NV, true>(xt, stream + s0, n, mk, acc, k.prefetch);
          finish_row(co, acc);
        }
      }
    }
  }
}

void tiles_of(int64_t tile, const Job &k, int64_t c0, int64_t c1, int64_t pa, int64_t pb) {
  switch (tile) {
    case 4: conv_rows<4, 1>(k, c0, c1, pa, pb); break;
    case 8: conv_rows<8, 1>(k, c0, c1, pa, pb); break;
    case 16: conv_rows<16, 1>(k, c0, c1, pa, pb); break;
    case 32: conv_rows<16, 2>(k, c0, c1, pa, pb); break;
    case 48: conv_rows<16, 3>(k, c0, c1, pa, pb); break;
    case 64: conv_rows<16, 4>(k, c0, c1, pa, pb); break;
    case 80: conv_rows<16, 5>(k, c0, c1, pa, pb); break;
    case 96: conv_rows<16, 6>(k, c0, c1, pa, pb); break;
    case 112: conv_rows<16, 7>(k, c0, c1, pa, pb); break;
    default: conv_rows<16, 8>(k, c0, c1, pa, pb); break;
  }
}
#else
// Portable version (AVX2 / scalar builds): the same tiles and blocks as plain loops the
// compiler vectorises.
template <int64_t T>
void conv_rows(const Job &k, int64_t c0, int64_t c1, int64_t pa, int64_t pb) {
  const sb_conv_plan_impl *pl = k.pl;
  const sb_conv_plan &p = pl->pub;
  const sb_conv2d *w = k.w;
  const Nz *stream = pl->stream;
  const int32_t *seg = pl->seg;
  const int64_t P = p.positions, ncb = pl->ncb, win = pl->window;
  static thread_local float partial[kPartialFloats];
  for (int64_t p0 = pa; p0 < pb; p0 += T) {
    const int64_t valid = pb - p0 < T ? pb - p0 : T;
    OutRun runs[kMaxRuns];
    const int nrun = pl->row_out ? tile_runs(pl, w->out_channels, p0, valid, runs) : 0;
    for (int64_t w0 = c0 / win * win; w0 < c1; w0 += win) {
      const int64_t a0 = w0 > c0 ? w0 : c0, a1 = w0 + win < c1 ? w0 + win : c1;
      const int64_t cbe = k.cb1 < 0 ? ncb : k.cb1;
      for (int64_t cb = k.cb0; cb < cbe; ++cb) {
        for (int64_t co = a0; co < a1; ++co) {
          float *acc = partial + (co - w0) * T;
          if (cb == k.cb0)
            for (int64_t i = 0; i < T; ++i) acc[i] = 0.f;
          for (int64_t j = seg[2 * (co * ncb + cb)]; j < seg[2 * (co * ncb + cb) + 1]; ++j) {
            const float v = stream[j].val;
            const float *SB_RESTRICT s = k.xp + (p0 - k.xpos) + stream[j].off;
            if (valid == T) {
              for (int64_t i = 0; i < T; ++i) acc[i] += v * s[i];
            } else {
              for (int64_t i = 0; i < valid; ++i) acc[i] += v * s[i];
            }
          }
          if (cb != cbe - 1) continue;
          if (k.raw) {
            for (int64_t i = 0; i < valid; ++i) k.raw[co * P + p0 + i] = acc[i];
            continue;
          }
          const float b = w->bias ? w->bias[co] : 0.f;
          if (pl->gap_direct) {
            const float *ro = k.residual ? k.residual + co * P + p0 : nullptr;
            const float sc = pl->scale ? pl->scale[co] : 1.f;
            float sum = 0.f;
            for (int64_t i = 0; i < valid; ++i)
              sum += act_scalar(acc[i] + b + (ro ? ro[i] : 0.f), k.act) * sc;
            gap_add(k, co, p0, sum);
            continue;
          }
          if (p.direct_out) {
            float *yo = k.y + co * P + p0;
            const float *ro = k.residual ? k.residual + co * P + p0 : nullptr;
            if (k.out_prefetch && co + k.out_prefetch < w->out_channels)
              prefetch_out(k, (co + k.out_prefetch) * P + p0, valid);
            const float sc = pl->scale ? pl->scale[co] : 1.f;
            for (int64_t i = 0; i < valid; ++i) {
              const float v = act_scalar(acc[i] + b + (ro ? ro[i] : 0.f), k.act);
              yo[i] = pl->scale ? v * sc : v;
            }
            if (k.sub) sub_run(pl, k.sub, co, yo, p0, valid);
          } else if (pl->row_out) {
            float tb[T];
            for (int64_t i = 0; i < valid; ++i) tb[i] = acc[i] + b;
            store_runs(k, co, tb, runs, nrun);
          } else {
            float *eo = pl->ext + co * pl->ext_stride + p0;
            for (int64_t i = 0; i < valid; ++i) eo[i] = acc[i] + b;
          }
        }
      }
    }
  }
}

void tiles_of(int64_t tile, const Job &k, int64_t c0, int64_t c1, int64_t pa, int64_t pb) {
  switch (tile) {
    case 4:
    case 8:
    case 16: conv_rows<16>(k, c0, c1, pa, pb); break;
    case 32: conv_rows<32>(k, c0, c1, pa, pb); break;
    case 48: conv_rows<48>(k, c0, c1, pa, pb); break;
    case 64: conv_rows<64>(k, c0, c1, pa, pb); break;
    case 80: conv_rows<80>(k, c0, c1, pa, pb); break;
    case 96: conv_rows<96>(k, c0, c1, pa, pb); break;
    case 112: conv_rows<112>(k, c0, c1, pa, pb); break;
    default: conv_rows<128>(k, c0, c1, pa, pb); break;
  }
}
#endif

// Output channels [c0, c1) at positions [pa, pb): whole tiles of the plan's width, then the
// rest (a band's or the map's last partial tile) in the narrowest tile that holds it, so a
// partial tile costs about its share of lanes.
void run_tiles(int64_t tile, const Job &k, int64_t c0, int64_t c1, int64_t pa, int64_t pb) {
  if (tile < 16) return tiles_of(tile, k, c0, c1, pa, pb);
  const int64_t full = pa + (pb - pa) / tile * tile;
  if (full > pa) tiles_of(tile, k, c0, c1, pa, full);
  if (pb <= full) return;
  tiles_of(round_up(pb - full, 16), k, c0, c1, full, pb);  // narrower than tile: fits its window
}

bool valid_weight(const sb_conv2d *w) {
  return w && w->out_channels >= 1 && w->in_channels >= 1 && w->kernel_h >= 1 &&
         w->kernel_w >= 1 && w->stride_h >= 1 && w->stride_w >= 1 && w->pad_h >= 0 &&
         w->pad_w >= 0 && w->row_ptr && w->act >= kActNone && w->act <= kActGelu &&
         (w->index_bits == 16 || w->index_bits == 32) &&
         (w->row_ptr[w->out_channels] == 0 || (w->col_idx && w->values));
}

int64_t column(const sb_conv2d *w, int64_t j) {
  return w->index_bits == 16 ? (int64_t)((const int16_t *)w->col_idx)[j]
                             : (int64_t)((const int32_t *)w->col_idx)[j];
}

// Every row has the same columns (a dense weight, or one pruned alike in every row).
bool same_taps(const sb_conv2d *w) {
  const int64_t len = w->row_ptr[1] - w->row_ptr[0];
  for (int64_t co = 1; co < w->out_channels; ++co) {
    if (w->row_ptr[co + 1] - w->row_ptr[co] != len) return false;
    for (int64_t j = 0; j < len; ++j)
      if (column(w, w->row_ptr[co] + j) != column(w, j + w->row_ptr[0])) return false;
  }
  return true;
}

}  // namespace
}  // namespace sb

extern "C" int64_t sb_conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad) {
  if (in < 0 || k < 1 || stride < 1 || pad < 0 || in + 2 * pad < k) return 0;
  return (in + 2 * pad - k) / stride + 1;
}

extern "C" void sb_conv2d_plan_free(sb_conv_plan *p) {
  if (!p) return;
  sb_conv_plan_impl *pl = (sb_conv_plan_impl *)p;
  pl->magic = 0;
  sb::plan_free(pl->mem);
  std::free(pl);
}

extern "C" int sb_conv2d_plan(const sb_conv2d *w, int64_t n, int64_t h, int64_t width,
                              int64_t pool, const float *scale, int64_t bands,
                              sb_conv_plan **out) {
  if (!out) return SB_EINVAL;
  *out = nullptr;
  if (w && w->index_bits != 16 && w->index_bits != 32) return SB_EINDEX;
  if (!sb::valid_weight(w) || n < 1 || h < 1 || width < 1 || pool < sb::kGlobalAvg)
    return SB_EINVAL;
  const int64_t Cin = w->in_channels, Cout = w->out_channels, kh = w->kernel_h, kw = w->kernel_w;
  const int64_t ho = sb_conv_out_size(h, kh, w->stride_h, w->pad_h);
  const int64_t wo = sb_conv_out_size(width, kw, w->stride_w, w->pad_w);
  if (ho <= 0 || wo <= 0) return SB_EINVAL;
  if (pool > 1 && (ho < pool || wo < pool)) return SB_EINVAL;
  // sizes must keep every offset in int32 and the scratch allocatable
  const double planes = (double)w->stride_h * (kw > w->stride_w ? kw : w->stride_w) * Cin;
  const double plane = (double)n * (ho + kh) * (wo + kw) + 16;
  if (planes * plane > (double)sb::kMaxPacked || (double)Cout * plane > 4e9) return SB_EINVAL;
  const int64_t nnz = w->row_ptr[Cout];
  // the row pointers must be sane before they size anything (Python validates them too)
  for (int64_t co = 0; co < Cout; ++co)
    if (w->row_ptr[co] > w->row_ptr[co + 1] || w->row_ptr[co] < 0) return SB_EINVAL;

  // Measured (kernels/README.md): taps for maps of at most 16 outputs that fill one or two
  // vectors (4x4 at batch 1-2, 2x2 at batch 4-8), shift for tinier ones, kx-copy up to 16
  // wide and for widths that are a multiple of 16 at batch 1 (aligned rows, epilogue straight
  // into y), shift otherwise. A strided 1x1 (ResNet's downsampling shortcut) packs its one
  // tap (the subsampled map: taps) instead of stride^2 phase copies: 2x faster at 56->28.
  int64_t layout = sb::g_conv_layout;
  if (layout < sb::kShift || layout > sb::kTaps) {
    const int64_t hw = ho * wo;
    const bool strided = w->stride_h > 1 || w->stride_w > 1;
    layout = kh * kw == 1 ? (strided ? sb::kTaps : sb::kShift)
             : hw <= 16 && n * hw >= 16 && n * hw <= 32 ? sb::kTaps
             : hw <= 4 ? sb::kShift
             : wo <= 16 || (wo % 16 == 0 && n == 1) ? sb::kKxCopy : sb::kShift;
  }
  // A 1x1's input planes that are not 64-byte aligned (14x14, 7x7) make most of its loads
  // split two cache lines; copying them to aligned planes (one memcpy each) was 3-22% faster
  // on 1 thread for ResNet-50's shapes. On 2 threads the copy (split by planes, then read by
  // both cores) cost more than it saved unless each input channel feeds many nonzeros
  // (512 -> 2048 at 7x7: 144 -> 133 us; 1024 -> 256 at 14x14: 125 -> 176 us). At batch 1 each
  // thread now makes its own copy instead ("private", from conv_private_pack nonzeros per input
  // channel): alone on a Xeon, 1024 -> 512 at 14x14 220 -> 192 us, 512 -> 2048 at 7x7 119 ->
  // 106, but 1024 -> 256 (26 per channel) 110 -> 116 (a reduction: now split by input
  // channels, below). From 32: ResNet-50 95%'s 256 -> 1024 1x1s at 14x14 (51 per channel).
  const bool unaligned_1x1 = sb::g_conv_aligned_1x1 && sb::plain_1x1(w) && (h * width) % 16 != 0;
  // On 2+ threads such a 1x1 with fewer outputs than inputs (1024 -> 256) splits its input
  // channels instead (conv_ksplit_share): each thread packs and reads only its share of x (half
  // of which it wrote itself) and the threads exchange [Cout][positions] partial sums, a
  // quarter of x's size for 1024 -> 256.
  const bool reduce_split = sb::g_conv_ksplit_share && unaligned_1x1 && bands > 1 && n == 1 &&
                            Cout < Cin;
  const bool private_pack = !reduce_split && unaligned_1x1 && bands > 1 && n == 1 &&
                            sb::g_conv_private_pack > 0 && nnz >= sb::g_conv_private_pack * Cin;
  const bool pack_planes =
      unaligned_1x1 && (bands <= 1 || nnz >= 128 * Cin || private_pack || reduce_split);
  sb::Geo g = sb::layout_geometry(w, n, h, width, ho, wo, pool, layout, pack_planes);
  // a dense weight's rows run four at a time: 4 x NV accumulators fit the registers at NV <= 6
  const bool same = sb::same_taps(w);
  const bool quads = sb::g_conv_pairs >= 2 && Cout >= 4 && same;
  if (quads && g.tile > 96) g.tile = 96;

  // Position bands (see sb_conv2d_run): equal runs of output positions, each packed into its
  // own region with the rows it reads (its halo included); without a pool.
  const int64_t halo = layout == sb::kTaps ? 0 : (kh - 1) / w->stride_h;
  const int64_t want = sb::g_conv_bands > 0 ? sb::g_conv_bands : bands;
  int64_t nbands = std::min<int64_t>(std::max<int64_t>(want, 1), sb_kMaxBands);
  if (pool > 1 || pool == sb::kGlobalAvg) nbands = 1;
  // equal bands, cut at multiples of 16 positions (the vectors keep their alignment); at least
  // one whole tile and as many rows as the halo per band
  while (nbands > 1 && (g.positions / g.tile < nbands ||
                        g.positions / nbands < std::max<int64_t>(halo, 1) * g.pitch))
    --nbands;
  int64_t band_pos[sb_kMaxBands + 1], band_rows = 0;  // packed rows of the largest band
  for (int64_t b = 0; b <= nbands; ++b)
    band_pos[b] = b == nbands ? g.positions : 16 * ((g.positions * b / nbands + 8) / 16);
  for (int64_t b = 0; b < nbands; ++b)
    band_rows = std::max(band_rows, (band_pos[b + 1] + g.pitch - 1) / g.pitch + halo -
                                        band_pos[b] / g.pitch);
  // a band's rows start `lead` = (first row * pitch) % 16 floats into its planes, so that its
  // tiles read the same vector alignment as in one band (plus up to 15 floats per plane)
  const int64_t bplane =
      nbands == 1 || g.direct_in ? g.plane : sb::round_up(band_rows * g.pitch + 15, 16);

  // channel blocks: the input one tile reads per channel, kept within the L1 budget
  const int64_t per_channel =
      g.copies * (g.tile + ((kh - 1) / w->stride_h) * g.pitch) * (int64_t)sizeof(float);
  int64_t cbs = sb::l1_budget_kb(kh * kw) * 1024 / (per_channel > 0 ? per_channel : 1);
  // A 1x1's block must also hold conv_block_nnz nonzeros of a row on average: at 95% a 64 KB
  // block of ResNet-50's 14x14 1024 -> 256 held 7, so each row's partial sums made a round
  // trip per 7 nonzeros; ResNet-50 95% 0.960x at 1 thread with 32 (90%: 0.996-1.001x, there
  // 64 KB held 15). 3x3s were 1.013-1.10x slower with such a rule (their taps re-read the
  // block; 32-128 nonzeros).
  if (kh * kw == 1 && sb::g_conv_block_nnz > 0 && nnz > 0) {
    const double per_channel_nnz = (double)nnz / ((double)Cout * (double)Cin);
    cbs = std::max(cbs, (int64_t)std::ceil(sb::g_conv_block_nnz / per_channel_nnz));
  }
  if (cbs < 1) cbs = 1;
  if (cbs > Cin) cbs = Cin;
  // a global average at batch 1 with pitch Wo (no wasted columns: the tiles' positions are the
  // map's) is summed from the registers; the compaction pass cost a 512 -> 2048 1x1 at 7x7
  // (ResNet-50's last conv) 276-286 us in sequence against 158 (ResNet-50 95%: 0.990x)
  const bool gap_direct = pool == sb::kGlobalAvg && n == 1 && g.pitch == wo &&
                          g.positions == ho * wo && w->act != SB_ACT_GELU &&
                          sb::g_conv_gap_direct != 0;
  int64_t ncb = (Cin + cbs - 1) / cbs;
  // Where 2+ threads split the input channels (batch 1, direct output or a global average:
  // sb_conv2d_run), a multiple of the thread count of equal blocks, so that thread t sums the
  // t-th equal share of the channels: the share the layer before wrote on that thread when it
  // split its output channels in halves. With reduce_split (above), ResNet-50 at 2 threads:
  // 90% 0.963x, 95% 0.988x (two instances per variant, 14 rounds).
  if (sb::g_conv_ksplit_share && bands > 1 && n == 1 && (g.direct_out || gap_direct) &&
      (ncb > 1 || reduce_split))
    ncb = sb::round_up(std::max(ncb, bands), bands);
  cbs = (Cin + ncb - 1) / ncb;  // equal blocks
  ncb = (Cin + cbs - 1) / cbs;
  const int64_t ntiles = (g.positions + g.tile - 1) / g.tile;
  const int64_t pack = g.direct_in ? 0 : g.copies * Cin * bplane * nbands;
  const bool row_out = !g.direct_out && !(pool > 1 || pool == sb::kGlobalAvg) &&
                       sb::g_conv_row_out != 0;
  const bool compacts = !g.direct_out && !row_out && !gap_direct;
  const int64_t ext = compacts ? Cout * ntiles * g.tile : 0;

  sb_conv_plan_impl *pl = (sb_conv_plan_impl *)std::calloc(1, sizeof(sb_conv_plan_impl));
  if (!pl) return SB_ENOMEM;
  // narrow maps are packed from a precomputed map (AVX-512 builds; a plain 1x1: memcpy)
  const int64_t img = g.hq * g.pitch;
#if SB_AVX512
  const bool gather = sb::g_conv_gather && !g.direct_in && !sb::plain_1x1(w) && g.pitch < 32 &&
                      (double)w->stride_w * g.copies * img < 1e6;
#else
  const bool gather = false;
#endif
  const size_t gints = gather ? 2 * (size_t)(g.copies * img) : 0;  // gmap and gbase
  const size_t sub_ints = g.direct_out ? 2 * (size_t)((g.positions + 15) / 16) : 0;
  const size_t ints = 2 * (size_t)nnz + (size_t)Cout * (size_t)(ncb + 1) + 2 * (size_t)Cout * ncb +
                      gints + sub_ints;
  // the packed input: the plan's own region, or the calling thread's scratch on each run
  const bool shared_pack = pack > 0 && sb::g_conv_shared_pack != 0;
  const int64_t own_pack = shared_pack ? 0 : pack;
  const size_t bytes = (size_t)(own_pack + ext) * sizeof(float) + ints * sizeof(int32_t) + 64;
  pl->mem = sb::plan_alloc(bytes);
  if (!pl->mem) {
    std::free(pl);
    return SB_ENOMEM;
  }
  float *f = (float *)pl->mem;
  pl->pack = own_pack ? f : nullptr;
  pl->shared_pack = shared_pack;
  pl->private_pack = private_pack && pack > 0;
  pl->ext = ext ? f + own_pack : nullptr;
  pl->stream = (sb::Nz *)(f + own_pack + ext);
  int32_t *blk = (int32_t *)(pl->stream + nnz);  // CSR position of each (row, block) start
  pl->seg = blk + Cout * (ncb + 1);
  pl->gmap = gather ? pl->seg + 2 * Cout * ncb : nullptr;
  pl->gbase = gather ? pl->gmap + g.copies * img : nullptr;
  pl->sub_tab = sub_ints ? pl->seg + 2 * Cout * ncb + gints : nullptr;
  if (pl->sub_tab) {  // direct output: position p is row p / Wo, column p % Wo of the one image
    pl->sub_plane = ((ho + 1) / 2) * ((wo + 1) / 2);
    int32_t before = 0;
    for (int64_t v = 0; v < (g.positions + 15) / 16; ++v) {
      uint32_t m = 0;
      const int32_t first = before;
      for (int64_t i = 0; i < 16 && 16 * v + i < g.positions; ++i) {
        const int64_t q = 16 * v + i;
        if ((q / wo) % 2 == 0 && (q % wo) % 2 == 0) m |= 1u << i, ++before;
      }
      pl->sub_tab[2 * v] = (int32_t)m, pl->sub_tab[2 * v + 1] = first;
    }
  }
  if (own_pack) std::memset(pl->pack, 0, (size_t)own_pack * sizeof(float));
  if (ext) std::memset(pl->ext, 0, (size_t)ext * sizeof(float));

  sb_conv_plan &p = pl->pub;
  p.n = n, p.h = h, p.w = width, p.ho = ho, p.wo = wo, p.hq = g.hq, p.wq = g.pitch;
  p.plane = bplane, p.positions = g.positions, p.tile = g.tile, p.ntiles = ntiles;
  p.direct_in = g.direct_in, p.direct_out = g.direct_out;
  p.pool = pool > 1 || pool == sb::kGlobalAvg ? pool : 0;
  p.yh = p.pool == sb::kGlobalAvg ? 1 : p.pool ? ho / pool : ho;
  p.yw = p.pool == sb::kGlobalAvg ? 1 : p.pool ? wo / pool : wo;
  p.layout = layout;
  p.channel_blocks = ncb;
  p.scratch_bytes = (int64_t)bytes;
  pl->w = w;
  pl->magic = sb::kMagic;
  pl->layout = layout;
  pl->per_row = layout == sb::kShift ? w->stride_w : kw;
  pl->ncopies = g.copies, pl->pitch = g.pitch, pl->ncb = ncb, pl->cbs = cbs;
  pl->nbands = nbands;
  pl->row_out = row_out;
  pl->gap_direct = gap_direct;
  pl->compacts = compacts;
  p.row_out = row_out;
  p.bands = nbands;
  pl->band_floats = g.direct_in ? 0 : g.copies * Cin * bplane;
  for (int64_t b = 0; b <= nbands; ++b) pl->band_pos[b] = band_pos[b];
  pl->ext_stride = ntiles * g.tile;
  pl->window = sb::kPartialFloats / g.tile > 0 ? sb::kPartialFloats / g.tile : 1;
  pl->scale = scale;
  if (gather) {  // copy index = row phase * per_row + column copy (as pack_copy)
    for (int64_t copy = 0; copy < g.copies; ++copy) {
      const int64_t a = copy / pl->per_row, u = copy % pl->per_row;
      for (int64_t i = 0; i < g.hq; ++i)
        for (int64_t j = 0; j < g.pitch; ++j) {
          const int64_t iy = w->stride_h * i + a - w->pad_h, ix = w->stride_w * j + u - w->pad_w;
          pl->gmap[copy * img + i * g.pitch + j] =
              iy >= 0 && iy < h && ix >= 0 && ix < width ? (int32_t)(iy * width + ix) : -1;
        }
      for (int64_t k = 0; k < img; ++k) {  // the 16 floats packed from k (within this copy)
        int32_t lo = INT32_MAX, hi = -1;
        for (int64_t l = k; l < k + 16 && l < img; ++l) {
          const int32_t v = pl->gmap[copy * img + l];
          if (v >= 0) lo = std::min(lo, v), hi = std::max(hi, v);
        }
        pl->gbase[copy * img + k] = hi < 0 ? sb::kGatherNone
                                    : hi - lo < 32 && sb::g_conv_gather >= 2 ? lo
                                    : sb::kGatherAny;
      }
    }
  }

  const int64_t khw = kh * kw, K = Cin * khw, sh = w->stride_h, sw = w->stride_w;
  // offsets in CSR order (temporarily in the seg area's tail is not enough: own buffer)
  int32_t *off = (int32_t *)std::malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof(int32_t));
  if (!off) {
    sb_conv2d_plan_free(&pl->pub);
    return SB_ENOMEM;
  }
  for (int64_t co = 0; co < Cout; ++co) {
    int64_t cb = 0, prev = -1;
    blk[co * (ncb + 1)] = w->row_ptr[co];
    for (int64_t j = w->row_ptr[co]; j < w->row_ptr[co + 1]; ++j) {
      const int64_t col = sb::column(w, j);
      if (col < 0 || col >= K || col < prev) {  // out of range, or not sorted within the row
        std::free(off);
        sb_conv2d_plan_free(&pl->pub);
        return SB_EINVAL;
      }
      prev = col;
      const int64_t c = col / khw, r = col - c * khw, ky = r / kw, kx = r - ky * kw;
      const int64_t a = ky % sh, qy = ky / sh;
      int64_t o;
      if (layout == sb::kTaps) o = (r * Cin + c) * bplane;
      else if (layout == sb::kKxCopy) o = ((a * kw + kx) * Cin + c) * bplane + qy * g.pitch;
      else o = ((a * sw + kx % sw) * Cin + c) * bplane + qy * g.pitch + kx / sw;
      off[j] = (int32_t)o;
      while (c >= (cb + 1) * cbs) blk[co * (ncb + 1) + ++cb] = (int32_t)j;
    }
    while (cb < ncb) blk[co * (ncb + 1) + ++cb] = w->row_ptr[co + 1];
  }
  // the stream in the order conv_rows reads it: window of rows, channel block, row
  int64_t pos = 0;
  for (int64_t w0 = 0; w0 < Cout; w0 += pl->window)
    for (int64_t cb = 0; cb < ncb; ++cb)
      for (int64_t co = w0; co < Cout && co < w0 + pl->window; ++co) {
        pl->seg[2 * (co * ncb + cb)] = (int32_t)pos;
        for (int64_t j = blk[co * (ncb + 1) + cb]; j < blk[co * (ncb + 1) + cb + 1]; ++j)
          pl->stream[pos++] = sb::Nz{off[j], w->values[j]};
        pl->seg[2 * (co * ncb + cb) + 1] = (int32_t)pos;
      }
  // same taps in every row (a dense weight): conv_rows may take rows in fours and pairs
  pl->pub.rows_paired = sb::g_conv_pairs != 0 && Cout > 1 && same;
  pl->quads = quads;
  std::free(off);
  *out = &pl->pub;
  return SB_OK;
}

extern "C" int sb_conv2d_run(const sb_conv2d *w, const sb_conv_plan *plan, const float *x,
                             const float *residual, float *y, int num_threads) {
  return sb_conv2d_run_sub(w, plan, x, residual, y, nullptr, num_threads);
}

extern "C" int sb_conv2d_run_sub(const sb_conv2d *w, const sb_conv_plan *plan, const float *x,
                                 const float *residual, float *y, float *sub, int num_threads) {
  if (num_threads < 1 || num_threads > sb::kMaxThreads) return SB_ETHREADS;
  const sb_conv_plan_impl *pl = (const sb_conv_plan_impl *)plan;
  if (!pl || pl->magic != sb::kMagic || pl->w != w || !sb::valid_weight(w)) return SB_EINVAL;
  const sb_conv_plan &p = pl->pub;
  if (!x || !y || (sub && !pl->sub_tab)) return SB_EINVAL;
  const int64_t Cin = w->in_channels, Cout = w->out_channels;
  const int64_t P = p.positions, pitch = pl->pitch, rows = p.n * p.hq, nb = pl->nbands;
  const int64_t halo = p.hq - p.ho;  // packed rows below an output row that its taps read
  // Band b: output positions [pos(b), pos(b + 1)), its packed rows from row0(b) (halo
  // included) in its own region; one band is the whole map in the plain layout (row0 0).
  auto pos = [&](int64_t b) { return pl->band_pos[b]; };
  auto row0 = [&](int64_t b) { return pos(b) / pitch; };
  float *pack = pl->pack;
  if (pl->shared_pack) {  // every plan's packing shares this thread's region (see the header)
    pack = sb::scratch(sb::kScratchConvPack, (size_t)(nb * pl->band_floats) * sizeof(float));
    if (!pack) return SB_ENOMEM;
  }
  auto band_in = [&](float *base, int64_t b) {  // where output position row0(b) * pitch reads tap 0
    return base + b * pl->band_floats + row0(b) * pitch % 16;
  };
  auto pack_into = [&](float *base, int64_t b, int64_t i0, int64_t i1) {  // planes [i0, i1) of band b
    const int64_t r0 = row0(b);
    const int64_t r1 = std::min((pos(b + 1) + pitch - 1) / pitch + halo, rows);
    float *dst = band_in(base, b);
#if SB_AVX512
    if (pl->gmap) {  // planes: channels (every copy at once)
      for (int64_t n = r0 / p.hq; n < p.n && n * p.hq < r1; ++n) {
        const int64_t a = std::max(r0 - n * p.hq, (int64_t)0);
        const int64_t e = std::min(r1 - n * p.hq, p.hq);
        sb::pack_gather(w, pl, x, i0, i1, n, a, e, dst, r0);
      }
      return;
    }
#endif
    for (int64_t i = i0; i < i1; ++i) {  // planes: (copy, channel)
      const int64_t copy = i / Cin, ch = i - copy * Cin;
      sb::pack_copy(w, pl, x, copy / pl->per_row, copy % pl->per_row, ch, dst + i * p.plane, r0, r0,
                    r1);
    }
  };
  auto pack_band = [&](int64_t b, int64_t i0, int64_t i1) { pack_into(pack, b, i0, i1); };
  const int64_t planes = pl->gmap ? Cin : pl->ncopies * Cin;
  auto job_in = [&](float *base, int64_t b) {  // band b's job on the packing at base
    sb::Job job = p.direct_in ? sb::Job{w, pl, x, 0, residual, y, (int)w->act, sb::g_conv_prefetch}
                              : sb::Job{w, pl, band_in(base, b), row0(b) * pitch, residual, y,
                                        (int)w->act, sb::g_conv_prefetch};
    job.sub = sub;
    return job;
  };
  auto job_of = [&](int64_t b) { return job_in(pack, b); };
  // Bands: each chunk packs its band and runs every output channel on it, so a thread packs and
  // reads only its own rows (no barrier between packing and compute, no lines shared between
  // cores) and writes its own part of y, which the next layer banded the same way reads from
  // its own cache. Used whenever there are bands and no more threads than bands.
  if (nb > 1 && num_threads <= nb) {
    sb::parallel_for(num_threads, nb, [&](int64_t b) {
      if (!p.direct_in) pack_band(b, 0, planes);
      const sb::Job job = job_of(b);
      sb::run_tiles(p.tile, job, 0, Cout, pos(b), pos(b + 1));
      if (pl->compacts) sb::compact(job, 0, Cout, pos(b), pos(b + 1));
    });
    return SB_OK;
  }
  // Input channels (small maps at batch 1, written straight to y): chunk t packs the input
  // channels of its channel blocks and sums them for every output channel into its own
  // [Cout][P] buffer; then chunks of output channels add the buffers and run the epilogue. A
  // thread reads only what it packed (no packed line crosses between cores, and each thread
  // streams only its blocks' weights); the buffers' halves cross once, in the second job.
  const int64_t kparts = std::min<int64_t>(num_threads, pl->ncb);
  // Private packing (a 1x1 whose planes are not 64-byte aligned, on 2+ threads): every thread
  // copies the whole map into aligned planes in its own scratch, once per run, and reads only
  // that copy; a copy shared between the cores would be read half from the other core's cache.
  const bool private_pack = pl->private_pack && num_threads > 1 && nb == 1;
  if (sb::g_conv_ksplit && kparts > 1 && nb == 1 && !p.direct_in && p.n == 1 &&
      ((p.direct_out && p.pool == 0) || (pl->gap_direct && sb::g_conv_ksplit_gap)) &&
      !private_pack) {
    float *parts = sb::scratch(sb::kScratchConvSplit, (size_t)(kparts * Cout * P) * sizeof(float));
    if (!parts) return SB_ENOMEM;
    const int64_t planes = pl->gmap ? 1 : pl->ncopies;  // pack_band planes per channel run
    sb::parallel_for(num_threads, kparts, [&](int64_t t) {
      const int64_t b0 = pl->ncb * t / kparts, b1 = pl->ncb * (t + 1) / kparts;
      const int64_t c0 = b0 * pl->cbs, c1 = std::min(b1 * pl->cbs, Cin);
      for (int64_t q = 0; q < planes; ++q) pack_band(0, q * Cin + c0, q * Cin + c1);
      sb::Job job = job_of(0);
      job.cb0 = b0, job.cb1 = b1, job.raw = parts + t * Cout * P;
      sb::run_tiles(p.tile, job, 0, Cout, 0, P);
    });
    const int64_t nc = sb::chunk_count(Cout, num_threads, 1);
    sb::parallel_for(num_threads, nc, [&](int64_t c) {
      const int64_t lo = Cout * c / nc, hi = Cout * (c + 1) / nc;
      for (int64_t co = lo; co < hi; ++co) {
        const float *ro = residual ? residual + co * P : nullptr;
        const float b = w->bias ? w->bias[co] : 0.f;
        const float *p0 = parts + co * P;
        if (pl->gap_direct) {  // y[co]: the mean of the finished sums (y holds Cout floats)
          const float sc = pl->scale ? pl->scale[co] : 1.f;
          float sum = 0.f;
          for (int64_t i = 0; i < P; ++i) {
            float v = p0[i] + b + (ro ? ro[i] : 0.f);
            for (int64_t t = 1; t < kparts; ++t) v += parts[(t * Cout + co) * P + i];
            sum += sb::act_scalar(v, (int)w->act) * sc;
          }
          y[co] = sum / (float)P;
          continue;
        }
        float *yo = y + co * P;
        for (int64_t i = 0; i < P; ++i) yo[i] = p0[i] + b + (ro ? ro[i] : 0.f);
        for (int64_t t = 1; t < kparts; ++t) {
          const float *pt = parts + (t * Cout + co) * P;
          for (int64_t i = 0; i < P; ++i) yo[i] += pt[i];
        }
        sb::post_range(yo, P, (int)w->act, pl->scale != nullptr, pl->scale ? pl->scale[co] : 1.f);
        if (sub) sb::sub_run(pl, sub, co, yo, 0, P);
      }
    });
    return SB_OK;
  }
  // Channels: pack every band (split by planes; privately: in each chunk, once per thread and
  // run), then chunks of output channels over all bands.
  if (!p.direct_in && !private_pack) {
    const int64_t items = nb * planes;
    const int pack_threads = pl->ncopies * Cin * p.plane * nb < sb::g_conv_pack_min ? 1 : num_threads;
    const int64_t nc = sb::chunk_count(items, pack_threads, 4);
    sb::parallel_for(pack_threads, nc, [&](int64_t c) {
      const int64_t i0 = items * c / nc, i1 = items * (c + 1) / nc;
      for (int64_t i = i0; i < i1;) {  // runs of planes within one band
        const int64_t b = i / planes, e = std::min(i1, (b + 1) * planes);
        pack_band(b, i - b * planes, e - b * planes);
        i = e;
      }
    });
  }
  static std::atomic<uint64_t> runs{0};
  const uint64_t run = private_pack ? runs.fetch_add(1, std::memory_order_relaxed) + 1 : 0;
  std::atomic<int> status{SB_OK};
  const int64_t nc = sb::chunk_count(Cout, num_threads, sb::g_conv_chunks);
  sb::parallel_for(num_threads, nc, [&](int64_t c) {
    int64_t lo, hi;
    sb::balanced_range(w->row_ptr, Cout, 4, c, nc, &lo, &hi);
    if (lo >= hi) return;
    float *src = pack;
    if (private_pack) {
      thread_local uint64_t packed_run = 0;
      thread_local float *packed_at = nullptr;
      src = sb::scratch(sb::kScratchConvPack, (size_t)pl->band_floats * sizeof(float));
      if (!src) {
        status.store(SB_ENOMEM, std::memory_order_relaxed);
        return;
      }
      if (packed_run != run || packed_at != src) {
        pack_into(src, 0, 0, planes);
        packed_run = run, packed_at = src;
      }
    }
    for (int64_t b = 0; b < nb; ++b) sb::run_tiles(p.tile, job_in(src, b), lo, hi, pos(b), pos(b + 1));
    if (pl->compacts) sb::compact(job_in(src, 0), lo, hi, 0, P);
  });
  return status.load();
}

extern "C" int sb_csr_conv2d(const sb_conv2d *w, const float *x, int64_t N, int64_t H,
                             int64_t W, float *y, int num_threads) {
  if (num_threads < 1 || num_threads > sb::kMaxThreads) return SB_ETHREADS;
  if (!w) return SB_EINVAL;
  if (w->index_bits != 16 && w->index_bits != 32) return SB_EINDEX;
  if (w->out_channels < 0 || w->in_channels < 0 || !w->row_ptr || N < 0 || H < 0 || W < 0)
    return SB_EINVAL;
  const int64_t Ho = sb_conv_out_size(H, w->kernel_h, w->stride_h, w->pad_h);
  const int64_t Wo = sb_conv_out_size(W, w->kernel_w, w->stride_w, w->pad_w);
  if (Ho <= 0 || Wo <= 0) return SB_EINVAL;
  if (N == 0 || w->out_channels == 0) return SB_OK;
  if (!y) return SB_EINVAL;
  sb_conv_plan *p = nullptr;
  int st = sb_conv2d_plan(w, N, H, W, 0, nullptr, num_threads, &p);
  if (st == SB_OK) st = sb_conv2d_run(w, p, x, nullptr, y, num_threads);
  sb_conv2d_plan_free(p);
  return st;
}
