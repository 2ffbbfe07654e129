/* Fused CPU kernels of the SNAC decoder's inference fast path (espnet_snac/model/kernels.py).
 *
 * Snake, x + sin(a x)^2 / (a + 1e-9), costs five passes over memory as separate torch ops (mul,
 * sin, square, mul, add); a residual unit then reads its output seven more times in the depthwise
 * convolution. Here both are one pass: each row is processed in tiles that stay in L1, the sine is
 * the compiler's vectorised one (glibc libmvec, a few ulp), and the taps accumulate in registers.
 * Decoder only: the result equals the torch ops up to float rounding (~1e-6), which the encoder
 * cannot afford (codes), and the decoder's tests allow (1e-4).
 *
 * Layout: ``rows`` = batch x channels rows of ``T`` samples, channel of row r = r % channels; row r
 * starts at x + r * x_stride (likewise out), samples contiguous.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#include "tiles.h"

static inline float snake1(float x, float a, float inv)
{
    float s = sinf(a * x);
    return x + inv * (s * s);
}

/* out = snake(x) */
void snake_f32(const float *x, int64_t x_stride, float *out, int64_t out_stride, const float *alpha,
               int64_t rows, int64_t channels, int64_t T, int nthreads)
{
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float a = alpha[r % channels];
        const float inv = 1.0f / (a + 1e-9f);
        const float *xr = x + r * x_stride;
        float *o = out + r * out_stride;
#pragma omp simd
        for (int64_t t = 0; t < T; t++)
            o[t] = snake1(xr[t], a, inv);
    }
}

/* out = bias + depthwise conv of snake(x): odd kernel K, dilation dil, zero "same" padding
 * (K / 2 * dil samples each side), weight (channels, K). Returns -1 if the halo is too wide. */
int snake_depthwise_f32(const float *x, int64_t x_stride, float *out, int64_t out_stride,
                        const float *alpha, const float *weight, const float *bias, int64_t rows,
                        int64_t channels, int64_t T, int64_t K, int64_t dil, int nthreads)
{
    const int64_t halo = (K / 2) * dil;
    if (halo > MAX_HALO)
        return -1;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t c = r % channels;
        const float a = alpha[c];
        const float inv = 1.0f / (a + 1e-9f);
        const float *w = weight + c * K;
        const float b = bias ? bias[c] : 0.0f;
        const float *xr = x + r * x_stride;
        float *o = out + r * out_stride;
        float s[TILE + 2 * MAX_HALO]; /* snake of the tile and its halo, zero outside [0, T) */
        float acc[TILE];
        for (int64_t t0 = 0; t0 < T; t0 += TILE) {
            const tile_t tl = tile_at(t0, T, halo);
            zero_outside(s, tl);
#pragma omp simd
            for (int64_t i = tl.lo; i < tl.hi; i++)
                s[i] = snake1(xr[tl.first + i], a, inv);
            for (int64_t i = 0; i < tl.n; i++)
                acc[i] = b;
            taps_from_span(s, tl.n, w, K, dil, acc);
            memcpy(o + t0, acc, (size_t)tl.n * sizeof(float));
        }
    }
    return 0;
}

/* out (B, 1, T) = bias + conv of snake(x) with one output channel: x (B, C, T) row (b, c) at
 * x + (b * C + c) * x_stride, weight (C, K), odd K, zero "same" padding (K / 2 samples each side),
 * out row b at out + b * out_stride. The decoder's last convolution: one pass that reads x once
 * (oneDNN's kernel for a single output channel re-lays out the whole input). Threads split
 * (batch, tile) pairs; channels accumulate in order. Returns -1 if K / 2 > MAX_HALO. */
int snake_conv_out_f32(const float *x, int64_t x_stride, float *out, int64_t out_stride, const float *alpha,
                       const float *weight, const float *bias, int64_t batch, int64_t channels, int64_t T,
                       int64_t K, int nthreads)
{
    const int64_t halo = K / 2;
    if (halo > MAX_HALO)
        return -1;
    const int64_t tiles = (T + TILE - 1) / TILE;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t task = 0; task < batch * tiles; task++) {
        const int64_t b = task / tiles, t0 = (task % tiles) * TILE;
        const tile_t tl = tile_at(t0, T, halo);
        float s[TILE + 2 * MAX_HALO];
        float acc[TILE];
        const float start = bias ? bias[0] : 0.0f;
        for (int64_t i = 0; i < tl.n; i++)
            acc[i] = start;
        for (int64_t c = 0; c < channels; c++) {
            const float a = alpha[c];
            const float inv = 1.0f / (a + 1e-9f);
            const float *xr = x + (b * channels + c) * x_stride;
            zero_outside(s, tl);
#pragma omp simd
            for (int64_t i = tl.lo; i < tl.hi; i++)
                s[i] = snake1(xr[tl.first + i], a, inv);
            taps_from_span(s, tl.n, weight + c * K, K, 1, acc);
        }
        memcpy(out + b * out_stride + t0, acc, (size_t)tl.n * sizeof(float));
    }
    return 0;
}
