/* linalg.c: framework-agnostic linear algebra for Laplace (pk_linalg.h).
 *
 * The maths lives in linalg_impl.inc, compiled once per dtype; this file holds
 * the argument checks and the public entry points that dispatch on dtype. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "pk_kron.h"
#include "pk_linalg.h"
#include "util.h"

/* Scratch budget of the chunked loops, in elements. */
#define PK_LA_CHUNK ((int64_t)1 << 22)

#define PK_REAL 64
#include "linalg_impl.inc"
#undef PK_REAL
#define PK_REAL 32
#include "linalg_impl.inc"
#undef PK_REAL

/* Every size non-negative and within the BLAS integer range. */
static int check_dims(int count, const int64_t *dims)
{
    for (int i = 0; i < count; i++) {
        if (dims[i] < 0) return PK_ERR_BAD_ARG;
        if (!pk_fits_blasint(dims[i])) return PK_ERR_TOO_LARGE;
    }
    return PK_OK;
}

#define CHECK_DIMS(...)                                                                       \
    do {                                                                                      \
        const int64_t dims_[] = {__VA_ARGS__};                                                \
        int rc_ = check_dims((int)(sizeof dims_ / sizeof dims_[0]), dims_);                   \
        if (rc_ != PK_OK) return rc_;                                                         \
    } while (0)

static int check_dtype(pk_dtype_t dtype)
{
    return (dtype == PK_FLOAT32 || dtype == PK_FLOAT64) ? PK_OK : PK_ERR_DTYPE;
}

/* alpha: 1 or D finite values > 0. */
static int check_alpha(int64_t D, int64_t n_alpha, const double *alpha)
{
    if (!alpha || !(n_alpha == 1 || n_alpha == D)) return PK_ERR_BAD_ARG;
    for (int64_t i = 0; i < n_alpha; i++)
        if (!(alpha[i] > 0.0) || !isfinite(alpha[i])) return PK_ERR_BAD_ARG;
    return PK_OK;
}

static int check_woodbury(pk_dtype_t dtype, int64_t D, int64_t M, int64_t n_alpha,
                          const double *alpha, const void *U)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(D, M);
    if (D * M > 0 && !U) return PK_ERR_BAD_ARG;
    if (D == 0) return PK_OK;
    return check_alpha(D, n_alpha, alpha);
}

#define DISPATCH(call_d, call_f) (dtype == PK_FLOAT64 ? (call_d) : (call_f))

int pk_ggn_from_jacobians(pk_dtype_t dtype, int64_t n, int64_t K, int64_t D, const void *J,
                          const void *lam, void *G)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(n, K, D, n * K, K * D);
    if (!G || (n * K * D > 0 && !J)) return PK_ERR_BAD_ARG;
    return DISPATCH(ggn_from_jacobians_d(n, K, D, J, lam, G),
                    ggn_from_jacobians_f(n, K, D, J, lam, G));
}

int pk_ggn_linear(pk_dtype_t dtype, int64_t n, int64_t K, int64_t h, const void *Phi,
                  const void *lam, void *G)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(n, K, h, h + 1, K * (h + 1));
    if (K * (h + 1) == 0) return PK_OK;
    if (!G || (n > 0 && (!lam || (h > 0 && !Phi)))) return PK_ERR_BAD_ARG;
    return DISPATCH(ggn_linear_d(n, K, h, Phi, lam, G), ggn_linear_f(n, K, h, Phi, lam, G));
}

int pk_ggn_factor(pk_dtype_t dtype, int64_t n, int64_t K, int64_t D, const void *J,
                  const void *S, void *U)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(n, K, D, n * K);
    if (n * K * D == 0) return PK_OK;
    if (!J || !S || !U) return PK_ERR_BAD_ARG;
    return DISPATCH(ggn_factor_d(n, K, D, J, S, U), ggn_factor_f(n, K, D, J, S, U));
}

int pk_psd_sqrt_batched(pk_dtype_t dtype, int64_t n, int64_t K, const void *lam, void *S)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(n, K, K * K);
    if (n * K > 0 && (!lam || !S)) return PK_ERR_BAD_ARG;
    return DISPATCH(psd_sqrt_batched_d(n, K, lam, S), psd_sqrt_batched_f(n, K, lam, S));
}

int pk_batched_gram(pk_dtype_t dtype, int64_t N, int64_t K, int64_t D, const void *J,
                    const void *R, void *out)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(N, K, D, N * K);
    if (N * K == 0) return PK_OK;
    if (!out || (D > 0 && (!J || !R))) return PK_ERR_BAD_ARG;
    DISPATCH((batched_gram_d(N, K, D, J, R, out), 0), (batched_gram_f(N, K, D, J, R, out), 0));
    return PK_OK;
}

int pk_diag_quad(pk_dtype_t dtype, int64_t N, int64_t K, int64_t D, const void *J,
                 const double *w, void *out)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(N, K, D);
    if (N * K == 0) return PK_OK;
    if (!out || (D > 0 && (!J || !w))) return PK_ERR_BAD_ARG;
    return DISPATCH(diag_quad_d(N, K, D, J, w, out), diag_quad_f(N, K, D, J, w, out));
}

int pk_woodbury_logdet(pk_dtype_t dtype, int64_t D, int64_t M, int64_t n_alpha,
                       const double *alpha, const void *U, double *logdet)
{
    int rc = check_woodbury(dtype, D, M, n_alpha, alpha, U);
    if (rc != PK_OK) return rc;
    if (!logdet) return PK_ERR_BAD_ARG;
    if (D == 0) {
        *logdet = 0.0;
        return PK_OK;
    }
    return DISPATCH(woodbury_logdet_d(D, M, n_alpha, alpha, U, logdet),
                    woodbury_logdet_f(D, M, n_alpha, alpha, U, logdet));
}

int pk_woodbury_solve(pk_dtype_t dtype, int64_t D, int64_t M, int64_t n_alpha,
                      const double *alpha, const void *U, int64_t m, const void *V, void *R)
{
    int rc = check_woodbury(dtype, D, M, n_alpha, alpha, U);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(m);
    if (D * m == 0) return PK_OK;
    if (!V || !R) return PK_ERR_BAD_ARG;
    return DISPATCH(woodbury_solve_d(D, M, n_alpha, alpha, U, m, V, R),
                    woodbury_solve_f(D, M, n_alpha, alpha, U, m, V, R));
}

int pk_woodbury_inverse(pk_dtype_t dtype, int64_t D, int64_t M, int64_t n_alpha,
                        const double *alpha, const void *U, void *Pinv)
{
    int rc = check_woodbury(dtype, D, M, n_alpha, alpha, U);
    if (rc != PK_OK) return rc;
    if (D == 0) return PK_OK;
    if (!Pinv) return PK_ERR_BAD_ARG;
    return DISPATCH(woodbury_inverse_d(D, M, n_alpha, alpha, U, Pinv),
                    woodbury_inverse_f(D, M, n_alpha, alpha, U, Pinv));
}

int pk_woodbury_diag_inverse(pk_dtype_t dtype, int64_t D, int64_t M, int64_t n_alpha,
                             const double *alpha, const void *U, void *d)
{
    int rc = check_woodbury(dtype, D, M, n_alpha, alpha, U);
    if (rc != PK_OK) return rc;
    if (D == 0) return PK_OK;
    if (!d) return PK_ERR_BAD_ARG;
    return DISPATCH(woodbury_diag_inverse_d(D, M, n_alpha, alpha, U, d),
                    woodbury_diag_inverse_f(D, M, n_alpha, alpha, U, d));
}

int pk_woodbury_sample(pk_dtype_t dtype, int64_t D, int64_t M, int64_t n_alpha,
                       const double *alpha, const void *U, int64_t n, pk_rng_t *rng, void *out)
{
    int rc = check_woodbury(dtype, D, M, n_alpha, alpha, U);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(n);
    if (D * n == 0) return PK_OK;
    if (!rng || !out) return PK_ERR_BAD_ARG;
    return DISPATCH(woodbury_sample_d(D, M, n_alpha, alpha, U, n, rng, out),
                    woodbury_sample_f(D, M, n_alpha, alpha, U, n, rng, out));
}

int pk_lowrank_eigh(pk_dtype_t dtype, int64_t D, int64_t M, const void *U, void *s, void *Q,
                    int64_t *rank)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(D, M);
    if (!rank || (M > 0 && (!s || !Q)) || (D * M > 0 && !U)) return PK_ERR_BAD_ARG;
    return DISPATCH(lowrank_eigh_d(D, M, U, s, Q, rank), lowrank_eigh_f(D, M, U, s, Q, rank));
}

int pk_lowrank_eigh_layers(pk_dtype_t dtype, int L, const int64_t *sizes, int64_t N, int64_t Kp,
                           const void *const *U, const void *const *A, int64_t max_rank, void *s, void *Q,
                           void *C, int64_t *rank)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    if (L < 1 || L > 64 || !sizes || !U || !A || !rank || max_rank < 1) return PK_ERR_BAD_ARG;
    CHECK_DIMS(N, Kp, N * Kp);
    int64_t D = 0;
    for (int l = 0; l <= L; l++) {
        CHECK_DIMS(sizes[l]);
        if (l < L) {
            CHECK_DIMS(N * Kp * sizes[l + 1], N * sizes[l], sizes[l + 1] * (sizes[l] + 1));
            D += sizes[l + 1] * (sizes[l] + 1);
            if (N * Kp * sizes[l + 1] > 0 && !U[l]) return PK_ERR_BAD_ARG;
            if (N * sizes[l] > 0 && !A[l]) return PK_ERR_BAD_ARG;
        }
    }
    const int64_t M = N * Kp, rcap = max_rank < M ? max_rank : M;
    CHECK_DIMS(D, D * rcap, M * M);
    if (M > 0 && (!s || (D > 0 && !Q))) return PK_ERR_BAD_ARG;
    return DISPATCH(lowrank_eigh_layers_d(L, sizes, N, Kp, (const double *const *)U, (const double *const *)A,
                                          max_rank, s, Q, C, rank),
                    lowrank_eigh_layers_f(L, sizes, N, Kp, (const float *const *)U, (const float *const *)A,
                                          max_rank, s, Q, C, rank));
}

int pk_lowrank_jq_layers(pk_dtype_t dtype, int L, const int64_t *sizes, int64_t Nx, int64_t K,
                         const void *const *Gx, const void *const *Axb, int64_t N, int64_t Kp,
                         const void *const *U, const void *const *A, const double *w, int64_t r, const void *C,
                         void *out)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    if (L < 1 || L > 64 || !sizes || !Gx || !Axb || !U || !A) return PK_ERR_BAD_ARG;
    CHECK_DIMS(Nx, K, N, Kp, r, N * Kp, Nx * K * r, (N * Kp) * r);
    for (int l = 0; l < L; l++) {
        CHECK_DIMS(sizes[l], sizes[l + 1], Nx * K * sizes[l + 1], Nx * (sizes[l] + 1), N * Kp * sizes[l + 1],
                   N * sizes[l]);
        if ((Nx * K * sizes[l + 1] > 0 && !Gx[l]) || (Nx > 0 && !Axb[l]) ||
            (N * Kp * sizes[l + 1] > 0 && !U[l]) || (N * sizes[l] > 0 && !A[l]))
            return PK_ERR_BAD_ARG;
        if (w && !isfinite(w[l])) return PK_ERR_BAD_ARG;
    }
    if (Nx * K * r > 0 && (!out || (N * Kp > 0 && !C))) return PK_ERR_BAD_ARG;
    return DISPATCH(lowrank_jq_layers_d(L, sizes, Nx, K, (const double *const *)Gx, (const double *const *)Axb, N,
                                        Kp, (const double *const *)U, (const double *const *)A, w, r, C, out),
                    lowrank_jq_layers_f(L, sizes, Nx, K, (const float *const *)Gx, (const float *const *)Axb, N,
                                        Kp, (const float *const *)U, (const float *const *)A, w, r, C, out));
}

int pk_lowrank_apply(pk_dtype_t dtype, int64_t D, int64_t r, const void *Q, double a0,
                     const double *d, int64_t m, const void *V, void *R)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(D, r, m);
    if (!isfinite(a0)) return PK_ERR_BAD_ARG;
    if (D * m == 0) return PK_OK;
    if (!V || !R || (r > 0 && (!Q || !d))) return PK_ERR_BAD_ARG;
    for (int64_t i = 0; i < r; i++)
        if (!isfinite(d[i])) return PK_ERR_BAD_ARG;
    return DISPATCH(lowrank_apply_d(D, r, Q, a0, d, m, V, R),
                    lowrank_apply_f(D, r, Q, a0, d, m, V, R));
}

int pk_lowrank_quad(pk_dtype_t dtype, int64_t N, int64_t K, int64_t D, int64_t r, const void *J,
                    const void *Q, double a0, const double *d, void *out)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(N, K, D, r, N * K);
    if (!isfinite(a0)) return PK_ERR_BAD_ARG;
    if (N * K == 0) return PK_OK;
    if (!out || (D > 0 && !J) || (r > 0 && (!Q || !d))) return PK_ERR_BAD_ARG;
    return DISPATCH(lowrank_quad_d(N, K, D, r, J, Q, a0, d, out),
                    lowrank_quad_f(N, K, D, r, J, Q, a0, d, out));
}

int pk_sym_eigvals(pk_dtype_t dtype, int64_t n, const void *M, void *w)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(n, 2 * n + 1);
    if (n > 0 && (!M || !w)) return PK_ERR_BAD_ARG;
    return DISPATCH(sym_eigvals_d(n, M, w), sym_eigvals_f(n, M, w));
}

int pk_chol(pk_dtype_t dtype, int64_t n, const void *A, void *L)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(n);
    if (n > 0 && (!A || !L)) return PK_ERR_BAD_ARG;
    return DISPATCH(chol_d(n, A, L), chol_f(n, A, L));
}

int pk_chol_solve(pk_dtype_t dtype, int64_t n, const void *L, int64_t m, const void *B, void *X)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(n, m);
    if (n * m > 0 && (!L || !B || !X)) return PK_ERR_BAD_ARG;
    return DISPATCH(chol_solve_d(n, L, m, B, X), chol_solve_f(n, L, m, B, X));
}

int pk_chol_inverse(pk_dtype_t dtype, int64_t n, const void *L, void *Ainv)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(n);
    if (n > 0 && (!L || !Ainv)) return PK_ERR_BAD_ARG;
    return DISPATCH(chol_inverse_d(n, L, Ainv), chol_inverse_f(n, L, Ainv));
}

int pk_chol_logdet(pk_dtype_t dtype, int64_t n, const void *L, double *logdet)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(n);
    if (!logdet || (n > 0 && !L)) return PK_ERR_BAD_ARG;
    return DISPATCH(chol_logdet_d(n, L, logdet), chol_logdet_f(n, L, logdet));
}

int pk_chol_sample(pk_dtype_t dtype, int64_t n, const void *L, int64_t m, const void *Z, void *X)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(n, m);
    if (n * m > 0 && (!L || !Z || !X)) return PK_ERR_BAD_ARG;
    return DISPATCH(chol_sample_d(n, L, m, Z, X), chol_sample_f(n, L, m, Z, X));
}

int pk_kron_eigh(pk_dtype_t dtype, int64_t nG, int64_t nA, const void *G, const void *A,
                 void *wG, void *QG, void *wA, void *QA)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(nG, nA);
    rc = pk_sym_eigh(dtype, nG, G, wG, QG);
    if (rc == PK_OK) rc = pk_sym_eigh(dtype, nA, A, wA, QA);
    return rc;
}

int pk_kron_spectral_apply(pk_dtype_t dtype, int64_t nG, int64_t nA, const void *wG,
                           const void *QG, const void *wA, const void *QA, double scale,
                           double damping, double power, int64_t m, const void *X, void *R)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(nG, nA, m, nG * nA);
    if (!isfinite(scale) || !isfinite(damping)) return PK_ERR_BAD_ARG;
    if (!(power == 1.0 || power == -1.0 || power == 0.5 || power == -0.5)) return PK_ERR_BAD_ARG;
    if (nG * nA == 0) return PK_OK;
    if (!wG || !QG || !wA || !QA || (m > 0 && (!X || !R))) return PK_ERR_BAD_ARG;
    return DISPATCH(kron_spectral_apply_d(nG, nA, wG, QG, wA, QA, scale, damping, power, m, X, R),
                    kron_spectral_apply_f(nG, nA, wG, QG, wA, QA, scale, damping, power, m, X, R));
}

int pk_kron_sample(pk_dtype_t dtype, int64_t nG, int64_t nA, const void *wG, const void *QG,
                   const void *wA, const void *QA, double scale, double damping, int factored,
                   int64_t m, pk_rng_t *rng, int64_t ld, void *out)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(nG, nA, m, ld, m * ld, nG * nA);
    if (!isfinite(scale) || !isfinite(damping) || (factored && damping < 0.0)) return PK_ERR_BAD_ARG;
    if (nG * nA == 0 || m == 0) return PK_OK;
    if (nA < 1 || ld < nG * nA || !wG || !QG || !wA || !QA || !rng || !out) return PK_ERR_BAD_ARG;
    return DISPATCH(kron_sample_d(nG, nA, wG, QG, wA, QA, scale, damping, factored, m, rng, ld, out),
                    kron_sample_f(nG, nA, wG, QG, wA, QA, scale, damping, factored, m, rng, ld, out));
}

int pk_kron_inv_quad(pk_dtype_t dtype, int64_t nG, int64_t nA, const void *wG, const void *QG,
                     const void *wA, const void *QA, double scale, double damping, int factored,
                     int64_t N, int64_t K, const void *Gv, const void *Av, void *out)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(nG, nA, N, K, N * K, N * nA, N * K * nG);
    if (!isfinite(scale) || !isfinite(damping) || (factored && damping < 0.0)) return PK_ERR_BAD_ARG;
    if (N * K == 0 || nG * nA == 0) return PK_OK;
    if (!wG || !QG || !wA || !QA || !Gv || !Av || !out) return PK_ERR_BAD_ARG;
    return DISPATCH(kron_inv_quad_d(nG, nA, wG, QG, wA, QA, scale, damping, factored, N, K, Gv, Av, out),
                    kron_inv_quad_f(nG, nA, wG, QG, wA, QA, scale, damping, factored, N, K, Gv, Av, out));
}

int pk_diag_inv_quad(pk_dtype_t dtype, int64_t nG, int64_t nA, const void *F, int64_t N, int64_t K,
                     const void *Gv, const void *Av, void *out)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(nG, nA, N, K, N * K, N * nA, N * K * nG);
    if (N * K == 0 || nG * nA == 0) return PK_OK;
    if (!F || !Gv || !Av || !out) return PK_ERR_BAD_ARG;
    return DISPATCH(diag_inv_quad_d(nG, nA, F, N, K, Gv, Av, out),
                    diag_inv_quad_f(nG, nA, F, N, K, Gv, Av, out));
}

int pk_linear_cov_quad(pk_dtype_t dtype, int64_t nG, int64_t nA, const void *S, int64_t N,
                       const void *Av, void *out)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(nG, nA, N, nG * nA, nG * nG * nA, N * nG * nG);
    if (N == 0 || nG == 0) return PK_OK;
    if (nA < 1 || !S || !Av || !out) return PK_ERR_BAD_ARG;
    return DISPATCH(linear_cov_quad_d(nG, nA, S, N, Av, out), linear_cov_quad_f(nG, nA, S, N, Av, out));
}

int pk_matrix_normal_sample(pk_dtype_t dtype, int64_t r, int64_t c, const void *M,
                            const void *LU, const void *LV, int64_t n, pk_rng_t *rng, void *out)
{
    int rc = check_dtype(dtype);
    if (rc != PK_OK) return rc;
    CHECK_DIMS(r, c, n, r * c);
    if (r * c * n == 0) return PK_OK;
    if (!LU || !LV || !rng || !out) return PK_ERR_BAD_ARG;
    return DISPATCH(matrix_normal_sample_d(r, c, M, LU, LV, n, rng, out),
                    matrix_normal_sample_f(r, c, M, LU, LV, n, rng, out));
}
