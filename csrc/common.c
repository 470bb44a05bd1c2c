/* common.c: status messages, RNG, finiteness checks, BLAS build information. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>

#include "blas.h"
#include "pk_common.h"

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
 * a 128-layer ziggurat (7 layer bits, a 25-bit signed integer j); the common
 * case is one integer comparison, |j| < k_i  <=>  |z| < x_{i+1} (k_i rounded
 * down, so the rare boundary case goes the exact slow way). 24 random bits
 * per value, as many as a float holds. */
#define ZIG32_R 3.442619855899
#define ZIG32_V 9.91256303526217e-3
static double zig32_x[129], zig32_f[129];
static float zig32_w[128];
static uint32_t zig32_k[128];

static void zig32_init(void)
{
    zig_tables(128, ZIG32_R, ZIG32_V, zig32_x, zig32_f);
    for (int i = 0; i < 128; i++) {
        zig32_w[i] = (float)(zig32_x[i] * 0x1.0p-24);
        zig32_k[i] = (uint32_t)floor(zig32_x[i + 1] / zig32_x[i] * 0x1.0p24);
    }
}

static float zig32_slow(pk_rng_t *rng, int i, int32_t j)
{
    const double z = (double)j * zig32_x[i] * 0x1.0p-24;
    if (fabs(z) < zig32_x[i + 1]) return (float)z; /* k_i was rounded down */
    if (i == 0) return (float)zig_tail(rng, ZIG32_R, z);
    if (zig32_f[i] + pk_rng_uniform(rng) * (zig32_f[i + 1] - zig32_f[i]) < exp(-0.5 * z * z)) return (float)z;
    return NAN; /* rejected: the caller draws again */
}

static void zig32_fill(pk_rng_t *rng, int64_t n, float *o)
{
    int64_t t = 0;
    while (t < n) {
        const uint64_t bits = pk_rng_next(rng);
        for (int h = 0; h < 2 && t < n; h++) {
            const uint32_t w = (uint32_t)(bits >> (32 * h));
            const int i = (int)(w & 127);
            const int32_t j = (int32_t)w >> 7;
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
}

double pk_rng_normal(pk_rng_t *rng)
{
    pthread_once(&zig_once, zig_init_all);
    return zig_sample(rng);
}

int pk_rng_fill_normal(pk_rng_t *rng, pk_dtype_t dtype, int64_t n, void *out)
{
    if (!rng || n < 0 || (n > 0 && !out)) return PK_ERR_BAD_ARG;
    if (dtype == PK_FLOAT64) {
        double *o = out;
        pthread_once(&zig_once, zig_init_all);
        for (int64_t i = 0; i < n; i++) o[i] = zig_sample(rng);
    } else if (dtype == PK_FLOAT32) {
        float *o = out;
        pthread_once(&zig_once, zig_init_all);
        zig32_fill(rng, n, o);
    } else {
        return PK_ERR_DTYPE;
    }
    return PK_OK;
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
