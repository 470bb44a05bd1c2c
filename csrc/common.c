/* common.c: status messages, RNG, finiteness checks, BLAS build information. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "pk_common.h"
#include "util.h"

#ifndef PK_BLAS_SOURCE
#define PK_BLAS_SOURCE "unknown"
#endif

const char *pk_strerror(int code)
{
    switch (code) {
    case PK_OK: return "success";
    case PK_ERR_BAD_ARG: return "invalid argument passed to the C core (a pykfac bug; please report it)";
    case PK_ERR_NOMEM: return "out of memory";
    case PK_ERR_SHAPE: return "inconsistent array sizes";
    case PK_ERR_NONFINITE: return "input contains NaN or Inf";
    case PK_ERR_LABEL: return "label out of range for the loss";
    case PK_ERR_NOT_PD: return "matrix is not positive definite";
    case PK_ERR_EIG_FAILED: return "symmetric eigensolver did not converge";
    case PK_ERR_SINGULAR: return "damped curvature is singular (an eigenvalue plus damping is <= 0); use a positive damping";
    case PK_ERR_TOO_LARGE: return "a dimension is too large for the 32-bit BLAS interface";
    case PK_ERR_EMPTY: return "empty batch";
    case PK_ERR_DTYPE: return "unsupported dtype";
    case PK_ERR_LOSS: return "unsupported loss for this output width";
    default: return "unknown pykfac error code";
    }
}

size_t pk_dtype_size(pk_dtype_t dtype)
{
    switch (dtype) {
    case PK_FLOAT32: return sizeof(float);
    case PK_FLOAT64: return sizeof(double);
    default: return 0;
    }
}

/* ---- xoshiro256** (Blackman & Vigna), seeded by splitmix64 ------------- */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void pk_rng_seed(pk_rng_t *rng, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

uint64_t pk_rng_next(pk_rng_t *rng)
{
    uint64_t *s = rng->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double pk_rng_uniform(pk_rng_t *rng) { return (double)(pk_rng_next(rng) >> 11) * 0x1.0p-53; }

/* ---- standard normals: Marsaglia & Tsang's ziggurat (256 layers) ------------
 * Layer i >= 1 is the rectangle [0, x_i] x [f(x_i), f(x_{i+1})] under
 * f(x) = exp(-x^2/2); layer 0 is the base strip of width x_0 = V / f(R) whose
 * part beyond R stands for the tail. Every layer has area V, so a uniform layer
 * and a uniform point in it, kept when under f, is exact; ~99% are kept at the
 * first comparison. R and V make the 256 areas tile the curve. The tables are
 * built once (pthread_once: callers may sample from several threads). */
#define ZIG_R 3.6541528853610088
#define ZIG_V 0.00492867323399
static double zig_x[257], zig_f[257];
static pthread_once_t zig_once = PTHREAD_ONCE_INIT;
static void zig_init_all(void);
static void pick_fast_path(void);

/* x[0..n] and f[i] = f(x[i]) of an n-layer ziggurat with base R and area V */
static void zig_tables(int n, double R, double V, double *x, double *f)
{
    x[0] = V / exp(-0.5 * R * R);
    x[1] = R;
    for (int i = 1; i < n - 1; i++) x[i + 1] = sqrt(-2.0 * log(V / x[i] + exp(-0.5 * x[i] * x[i])));
    x[n] = 0.0;
    for (int i = 0; i <= n; i++) f[i] = exp(-0.5 * x[i] * x[i]);
}

/* A draw from the normal tail beyond R (Marsaglia's exponential rejection), with z's sign. */
static double zig_tail(pk_rng_t *rng, double R, double z)
{
    double a, b;
    do {
        a = -log(1.0 - pk_rng_uniform(rng)) / R;
        b = -log(1.0 - pk_rng_uniform(rng));
    } while (b + b < a * a);
    return z > 0 ? R + a : -(R + a);
}

static double zig_sample(pk_rng_t *rng)
{
    for (;;) {
        const uint64_t bits = pk_rng_next(rng);
        const int i = (int)(bits & 255);
        /* bits 11..63 as a signed fraction in [-1, 1), independent of the layer bits */
        const double u = (double)((int64_t)bits >> 11) * 0x1.0p-52;
        const double z = u * zig_x[i];
        if (fabs(z) < zig_x[i + 1]) return z;
        if (i == 0) return zig_tail(rng, ZIG_R, z);
        if (zig_f[i] + pk_rng_uniform(rng) * (zig_f[i + 1] - zig_f[i]) < exp(-0.5 * z * z)) return z;
    }
}

/* float32 draws: each 64-bit output gives two 32-bit words, each a normal from
 * the same 256-layer ziggurat (8 layer bits, a 24-bit signed integer j); the
 * common case is one integer comparison, |j| < k_i  <=>  |z| < x_{i+1} (k_i
 * rounded down, so the rare boundary case goes the exact slow way). 24 random
 * bits per value, as many as a float holds. */
static float zig32_w[256];
static uint32_t zig32_k[256];

static void zig32_init(void)
{
    for (int i = 0; i < 256; i++) {
        zig32_w[i] = (float)(zig_x[i] * 0x1.0p-23);
        zig32_k[i] = (uint32_t)floor(zig_x[i + 1] / zig_x[i] * 0x1.0p23);
    }
}

static float zig32_slow(pk_rng_t *rng, int i, int32_t j)
{
    const double z = (double)j * zig_x[i] * 0x1.0p-23;
    if (fabs(z) < zig_x[i + 1]) return (float)z; /* k_i was rounded down */
    if (i == 0) return (float)zig_tail(rng, ZIG_R, z);
    if (zig_f[i] + pk_rng_uniform(rng) * (zig_f[i + 1] - zig_f[i]) < exp(-0.5 * z * z)) return (float)z;
    return NAN; /* rejected: the caller draws again */
}

static void zig32_fill(pk_rng_t *rng, int64_t n, float *o)
{
    int64_t t = 0;
    while (t < n) {
        const uint64_t bits = pk_rng_next(rng);
        for (int h = 0; h < 2 && t < n; h++) {
            const uint32_t w = (uint32_t)(bits >> (32 * h));
            const int i = (int)(w & 255);
            const int32_t j = (int32_t)w >> 8;
            const uint32_t aj = (uint32_t)(j < 0 ? -j : j);
            if (aj < zig32_k[i]) {
                o[t++] = (float)j * zig32_w[i];
            } else {
                const float z = zig32_slow(rng, i, j);
                if (z == z) o[t++] = z;
            }
        }
    }
}

static void zig_init_all(void)
{
    zig_tables(256, ZIG_R, ZIG_V, zig_x, zig_f);
    zig32_init();
    pick_fast_path();
}

double pk_rng_normal(pk_rng_t *rng)
{
    pthread_once(&zig_once, zig_init_all);
    return zig_sample(rng);
}

/* ---- block-parallel fills ---------------------------------------------------
 * A fill takes one 64-bit key from the caller's generator and cuts its output
 * into blocks of NORMAL_BLOCK values. Block b draws its candidates from 8
 * interleaved xoshiro256++ streams seeded from (key, b) (++ rather than **:
 * no multiplies, which AVX2 lacks for 64-bit lanes), and the 1-2% of
 * candidates that leave the ziggurat's fast path finish on a ninth stream of
 * the block. The values are thus a function of the seed alone, whatever the
 * thread count, and both loops are branch-free: the lanes vectorise, and the
 * float32 fast path has an AVX2 version (table gathers) that computes the same
 * values as the portable one. */
#define NORMAL_BLOCK 2048
#define LANES 8

static uint64_t block_seed(uint64_t key, int64_t b, int lane)
{
    uint64_t x = key ^ (((uint64_t)b << 4 | (uint64_t)lane) * 0xd1b54a32d192ed03ULL);
    return splitmix64(&x);
}

/* w[0..nwords): the block's candidate words, lane l giving w[LANES t + l] */
static void block_words_portable(uint64_t (*st)[LANES], int64_t nwords, uint64_t *w)
{
    uint64_t *s0 = st[0], *s1 = st[1], *s2 = st[2], *s3 = st[3];
    for (int64_t t = 0; t < nwords; t += LANES) {
        uint64_t r[LANES];
        for (int l = 0; l < LANES; l++) {
            r[l] = rotl(s0[l] + s3[l], 23) + s0[l];
            const uint64_t u = s1[l] << 17;
            s2[l] ^= s0[l], s3[l] ^= s1[l], s1[l] ^= s2[l], s0[l] ^= s3[l], s2[l] ^= u;
            s3[l] = rotl(s3[l], 45);
        }
        const int64_t m = nwords - t < LANES ? nwords - t : LANES;
        for (int l = 0; l < m; l++) w[t + l] = r[l];
    }
}

/* z[t] from candidate t on the fast path; slow[t] = 1 where it must go the
 * exact slow way (len a multiple of 8 here). float64 has no vector version:
 * on AMD Zen 2 this scalar loop beats AVX2 gathers. */
static void fast64(int64_t len, const uint64_t *w, double *z, unsigned char *slow)
{
    for (int64_t t = 0; t < len; t++) {
        const uint64_t i = w[t] & 255, bits = (w[t] >> 12) | 0x3ff0000000000000ULL;
        double d; /* bits 12..63 as the mantissa of d in [1, 2); u = 2d - 3 in [-1, 1) */
        memcpy(&d, &bits, sizeof d);
        z[t] = (2.0 * d - 3.0) * zig_x[i];
        slow[t] = !(fabs(z[t]) < zig_x[i + 1]);
    }
}

/* candidate t of the float32 draws: the low word of w64[t / 2] for even t, the high for odd */
static inline uint32_t word32(const uint64_t *w64, int64_t t) { return (uint32_t)(w64[t >> 1] >> (32 * (t & 1))); }

static void fast32_portable(int64_t len, const uint64_t *w64, float *z, unsigned char *slow)
{
    for (int64_t t = 0; t < len; t++) {
        const uint32_t w = word32(w64, t);
        const int i = (int)(w & 255);
        const int32_t j = (int32_t)w >> 8;
        z[t] = (float)j * zig32_w[i];
        slow[t] = (uint32_t)(j < 0 ? -j : j) >= zig32_k[i];
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
/* xoshiro256++ on 4 lanes of a vector: the same values as the portable loop */
#define ROTL4(x, k) _mm256_or_si256(_mm256_slli_epi64(x, k), _mm256_srli_epi64(x, 64 - (k)))
__attribute__((target("avx2"))) static void block_words_avx2(uint64_t (*st)[LANES], int64_t nwords, uint64_t *w)
{
    __m256i s[2][4];
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 4; k++) s[h][k] = _mm256_loadu_si256((const __m256i *)(st[k] + 4 * h));
    for (int64_t t = 0; t < nwords; t += LANES)
        for (int h = 0; h < 2; h++) {
            __m256i *q = s[h];
            const __m256i a = _mm256_add_epi64(q[0], q[3]);
            const __m256i r = _mm256_add_epi64(ROTL4(a, 23), q[0]);
            const __m256i u = _mm256_slli_epi64(q[1], 17);
            q[2] = _mm256_xor_si256(q[2], q[0]);
            q[3] = _mm256_xor_si256(q[3], q[1]);
            q[1] = _mm256_xor_si256(q[1], q[2]);
            q[0] = _mm256_xor_si256(q[0], q[3]);
            q[2] = _mm256_xor_si256(q[2], u);
            q[3] = ROTL4(q[3], 45);
            if (t + 4 * h + 4 <= nwords) {
                _mm256_storeu_si256((__m256i *)(w + t + 4 * h), r);
            } else {
                uint64_t tmp[4];
                _mm256_storeu_si256((__m256i *)tmp, r);
                for (int64_t l = 0; t + 4 * h + l < nwords; l++) w[t + 4 * h + l] = tmp[l];
            }
        }
}

/* The two per-layer values sit in one 64-bit entry, zig32_wk[i] = (k_i << 32) |
 * bits(w_i): one 4-wide gather fetches both (two 8-wide gathers cost more). */
static uint64_t zig32_wk[256];
static uint64_t mask_bytes[256]; /* byte k of mask_bytes[m] is bit k of m */

/* x86 is little-endian, so the 32-bit lanes of a vector load of w64 are word32's order */
__attribute__((target("avx2"))) static void fast32_avx2(int64_t len, const uint64_t *w64, float *z,
                                                        unsigned char *slow)
{
    const __m256i mask = _mm256_set1_epi32(255), evens_odds = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (int64_t t = 0; t < len; t += 8) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(w64 + t / 2));
        const __m256i i = _mm256_and_si256(v, mask), j = _mm256_srai_epi32(v, 8);
        const long long *tab = (const long long *)zig32_wk;
        const __m256i lo = _mm256_i32gather_epi64(tab, _mm256_castsi256_si128(i), 8);
        const __m256i hi = _mm256_i32gather_epi64(tab, _mm256_extracti128_si256(i, 1), 8);
        const __m256i a = _mm256_permutevar8x32_epi32(lo, evens_odds), c = _mm256_permutevar8x32_epi32(hi, evens_odds);
        const __m256i W = _mm256_permute2x128_si256(a, c, 0x20), K = _mm256_permute2x128_si256(a, c, 0x31);
        _mm256_storeu_ps(z + t, _mm256_mul_ps(_mm256_cvtepi32_ps(j), _mm256_castsi256_ps(W)));
        /* |j| <= 2^23: a signed compare; slow where |j| >= k */
        const __m256i fast = _mm256_cmpgt_epi32(K, _mm256_abs_epi32(j));
        const int m = ~_mm256_movemask_ps(_mm256_castsi256_ps(fast)) & 255;
        memcpy(slow + t, &mask_bytes[m], 8);
    }
}
#endif

static int use_avx2; /* set once, under zig_once */

static void block_words(uint64_t key, int64_t b, int64_t nwords, uint64_t *w)
{
    uint64_t st[4][LANES];
    for (int l = 0; l < LANES; l++) {
        uint64_t x = block_seed(key, b, l);
        for (int k = 0; k < 4; k++) st[k][l] = splitmix64(&x);
    }
#ifdef HAVE_AVX2_PATH
    if (use_avx2) {
        block_words_avx2(st, nwords, w);
        return;
    }
#endif
    block_words_portable(st, nwords, w);
}

/* PYKFAC_NO_AVX2 (set) forces the portable loops, so tests can check that both
 * give the same values */
static void pick_fast_path(void)
{
#ifdef HAVE_AVX2_PATH
    use_avx2 = __builtin_cpu_supports("avx2") && !getenv("PYKFAC_NO_AVX2");
    for (int i = 0; i < 256; i++) {
        uint32_t wbits;
        memcpy(&wbits, &zig32_w[i], sizeof wbits);
        zig32_wk[i] = (uint64_t)zig32_k[i] << 32 | wbits;
        unsigned char bytes[8];
        for (int k = 0; k < 8; k++) bytes[k] = (unsigned char)(i >> k & 1);
        memcpy(&mask_bytes[i], bytes, 8);
    }
#endif
}

/* the float32 fast path, on AVX2 where the CPU has it */
static void fast32(int64_t len, const uint64_t *w64, float *z, unsigned char *slow)
{
#ifdef HAVE_AVX2_PATH
    if (use_avx2) {
        fast32_avx2(len, w64, z, slow);
        return;
    }
#endif
    fast32_portable(len, w64, z, slow);
}

/* The next candidate at or after *at with slow[t] set (-1 when none), eight
 * flags (0 or 1 each) at a time. */
static int64_t next_slow(const unsigned char *slow, int64_t len8, int64_t *at)
{
    for (int64_t g = *at & ~(int64_t)7; g < len8; g += 8) {
        uint64_t any;
        memcpy(&any, slow + g, 8);
        if (!any) continue;
        uint64_t m = 0; /* bit k = flag g + k, whatever the byte order */
        for (int k = 0; k < 8; k++) m |= (uint64_t)slow[g + k] << k;
        if (g < *at) m &= ~(uint64_t)0 << (*at - g);
        if (m) {
            const int64_t t = g + __builtin_ctzll(m);
            *at = t + 1;
            return t;
        }
    }
    return -1;
}

/* z[0..len) standard normals (float64 draws of the ziggurat) of block b; z has
 * room for NORMAL_BLOCK values, as len is rounded up to a multiple of 8 */
static void normal_block64(uint64_t key, int64_t b, int64_t len, double *z)
{
    uint64_t w[NORMAL_BLOCK];
    unsigned char slow[NORMAL_BLOCK];
    const int64_t len8 = (len + 7) & ~(int64_t)7;
    block_words(key, b, len8, w);
    fast64(len8, w, z, slow);
    pk_rng_t fb;
    pk_rng_seed(&fb, block_seed(key, b, LANES));
    int64_t t;
    for (int64_t at = 0; (t = next_slow(slow, len8, &at)) >= 0;) {
        const int i = (int)(w[t] & 255);
        if (i == 0) z[t] = zig_tail(&fb, ZIG_R, z[t]);
        else if (!(zig_f[i] + pk_rng_uniform(&fb) * (zig_f[i + 1] - zig_f[i]) < exp(-0.5 * z[t] * z[t])))
            z[t] = zig_sample(&fb); /* rejected: a whole new draw */
    }
}

/* z[0..len) standard normals (float32 draws of the ziggurat) of block b: each
 * 64-bit word gives two 32-bit candidates; z has room for NORMAL_BLOCK values */
static void normal_block32(uint64_t key, int64_t b, int64_t len, float *z)
{
    uint64_t w64[NORMAL_BLOCK / 2];
    unsigned char slow[NORMAL_BLOCK];
    const int64_t len8 = (len + 7) & ~(int64_t)7;
    block_words(key, b, len8 / 2, w64);
    fast32(len8, w64, z, slow);
    pk_rng_t fb;
    pk_rng_seed(&fb, block_seed(key, b, LANES));
    int64_t t;
    for (int64_t at = 0; (t = next_slow(slow, len8, &at)) >= 0;) {
        const uint32_t w = word32(w64, t);
        const float v = zig32_slow(&fb, (int)(w & 255), (int32_t)w >> 8);
        if (v == v) z[t] = v;
        else zig32_fill(&fb, 1, &z[t]); /* rejected: a whole new draw */
    }
}

typedef struct {
    uint64_t key;
    pk_dtype_t dtype;
    int64_t n, cols, ld;
    const void *mean, *scale;
    void *out;
} normal_job;

/* out[r, c] = mean[c] + scale[c] z, for the values of one block, row segment by segment */
#define NORMAL_SCATTER(T)                                                                     \
    do {                                                                                      \
        const T *mu = job->mean, *sc = job->scale;                                            \
        T *o = job->out;                                                                      \
        for (int64_t idx = lo; idx < hi;) {                                                   \
            const int64_t r = idx / job->cols, c0 = idx % job->cols;                          \
            const int64_t seg = job->cols - c0 < hi - idx ? job->cols - c0 : hi - idx;       \
            const T *zz = z + (idx - lo);                                                     \
            T *dst = o + r * job->ld + c0;                                                    \
            if (mu && sc)                                                                     \
                for (int64_t k = 0; k < seg; k++) dst[k] = mu[c0 + k] + sc[c0 + k] * zz[k]; \
            else if (sc)                                                                      \
                for (int64_t k = 0; k < seg; k++) dst[k] = sc[c0 + k] * zz[k];               \
            else if (mu)                                                                      \
                for (int64_t k = 0; k < seg; k++) dst[k] = mu[c0 + k] + zz[k];               \
            else                                                                              \
                memcpy(dst, zz, (size_t)seg * sizeof(T));                                     \
            idx += seg;                                                                       \
        }                                                                                     \
    } while (0)

static void normal_blocks(void *ctx, int64_t b0, int64_t b1)
{
    const normal_job *job = ctx;
    for (int64_t b = b0; b < b1; b++) {
        const int64_t lo = b * NORMAL_BLOCK;
        const int64_t hi = job->n - lo < NORMAL_BLOCK ? job->n : lo + NORMAL_BLOCK;
        if (job->dtype == PK_FLOAT64) {
            double z[NORMAL_BLOCK];
            normal_block64(job->key, b, hi - lo, z);
            NORMAL_SCATTER(double);
        } else {
            float z[NORMAL_BLOCK];
            normal_block32(job->key, b, hi - lo, z);
            NORMAL_SCATTER(float);
        }
    }
}

int pk_rng_fill_normal_affine(pk_rng_t *rng, pk_dtype_t dtype, int64_t rows, int64_t cols, const void *mean,
                              const void *scale, int64_t ld, void *out)
{
    if (!rng || rows < 0 || cols < 0 || ld < cols) return PK_ERR_BAD_ARG;
    if (dtype != PK_FLOAT64 && dtype != PK_FLOAT32) return PK_ERR_DTYPE;
    if (rows == 0 || cols == 0) return PK_OK;
    if (!out || rows > INT64_MAX / cols) return PK_ERR_BAD_ARG;
    pthread_once(&zig_once, zig_init_all);
    const normal_job job = {pk_rng_next(rng), dtype, rows * cols, cols, ld, mean, scale, out};
    const int64_t nblocks = (job.n + NORMAL_BLOCK - 1) / NORMAL_BLOCK;
    pk_parallel_for(nblocks, 32, normal_blocks, (void *)&job);
    return PK_OK;
}

int pk_rng_fill_normal(pk_rng_t *rng, pk_dtype_t dtype, int64_t n, void *out)
{
    if (!rng || n < 0 || (n > 0 && !out)) return PK_ERR_BAD_ARG;
    if (dtype != PK_FLOAT64 && dtype != PK_FLOAT32) return PK_ERR_DTYPE;
    return n ? pk_rng_fill_normal_affine(rng, dtype, 1, n, NULL, NULL, n, out) : PK_OK;
}

int pk_check_finite(pk_dtype_t dtype, int64_t n, const void *x)
{
    if (n < 0 || (n > 0 && !x)) return PK_ERR_BAD_ARG;
    int bad = 0;
    if (dtype == PK_FLOAT64) {
        const double *p = x;
        for (int64_t i = 0; i < n; i++) bad |= !isfinite(p[i]);
    } else if (dtype == PK_FLOAT32) {
        const float *p = x;
        for (int64_t i = 0; i < n; i++) bad |= !isfinite(p[i]);
    } else {
        return PK_ERR_DTYPE;
    }
    return bad ? PK_ERR_NONFINITE : PK_OK;
}

const char *pk_blas_source(void) { return PK_BLAS_SOURCE; }
const char *pk_blas_config(void) { return PK_BLAS(openblas_get_config)(); }
const char *pk_blas_corename(void) { return PK_BLAS(openblas_get_corename)(); }
int pk_blas_num_threads(void) { return PK_BLAS(openblas_get_num_threads)(); }
void pk_blas_set_num_threads(int n) { PK_BLAS(openblas_set_num_threads)(n); }

const char *pk_blas_library_path(void)
{
    Dl_info info;
    if (dladdr((void *)&PK_BLAS(cblas_dgemm), &info) && info.dli_fname) return info.dli_fname;
    return "";
}
