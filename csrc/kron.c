/* kron.c: Kronecker-factored curvature blocks of one dense layer (pk_kron.h).
 *
 * The maths lives in kron_impl.inc, compiled once per dtype; this file holds
 * the dtype-independent parts (argument checks, damped eigenvalues) and the
 * public entry points that dispatch on dtype. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "pk_kron.h"

/* Damping of one block, validated once. */
typedef struct {
    pk_damp_t mode;
    double scale, damping;
    double shift_g, shift_a; /* factored: gamma / pi and gamma * pi */
} damping_t;

static int damping_init(double scale, double damping, pk_damp_t mode, double pi, damping_t *dp)
{
    if (!isfinite(scale) || !isfinite(damping)) return PK_ERR_BAD_ARG;
    dp->mode = mode;
    dp->scale = scale;
    dp->damping = damping;
    dp->shift_g = dp->shift_a = 0.0;
    if (mode == PK_DAMP_EXACT) return PK_OK;
    if (mode != PK_DAMP_FACTORED) return PK_ERR_BAD_ARG;
    if (damping < 0.0 || !(pi > 0.0) || !isfinite(pi)) return PK_ERR_BAD_ARG;
    const double gamma = sqrt(damping);
    dp->shift_g = gamma / pi;
    dp->shift_a = gamma * pi;
    return PK_OK;
}

static inline double damped_value(const damping_t *dp, double lg, double la)
{
    if (dp->mode == PK_DAMP_EXACT) return dp->scale * lg * la + dp->damping;
    return (dp->scale * lg + dp->shift_g) * (la + dp->shift_a);
}

static int valid_power(double power)
{
    return power == 1.0 || power == -1.0 || power == 0.5 || power == -0.5;
}

/* *f = d^power for the damped eigenvalue d. A square root needs d >= 0, a
 * negative power d > 0. */
static int damped_power(const damping_t *dp, double lg, double la, double power, double *f)
{
    const double d = damped_value(dp, lg, la);
    if (power == 1.0) {
        *f = d;
        return PK_OK;
    }
    if (power == 0.5) {
        if (!(d >= 0.0)) return PK_ERR_SINGULAR;
        *f = sqrt(d);
        return PK_OK;
    }
    if (!(d > 0.0)) return PK_ERR_SINGULAR;
    *f = power == -1.0 ? 1.0 / d : 1.0 / sqrt(d);
    return PK_OK;
}

/* Sizes valid, and every GEMM dimension of the kernels fits a BLAS int. */
static int check_layer(int64_t out, int64_t in, int64_t m)
{
    if (out < 0 || in < 0 || m < 0) return PK_ERR_BAD_ARG;
    const int64_t q = in + 1;
    if (!pk_fits_blasint(out) || !pk_fits_blasint(q) || !pk_fits_blasint(m)) return PK_ERR_TOO_LARGE;
    if (!pk_fits_blasint(out * m) || !pk_fits_blasint(q * m)) return PK_ERR_TOO_LARGE;
    return PK_OK;
}

#define PK_REAL 64
#include "kron_impl.inc"
#undef PK_REAL
#define PK_REAL 32
#include "kron_impl.inc"
#undef PK_REAL

int pk_sym_eigh(pk_dtype_t dtype, int64_t n, const void *M, void *w, void *Q)
{
    switch (dtype) {
    case PK_FLOAT64: return sym_eigh_d(n, M, w, Q);
    case PK_FLOAT32: return sym_eigh_f(n, M, w, Q);
    default: return PK_ERR_DTYPE;
    }
}

int pk_kron_matvec(pk_dtype_t dtype, int64_t out, int64_t in, const void *G, const void *A,
                   int64_t m, const void *V, void *R)
{
    int rc = check_layer(out, in, m);
    if (rc != PK_OK) return rc;
    switch (dtype) {
    case PK_FLOAT64: return kron_matvec_d(out, in, G, A, m, V, R);
    case PK_FLOAT32: return kron_matvec_f(out, in, G, A, m, V, R);
    default: return PK_ERR_DTYPE;
    }
}

int pk_kron_eig_apply(pk_dtype_t dtype, int64_t out, int64_t in, const void *wG, const void *QG,
                      const void *wA, const void *QA, double scale, double damping,
                      pk_damp_t mode, double pi, double power, int64_t m, const void *V, void *R)
{
    damping_t dp;
    int rc = check_layer(out, in, m);
    if (rc != PK_OK) return rc;
    if (!valid_power(power)) return PK_ERR_BAD_ARG;
    rc = damping_init(scale, damping, mode, pi, &dp);
    if (rc != PK_OK) return rc;
    switch (dtype) {
    case PK_FLOAT64: return eig_apply_d(out, in, wG, QG, wA, QA, &dp, power, m, V, R);
    case PK_FLOAT32: return eig_apply_f(out, in, wG, QG, wA, QA, &dp, power, m, V, R);
    default: return PK_ERR_DTYPE;
    }
}

int pk_kron_basis_apply(pk_dtype_t dtype, int64_t out, int64_t in, const void *QG, const void *QA,
                        const void *F, int64_t m, const void *V, void *R)
{
    int rc = check_layer(out, in, m);
    if (rc != PK_OK) return rc;
    if (!QG || !QA || !F || (m > 0 && (!V || !R))) return PK_ERR_BAD_ARG;
    switch (dtype) {
    case PK_FLOAT64: return basis_apply_d(out, in, QG, QA, F, m, V, R);
    case PK_FLOAT32: return basis_apply_f(out, in, QG, QA, F, m, V, R);
    default: return PK_ERR_DTYPE;
    }
}

int pk_ekfac_scales(pk_dtype_t dtype, int64_t out, int64_t in, int64_t n, int64_t r, const void *QG,
                    const void *QA, const void *U, const void *A, void *S)
{
    int rc = check_layer(out, in, n);
    if (rc != PK_OK) return rc;
    if (r < 1) return PK_ERR_SHAPE;
    if (!pk_fits_blasint(r) || !pk_fits_blasint(n * r) || !pk_fits_blasint(n * (in + 1))) return PK_ERR_TOO_LARGE;
    if (!QG || !QA || !S || (n > 0 && (!U || !A))) return PK_ERR_BAD_ARG;
    switch (dtype) {
    case PK_FLOAT64: return ekfac_scales_d(out, in, n, r, QG, QA, U, A, S);
    case PK_FLOAT32: return ekfac_scales_f(out, in, n, r, QG, QA, U, A, S);
    default: return PK_ERR_DTYPE;
    }
}

int pk_kron_logdet(pk_dtype_t dtype, int64_t out, int64_t in, const void *wG, const void *wA,
                   double scale, double damping, pk_damp_t mode, double pi, double *logdet)
{
    damping_t dp;
    if (!logdet) return PK_ERR_BAD_ARG;
    int rc = check_layer(out, in, 0);
    if (rc != PK_OK) return rc;
    rc = damping_init(scale, damping, mode, pi, &dp);
    if (rc != PK_OK) return rc;
    switch (dtype) {
    case PK_FLOAT64: return logdet_d(out, in, wG, wA, &dp, logdet);
    case PK_FLOAT32: return logdet_f(out, in, wG, wA, &dp, logdet);
    default: return PK_ERR_DTYPE;
    }
}

int pk_kron_to_dense(pk_dtype_t dtype, int64_t out, int64_t in, const void *G, const void *A,
                     void *B, int64_t ldb)
{
    int rc = check_layer(out, in, 0);
    if (rc != PK_OK) return rc;
    if (ldb < out * (in + 1)) return PK_ERR_BAD_ARG;
    switch (dtype) {
    case PK_FLOAT64: return to_dense_d(out, in, G, A, B, ldb);
    case PK_FLOAT32: return to_dense_f(out, in, G, A, B, ldb);
    default: return PK_ERR_DTYPE;
    }
}
