/* Tiling shared by the kernels of snake.c and exact.c: rows are processed in tiles of TILE samples
 * that stay in L1; a depthwise conv reads each tile with a halo of K / 2 * dilation samples. */
#ifndef ESPNET_SNAC_TILES_H
#define ESPNET_SNAC_TILES_H
#include <math.h>
#include <stdint.h>

#define TILE 1024
#define MAX_HALO 1024 /* widest halo a fused Snake + depthwise kernel takes (kernels.MAX_HALO) */

/* Tile [t0, t0 + n) of a row of T samples, read with `halo` samples each side: the span of
 * n + 2 halo samples starts at input sample `first`; span positions [lo, hi) are inside the row,
 * the others are the conv's zero padding. */
typedef struct {
    int64_t n, first, span, lo, hi;
} tile_t;

static inline tile_t tile_at(int64_t t0, int64_t T, int64_t halo)
{
    tile_t t;
    t.n = T - t0 < TILE ? T - t0 : TILE;
    t.first = t0 - halo;
    t.span = t.n + 2 * halo;
    t.lo = t.first < 0 ? -t.first : 0;
    t.hi = t.first + t.span > T ? T - t.first : t.span;
    return t;
}

/* Zero the span positions outside the row: buf[0, tl.lo) and buf[tl.hi, tl.span). */
static inline void zero_outside(float *buf, tile_t tl)
{
    for (int64_t i = 0; i < tl.lo; i++)
        buf[i] = 0.0f;
    for (int64_t i = tl.hi; i < tl.span; i++)
        buf[i] = 0.0f;
}

/* acc[i] += the K dilated taps over the zero-padded span s, as one fused multiply-add per tap in
 * kernel order (acc[i] reads s[i + k * dil]); acc holds the tile's n outputs. */
static inline void taps_from_span(const float *s, int64_t n, const float *w, int64_t K, int64_t dil,
                                  float *acc)
{
    for (int64_t k = 0; k < K; k++) {
        const float wk = w[k];
        const float *sk = s + k * dil;
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            acc[i] = fmaf(sk[i], wk, acc[i]);
    }
}

#endif
