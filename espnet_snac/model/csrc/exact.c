/* Encoder kernels that round exactly like torch's ops (espnet_snac/model/kernels.py).
 *
 * The encoder's codes must equal the official package's, so everything it computes must round
 * exactly like torch. Depthwise convolution (one input channel per group, odd kernel K, dilation d,
 * zero padding K / 2 * d): every output is a chain of fused multiply-adds over the taps in order,
 * starting from the bias (oneDNN's jit_dw kernel, used for d = 1) or from zero with the bias added
 * after the chain (its im2col + GEMM kernel, used for d > 1). Padding taps are skipped: an FMA with
 * a zero operand leaves the sum unchanged. The caller checks, per layer shape, that the chosen order
 * reproduces torch's output bit for bit before trusting it (kernels.ExactDepthwise).
 *
 * Snake, x + sin(a x)^2 / (a + 1e-9), as torch computes it: the product a x, the sine of the
 * math library torch uses (MKL's vsSin in torch's CPU builds; passed in as a function pointer and
 * checked against torch.sin by the caller), squared, times 1 / (a + 1e-9), plus x, each rounded.
 * Fused with the depthwise conv that follows it, a residual unit's first half is one pass.
 *
 * Built without -ffast-math and with -ffp-contract=off: every operation here is the IEEE one.
 * Layout as in snake.c: rows = batch x channels, row r at x + r * x_stride, samples contiguous.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tiles.h"

/* out[0, n) = acc, plus the bias when it comes after the tap chain (oneDNN's GEMM kernel) */
static void store_tile(float *acc, int64_t n, int add_bias, float b, float *out)
{
    if (add_bias)
        for (int64_t i = 0; i < n; i++)
            acc[i] = acc[i] + b;
    memcpy(out, acc, (size_t)n * sizeof(float));
}

void depthwise_exact_f32(const float *x, int64_t x_stride, float *out, int64_t out_stride,
                         const float *weight, const float *bias, int64_t rows, int64_t channels,
                         int64_t T, int64_t K, int64_t dil, int bias_first, int nthreads)
{
    const int64_t halo = (K / 2) * dil;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t c = r % channels;
        const float *xr = x + r * x_stride;
        float *o = out + r * out_stride;
        const float *w = weight + c * K;
        const float b = bias ? bias[c] : 0.0f;
        const float start = bias_first ? b : 0.0f;
        float acc[TILE];
        for (int64_t t0 = 0; t0 < T; t0 += TILE) {
            const int64_t n = T - t0 < TILE ? T - t0 : TILE;
            for (int64_t i = 0; i < n; i++)
                acc[i] = start;
            for (int64_t k = 0; k < K; k++) {
                const int64_t first = t0 - halo + k * dil; /* input sample of acc[0] for tap k */
                const int64_t lo = first < 0 ? (-first < n ? -first : n) : 0;
                const int64_t hi = first + n > T ? (T - first > lo ? T - first : lo) : n;
                const float wk = w[k];
#pragma omp simd
                for (int64_t i = lo; i < hi; i++)
                    acc[i] = fmaf(xr[first + i], wk, acc[i]);
            }
            store_tile(acc, n, !bias_first && bias, b, o + t0);
        }
    }
}

/* The vector sine torch uses: MKL's Fortran-style vsSin(n, in, out). */
typedef void (*vsin_fn)(const int *n, const float *in, float *out);

/* buf[i] = snake(xr[tl.first + i]) for i in [tl.lo, tl.hi), zero elsewhere in [0, tl.span) */
static void snake_exact_span(vsin_fn vsin, const float *xr, tile_t tl, float a, float inv, float *buf)
{
    zero_outside(buf, tl);
    for (int64_t i = tl.lo; i < tl.hi; i++)
        buf[i] = a * xr[tl.first + i];
    const int n = (int)(tl.hi - tl.lo);
    vsin(&n, buf + tl.lo, buf + tl.lo);
    for (int64_t i = tl.lo; i < tl.hi; i++) {
        const float s2 = buf[i] * buf[i];
        buf[i] = s2 * inv + xr[tl.first + i];
    }
}

/* out = snake(x), rounding like torch */
void snake_exact_f32(vsin_fn vsin, const float *x, int64_t x_stride, float *out, int64_t out_stride,
                     const float *alpha, int64_t rows, int64_t channels, int64_t T, int nthreads)
{
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float a = alpha[r % channels];
        const float inv = 1.0f / (a + 1e-9f);
        for (int64_t t0 = 0; t0 < T; t0 += TILE)
            snake_exact_span(vsin, x + r * x_stride, tile_at(t0, T, 0), a, inv, out + r * out_stride + t0);
    }
}

/* out = depthwise_exact(snake(x)) in one pass; -1 if the halo is too wide */
int snake_depthwise_exact_f32(vsin_fn vsin, const float *x, int64_t x_stride, float *out, int64_t out_stride,
                              const float *alpha, const float *weight, const float *bias, int64_t rows,
                              int64_t channels, int64_t T, int64_t K, int64_t dil, int bias_first, int nthreads)
{
    const int64_t halo = (K / 2) * dil;
    if (halo > MAX_HALO)
        return -1;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t c = r % channels;
        const float a = alpha[c];
        const float inv = 1.0f / (a + 1e-9f);
        const float *xr = x + r * x_stride;
        float *o = out + r * out_stride;
        const float *w = weight + c * K;
        const float b = bias ? bias[c] : 0.0f;
        const float start = bias_first ? b : 0.0f;
        float s[TILE + 2 * MAX_HALO];
        float acc[TILE];
        for (int64_t t0 = 0; t0 < T; t0 += TILE) {
            const tile_t tl = tile_at(t0, T, halo);
            snake_exact_span(vsin, xr, tl, a, inv, s);
            for (int64_t i = 0; i < tl.n; i++)
                acc[i] = start;
            taps_from_span(s, tl.n, w, K, dil, acc); /* a padding tap adds an exact zero */
            store_tile(acc, tl.n, !bias_first && bias, b, o + t0);
        }
    }
    return 0;
}

/* Kernel-1 convolution (a matrix product over channels) of one row x (C_in, T), channel c at
 * x + c * x_stride, into out (C_out, T), channel c at out + c * out_stride, rounded like oneDNN's
 * 1x1 kernel: every output is one chain of fused multiply-adds over the input channels in order,
 * started from the bias (bias_first) or from zero with the bias added after the chain; then, if
 * residual is given, plus residual[c, t] (the residual unit's sum, y + x, one more rounding: the
 * same value as torch's separate add_). The caller checks per layer shape that this reproduces
 * F.conv1d bit for bit (kernels.ExactPointwise). Blocked as 8 output channels x 48 samples of
 * accumulators held in registers; threads split the samples. Returns -1 for a C_out that is not
 * a multiple of 8 (then the caller uses F.conv1d). */
#define PW_CO 8
#define PW_T 48
int pointwise_exact_f32(const float *x, int64_t x_stride, float *out, int64_t out_stride,
                        const float *residual, int64_t res_stride, const float *weight, const float *bias,
                        int64_t c_in, int64_t c_out, int64_t T, int bias_first, int nthreads)
{
    if (c_out % PW_CO)
        return -1;
    const int64_t chunks = (T + PW_T - 1) / PW_T;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t ch = 0; ch < chunks; ch++) {
        const int64_t t0 = ch * PW_T;
        const int64_t n = T - t0 < PW_T ? T - t0 : PW_T;
        for (int64_t co0 = 0; co0 < c_out; co0 += PW_CO) {
            float acc[PW_CO][PW_T];
            for (int j = 0; j < PW_CO; j++) {
                const float s = (bias_first && bias) ? bias[co0 + j] : 0.0f;
                for (int i = 0; i < PW_T; i++)
                    acc[j][i] = s;
            }
            const float *w = weight + co0 * c_in;
            if (n == PW_T) {
                for (int64_t ci = 0; ci < c_in; ci++) {
                    const float *xr = x + ci * x_stride + t0;
                    for (int j = 0; j < PW_CO; j++) {
                        const float wj = w[j * c_in + ci];
#pragma omp simd
                        for (int i = 0; i < PW_T; i++)
                            acc[j][i] = fmaf(xr[i], wj, acc[j][i]);
                    }
                }
            } else {
                for (int64_t ci = 0; ci < c_in; ci++) {
                    const float *xr = x + ci * x_stride + t0;
                    for (int j = 0; j < PW_CO; j++) {
                        const float wj = w[j * c_in + ci];
                        for (int64_t i = 0; i < n; i++)
                            acc[j][i] = fmaf(xr[i], wj, acc[j][i]);
                    }
                }
            }
            for (int j = 0; j < PW_CO; j++) {
                const int64_t co = co0 + j;
                float *o = out + co * out_stride + t0;
                const float b = (!bias_first && bias) ? bias[co] : 0.0f;
                const int add_b = !bias_first && bias;
                const float *res = residual ? residual + co * res_stride + t0 : 0;
                for (int64_t i = 0; i < n; i++) {
                    float v = acc[j][i];
                    if (add_b)
                        v = v + b;
                    if (res)
                        v = v + res[i];
                    o[i] = v;
                }
            }
        }
    }
    return 0;
}
