/* pk_common.h: status codes, dtypes, the explicit random-number state and the
 * BLAS/LAPACK build information shared by every part of the pykfac C core.
 * Included by pykfac.h; see there for the overview. */
#ifndef PK_COMMON_H
#define PK_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define PK_MUST_CHECK __attribute__((warn_unused_result))
#else
#define PK_MUST_CHECK
#endif

/* Every fallible function returns PK_OK (0) or one of these negative codes. */
enum {
    PK_OK = 0,
    PK_ERR_BAD_ARG = -1,       /* invalid argument or LAPACK info < 0 (a pykfac bug) */
    PK_ERR_NOMEM = -2,         /* allocation failed */
    PK_ERR_SHAPE = -3,         /* inconsistent sizes */
    PK_ERR_NONFINITE = -4,     /* NaN or Inf in an input */
    PK_ERR_LABEL = -5,         /* label out of range for the loss */
    PK_ERR_NOT_PD = -6,        /* matrix not positive definite (Cholesky info > 0) */
    PK_ERR_EIG_FAILED = -7,    /* eigensolver did not converge (syevd info > 0) */
    PK_ERR_SINGULAR = -8,      /* damped matrix singular: an eigenvalue + damping <= 0 */
    PK_ERR_TOO_LARGE = -9,     /* a dimension exceeds the 32-bit BLAS interface */
    PK_ERR_EMPTY = -10,        /* empty batch where data are required */
    PK_ERR_DTYPE = -11,        /* unsupported dtype code */
    PK_ERR_LOSS = -12,         /* unsupported loss, or loss incompatible with the output width */
};
#define PK_ERR_MIN (-12)

/* A static message for every code (never NULL). */
const char *pk_strerror(int code);

typedef enum { PK_FLOAT32 = 0, PK_FLOAT64 = 1 } pk_dtype_t;

/* Size in bytes of one element of dtype, 0 for an unknown code. */
size_t pk_dtype_size(pk_dtype_t dtype);

/* ---- random numbers ------------------------------------------------------
 * xoshiro256** seeded through splitmix64. No hidden global state: every
 * function that samples takes the caller's pk_rng_t, so results are
 * reproducible from the seed and threads never share a stream. */
typedef struct {
    uint64_t s[4];
} pk_rng_t;

void pk_rng_seed(pk_rng_t *rng, uint64_t seed);
uint64_t pk_rng_next(pk_rng_t *rng);
double pk_rng_uniform(pk_rng_t *rng);   /* in [0, 1) with 53 random bits */
double pk_rng_normal(pk_rng_t *rng);    /* standard normal (ziggurat, exact up to rounding) */

/* Fill out[0..n) with standard normals in the given dtype. A fill takes one
 * word from rng as the key of counter-based streams, one per block of 2048
 * values, and runs the blocks on pykfac's threads (as many as its BLAS has):
 * the values depend on the seed only, never on the thread count. */
int pk_rng_fill_normal(pk_rng_t *rng, pk_dtype_t dtype, int64_t n, void *out) PK_MUST_CHECK;

/* out[r * ld + c] = mean[c] + scale[c] * z[r, c] for r < rows, c < cols, where
 * z are the normals pk_rng_fill_normal would give for rows * cols values;
 * mean and scale (cols values each, in dtype) may be NULL for 0 and 1. */
int pk_rng_fill_normal_affine(pk_rng_t *rng, pk_dtype_t dtype, int64_t rows, int64_t cols, const void *mean,
                              const void *scale, int64_t ld, void *out) PK_MUST_CHECK;

/* ---- validation helpers --------------------------------------------------- */
/* PK_OK if the n values are finite, PK_ERR_NONFINITE otherwise. */
int pk_check_finite(pk_dtype_t dtype, int64_t n, const void *x) PK_MUST_CHECK;

/* ---- build information ---------------------------------------------------- */
/* Which BLAS pykfac was linked against (set at build time). */
const char *pk_blas_source(void);
/* OpenBLAS's own configuration string and core name, and its thread count. */
const char *pk_blas_config(void);
const char *pk_blas_corename(void);
int pk_blas_num_threads(void);
/* Threads of the BLAS this library calls (not NumPy's own copy); n >= 1. The
 * C core's own parallel loops use the same number. */
void pk_blas_set_num_threads(int n);
/* Path of the shared object that provides dgemm, via dladdr ("" if unknown). */
const char *pk_blas_library_path(void);

#ifdef __cplusplus
}
#endif
#endif
