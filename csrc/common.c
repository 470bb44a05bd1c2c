/* common.c: status messages, RNG, finiteness checks, BLAS build information. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>

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

double pk_rng_normal(pk_rng_t *rng)
{
    double u, v, r2;
    do {
        u = 2.0 * pk_rng_uniform(rng) - 1.0;
        v = 2.0 * pk_rng_uniform(rng) - 1.0;
        r2 = u * u + v * v;
    } while (r2 >= 1.0 || r2 == 0.0);
    return u * sqrt(-2.0 * log(r2) / r2);
}

int pk_rng_fill_normal(pk_rng_t *rng, pk_dtype_t dtype, int64_t n, void *out)
{
    if (!rng || n < 0 || (n > 0 && !out)) return PK_ERR_BAD_ARG;
    if (dtype == PK_FLOAT64) {
        double *o = out;
        for (int64_t i = 0; i < n; i++) o[i] = pk_rng_normal(rng);
    } else if (dtype == PK_FLOAT32) {
        float *o = out;
        for (int64_t i = 0; i < n; i++) o[i] = (float)pk_rng_normal(rng);
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

const char *pk_blas_library_path(void)
{
    Dl_info info;
    if (dladdr((void *)&PK_BLAS(cblas_dgemm), &info) && info.dli_fname) return info.dli_fname;
    return "";
}
