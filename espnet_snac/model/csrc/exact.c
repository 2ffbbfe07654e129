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
#include <stdlib.h>
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

/* MKL's MKL_Set_Num_Threads_Local, when found: inside our parallel regions each call of vsSin must run
 * on its own thread only. Otherwise MKL, which does not see our (other) OpenMP runtime's region,
 * starts its own threads for every call: 2x slower at 2 threads, and 300x slower when our region has
 * fewer threads than torch's setting. Threading never changes vsSin's values. */
typedef int (*mkl_threads_fn)(int);
static mkl_threads_fn mkl_threads_local = 0;

void exact_set_mkl_threads_local(mkl_threads_fn fn)
{
    mkl_threads_local = fn;
}

static int mkl_single_thread(void)
{
    return mkl_threads_local ? mkl_threads_local(1) : 0;
}

static void mkl_restore_threads(int previous)
{
    if (mkl_threads_local)
        mkl_threads_local(previous);
}

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
#pragma omp parallel num_threads(nthreads)
    {
        const int mkl_threads = mkl_single_thread();
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float a = alpha[r % channels];
            const float inv = 1.0f / (a + 1e-9f);
            for (int64_t t0 = 0; t0 < T; t0 += TILE)
                snake_exact_span(vsin, x + r * x_stride, tile_at(t0, T, 0), a, inv, out + r * out_stride + t0);
        }
        mkl_restore_threads(mkl_threads);
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
#pragma omp parallel num_threads(nthreads)
    {
        const int mkl_threads = mkl_single_thread();
#pragma omp for schedule(static)
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
        mkl_restore_threads(mkl_threads);
    }
    return 0;
}

/* Kernel-1 convolution (a matrix product over channels) of one row x (C_in, T), channel c at
 * x + c * x_stride, into out (C_out, T), channel c at out + c * out_stride, rounded like oneDNN's
 * 1x1 kernels: the input channels are reduced in blocks of reduce_block channels (all of them in one
 * block unless oneDNN splits the reduction); every block is one chain of fused multiply-adds over its
 * channels in order, the first started from the bias (bias_first) or from zero, the others from zero,
 * and each block's chain is added to the sum of the blocks before it; without bias_first the bias is
 * added at the end; then, if residual is given, plus residual[c, t] (the residual unit's sum, y + x,
 * one more rounding: the same value as torch's separate add_). The caller checks per layer shape that
 * this reproduces F.conv1d bit for bit (kernels.ExactPointwise). Blocked as 8 output channels x 48
 * samples of accumulators held in registers; threads split the samples. Returns -1 for a C_out that
 * is not a multiple of 8 (then the caller uses F.conv1d). */
#define PW_CO 8
#define PW_T 48

/* n <= PW_T samples of the kernel-1 convolution described above: x row ci at x + ci * x_stride,
 * output row co at out + co * out_stride, residual row co at residual + co * res_stride (or none),
 * each pointer at the chunk's first sample. */
static void pointwise_chunk_generic(const float *x, int64_t x_stride, float *out, int64_t out_stride,
                            const float *residual, int64_t res_stride, const float *weight, const float *bias,
                            int64_t c_in, int64_t c_out, int64_t n, int bias_first, int64_t reduce_block)
{
    for (int64_t co0 = 0; co0 < c_out; co0 += PW_CO) {
        float acc[PW_CO][PW_T], sum[PW_CO][PW_T];
        const float *w = weight + co0 * c_in;
        for (int64_t k0 = 0; k0 < c_in; k0 += reduce_block) {
            const int64_t k1 = c_in - k0 < reduce_block ? c_in : k0 + reduce_block;
            for (int j = 0; j < PW_CO; j++) {
                const float s = (k0 == 0 && bias_first && bias) ? bias[co0 + j] : 0.0f;
                for (int i = 0; i < PW_T; i++)
                    acc[j][i] = s;
            }
            if (n == PW_T) {
                for (int64_t ci = k0; ci < k1; ci++) {
                    const float *xr = x + ci * x_stride;
                    for (int j = 0; j < PW_CO; j++) {
                        const float wj = w[j * c_in + ci];
#pragma omp simd
                        for (int i = 0; i < PW_T; i++)
                            acc[j][i] = fmaf(xr[i], wj, acc[j][i]);
                    }
                }
            } else {
                for (int64_t ci = k0; ci < k1; ci++) {
                    const float *xr = x + ci * x_stride;
                    for (int j = 0; j < PW_CO; j++) {
                        const float wj = w[j * c_in + ci];
                        for (int64_t i = 0; i < n; i++)
                            acc[j][i] = fmaf(xr[i], wj, acc[j][i]);
                    }
                }
            }
            if (k0 == 0 && k1 == c_in)
                break; /* one block: the sum is acc itself */
            for (int j = 0; j < PW_CO; j++)
                for (int i = 0; i < PW_T; i++)
                    sum[j][i] = k0 == 0 ? acc[j][i] : sum[j][i] + acc[j][i];
        }
        float (*total)[PW_T] = reduce_block >= c_in ? acc : sum;
        for (int j = 0; j < PW_CO; j++) {
            const int64_t co = co0 + j;
            float *o = out + co * out_stride;
            const float b = (!bias_first && bias) ? bias[co] : 0.0f;
            const int add_b = !bias_first && bias;
            const float *res = residual ? residual + co * res_stride : 0;
            for (int64_t i = 0; i < n; i++) {
                float v = total[j][i];
                if (add_b)
                    v = v + b;
                if (res)
                    v = v + res[i];
                o[i] = v;
            }
        }
    }
}

#ifdef __AVX512F__
#include <immintrin.h>
/* One full chunk (PW_T = 48 samples = 3 vectors) for 8 output channels, accumulators in registers:
 * the same FMA chains and additions as pointwise_chunk_generic, lane by lane. */
static void pointwise_block_avx512(const float *x, int64_t x_stride, float *out, int64_t out_stride,
                                   const float *residual, int64_t res_stride, const float *w, const float *bias,
                                   int64_t co0, int64_t c_in, int bias_first, int64_t reduce_block)
{
    __m512 acc[PW_CO][3], sum[PW_CO][3];
    for (int64_t k0 = 0; k0 < c_in; k0 += reduce_block) {
        const int64_t k1 = c_in - k0 < reduce_block ? c_in : k0 + reduce_block;
        for (int j = 0; j < PW_CO; j++) {
            const __m512 s = _mm512_set1_ps((k0 == 0 && bias_first && bias) ? bias[co0 + j] : 0.0f);
            acc[j][0] = s;
            acc[j][1] = s;
            acc[j][2] = s;
        }
        for (int64_t ci = k0; ci < k1; ci++) {
            const float *xr = x + ci * x_stride;
            const __m512 x0 = _mm512_loadu_ps(xr), x1 = _mm512_loadu_ps(xr + 16), x2 = _mm512_loadu_ps(xr + 32);
            for (int j = 0; j < PW_CO; j++) {
                const __m512 wj = _mm512_set1_ps(w[j * c_in + ci]);
                acc[j][0] = _mm512_fmadd_ps(x0, wj, acc[j][0]);
                acc[j][1] = _mm512_fmadd_ps(x1, wj, acc[j][1]);
                acc[j][2] = _mm512_fmadd_ps(x2, wj, acc[j][2]);
            }
        }
        for (int j = 0; j < PW_CO; j++)
            for (int v = 0; v < 3; v++)
                sum[j][v] = k0 == 0 ? acc[j][v] : _mm512_add_ps(sum[j][v], acc[j][v]);
    }
    for (int j = 0; j < PW_CO; j++) {
        const int64_t co = co0 + j;
        float *o = out + co * out_stride;
        const float *res = residual ? residual + co * res_stride : 0;
        for (int v = 0; v < 3; v++) {
            __m512 r = sum[j][v];
            if (!bias_first && bias)
                r = _mm512_add_ps(r, _mm512_set1_ps(bias[co]));
            if (res)
                r = _mm512_add_ps(r, _mm512_loadu_ps(res + 16 * v));
            _mm512_storeu_ps(o + 16 * v, r);
        }
    }
}
#endif

/* n <= PW_T samples of the kernel-1 convolution, pointers at the chunk's first sample (see
 * pointwise_chunk_generic); full chunks through explicit vectors where the CPU has AVX-512. */
static void pointwise_chunk(const float *x, int64_t x_stride, float *out, int64_t out_stride,
                            const float *residual, int64_t res_stride, const float *weight, const float *bias,
                            int64_t c_in, int64_t c_out, int64_t n, int bias_first, int64_t reduce_block)
{
#ifdef __AVX512F__
    if (n == PW_T) {
        for (int64_t co0 = 0; co0 < c_out; co0 += PW_CO)
            pointwise_block_avx512(x, x_stride, out, out_stride, residual, res_stride, weight + co0 * c_in, bias,
                                   co0, c_in, bias_first, reduce_block);
        return;
    }
#endif
    pointwise_chunk_generic(x, x_stride, out, out_stride, residual, res_stride, weight, bias, c_in, c_out, n,
                            bias_first, reduce_block);
}

int pointwise_exact_f32(const float *x, int64_t x_stride, float *out, int64_t out_stride,
                        const float *residual, int64_t res_stride, const float *weight, const float *bias,
                        int64_t c_in, int64_t c_out, int64_t T, int bias_first, int64_t reduce_block,
                        int nthreads)
{
    if (c_out % PW_CO)
        return -1;
    if (reduce_block <= 0 || reduce_block > c_in)
        reduce_block = c_in;
    const int64_t chunks = (T + PW_T - 1) / PW_T;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t ch = 0; ch < chunks; ch++) {
        const int64_t t0 = ch * PW_T;
        pointwise_chunk(x + t0, x_stride, out + t0, out_stride, residual ? residual + t0 : 0, res_stride, weight,
                        bias, c_in, c_out, T - t0 < PW_T ? T - t0 : PW_T, bias_first, reduce_block);
    }
    return 0;
}

/* A whole residual unit of one row, x (C, T) -> out = x + pw(snake2(dw(snake1(x)))), in one pass over
 * tiles of samples that stay in cache (the unfused path streams four full-size activations through
 * memory): per tile, each channel's Snake over the tile and its halo, the depthwise conv, the second
 * Snake, then the kernel-1 conv over all channels plus the residual. Every value is computed by the
 * same operations in the same order as snake_depthwise_exact_f32, snake_exact_f32 and
 * pointwise_exact_f32, so the result is theirs bit for bit. out must not overlap x. Returns -1 if the
 * halo is too wide or C is not a multiple of 8, -2 if memory runs out. */
int residual_unit_exact_f32(vsin_fn vsin, const float *x, int64_t x_stride, float *out, int64_t out_stride,
                            const float *alpha1, const float *dw_weight, const float *dw_bias, int64_t K,
                            int64_t dil, int dw_bias_first, const float *alpha2, const float *pw_weight,
                            const float *pw_bias, int pw_bias_first, int64_t reduce_block, int64_t C,
                            int64_t T, int nthreads)
{
    const int64_t halo = (K / 2) * dil;
    if (halo > MAX_HALO || C % PW_CO)
        return -1;
    if (reduce_block <= 0 || reduce_block > C)
        reduce_block = C;
    /* samples per tile: the tile's C x n activations in about 192 KiB, a multiple of PW_T */
    int64_t tt = (49152 / C) / PW_T * PW_T;
    if (tt < PW_T)
        tt = PW_T;
    const int64_t tiles = (T + tt - 1) / tt;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        const int mkl_threads = mkl_single_thread();
        float *h = malloc((size_t)(C * tt) * sizeof(float));
        float *span = malloc((size_t)(tt + 2 * halo) * sizeof(float));
        if (!h || !span) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t ti = 0; ti < tiles; ti++) {
            if (!h || !span)
                continue;
            const int64_t t0 = ti * tt;
            const int64_t n = T - t0 < tt ? T - t0 : tt;
            tile_t tl;
            tl.n = n;
            tl.first = t0 - halo;
            tl.span = n + 2 * halo;
            tl.lo = tl.first < 0 ? -tl.first : 0;
            tl.hi = tl.first + tl.span > T ? T - tl.first : tl.span;
            for (int64_t c = 0; c < C; c++) {
                const float *xr = x + c * x_stride;
                float *hc = h + c * tt;
                const float a1 = alpha1[c], inv1 = 1.0f / (a1 + 1e-9f);
                snake_exact_span(vsin, xr, tl, a1, inv1, span);
                const float b = dw_bias ? dw_bias[c] : 0.0f;
                const float start = dw_bias_first ? b : 0.0f;
                for (int64_t i = 0; i < n; i++)
                    hc[i] = start;
                taps_from_span(span, n, dw_weight + c * K, K, dil, hc);
                if (!dw_bias_first && dw_bias)
                    for (int64_t i = 0; i < n; i++)
                        hc[i] = hc[i] + b;
                /* second Snake in place: as snake_exact_span on a row without halo */
                const float a2 = alpha2[c], inv2 = 1.0f / (a2 + 1e-9f);
                for (int64_t i = 0; i < n; i++)
                    span[i] = a2 * hc[i];
                const int m = (int)n;
                vsin(&m, span, span);
                for (int64_t i = 0; i < n; i++) {
                    const float s2 = span[i] * span[i];
                    hc[i] = s2 * inv2 + hc[i];
                }
            }
            for (int64_t c0 = 0; c0 < n; c0 += PW_T)
                pointwise_chunk(h + c0, tt, out + t0 + c0, out_stride, x + t0 + c0, x_stride, pw_weight, pw_bias,
                                C, C, n - c0 < PW_T ? n - c0 : PW_T, pw_bias_first, reduce_block);
        }
        free(h);
        free(span);
        mkl_restore_threads(mkl_threads);
    }
    return failed ? -2 : 0;
}
