/* pk_kron.h: Kronecker-factored curvature blocks of one dense layer.
 *
 * A layer with `out` outputs and `in` inputs has the augmented weight
 * Wbar = [W b] (out x q, q = in + 1). Its curvature block is approximated by
 * G (out x out) (x) A (q x q) in ROW-MAJOR vec order of Wbar, so that
 * (G (x) A) vec(X) = vec(G X A). Vectors passed to and returned by these
 * functions are in THETA order for the layer instead: the out*in entries of W
 * (row-major) followed by the out entries of b; p = out * q values per column,
 * stored as a (p x m) row-major matrix for m right-hand sides.
 *
 * Damped eigenvalues. With G = Q_G diag(lg) Q_G^T and A = Q_A diag(la) Q_A^T,
 * the damped block has eigenvectors Q_G (x) Q_A and eigenvalues
 *   PK_DAMP_EXACT:    scale * lg_i * la_j + damping
 *   PK_DAMP_FACTORED: (scale * lg_i + gamma / pi) * (la_j + gamma * pi), gamma = sqrt(damping)
 * (Martens & Grosse's factored Tikhonov damping; pi = 1 is Ritter et al.'s).
 * Factor eigenvalues below n * eps * max(w) (syevd's roundoff level, n the
 * factor's order) are taken as exactly 0 first, so the slightly negative
 * eigenvalues of a singular PSD factor never reach a log or a division.
 *
 * Common errors: PK_ERR_BAD_ARG (negative size, NULL pointer, unknown mode,
 * factored mode with damping < 0 or pi <= 0, non-finite scale/damping),
 * PK_ERR_DTYPE, PK_ERR_NOMEM, PK_ERR_TOO_LARGE (out*m or q*m above INT_MAX).
 * Scratch: about 2 p m values for the products, none for the log-det; the
 * products read all of V before writing R, so R may be V (in place).
 *
 * Example: one damped natural-gradient step for a 784 -> 512 layer.
 *
 *     // G: 512 x 512, A: 785 x 785, grad/step: p = 512 * 785 values, theta order
 *     int rc = pk_sym_eigh(PK_FLOAT64, 512, G, wG, QG);
 *     if (!rc) rc = pk_sym_eigh(PK_FLOAT64, 785, A, wA, QA);
 *     if (!rc) rc = pk_kron_eig_apply(PK_FLOAT64, 512, 784, wG, QG, wA, QA, 1.0, 1e-3,
 *                                     PK_DAMP_EXACT, 1.0, -1.0, 1, grad, step);
 *     if (rc) fprintf(stderr, "%s\n", pk_strerror(rc)); */
#ifndef PK_KRON_H
#define PK_KRON_H

#include "pk_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { PK_DAMP_EXACT = 0, PK_DAMP_FACTORED = 1 } pk_damp_t;

/* Symmetric eigendecomposition M = Q diag(w) Q^T (LAPACK syevd, ascending w).
 * M (n x n) is read only (its lower triangle, row-major); w (n) and Q (n x n)
 * row-major, with the eigenvectors as COLUMNS, are written.
 * Errors: PK_ERR_NONFINITE (NaN/Inf in M, checked before LAPACK sees it),
 * PK_ERR_EIG_FAILED, PK_ERR_NOMEM, PK_ERR_TOO_LARGE (2 n^2 above INT_MAX). */
int pk_sym_eigh(pk_dtype_t dtype, int64_t n, const void *M, void *w, void *Q) PK_MUST_CHECK;

/* R (p x m) = (G (x) A) V, V (p x m), theta order; G (out x out), A (q x q).
 * Exact for any G, A (symmetry is not assumed): two GEMMs for all m columns. */
int pk_kron_matvec(pk_dtype_t dtype, int64_t out, int64_t in, const void *G, const void *A,
                   int64_t m, const void *V, void *R) PK_MUST_CHECK;

/* R (p x m) = (damped block)^power V for power in {1, -1, 0.5, -0.5}, from the
 * eigendecompositions (wG (out), QG (out x out)) of G and (wA (q), QA (q x q))
 * of A as pk_sym_eigh returns them: Q (D^power o (Q^T V)) with Q = QG (x) QA.
 * Errors: PK_ERR_SINGULAR when power < 0 and a damped eigenvalue is <= 0
 * (0 damping on a singular factor), or power = 0.5 and one is < 0 (checked for
 * every eigenvalue, even when m = 0); PK_ERR_BAD_ARG for another power. */
int pk_kron_eig_apply(pk_dtype_t dtype, int64_t out, int64_t in, const void *wG, const void *QG,
                      const void *wA, const void *QA, double scale, double damping,
                      pk_damp_t mode, double pi, double power, int64_t m, const void *V,
                      void *R) PK_MUST_CHECK;

/* R (p x m) = (QG (x) QA) diag(vec F) (QG (x) QA)^T V, theta order, for any F
 * (out x q, row-major): e.g. EKFAC's eigenvalues raised to a power by the caller.
 * Four GEMMs for all m columns. */
int pk_kron_basis_apply(pk_dtype_t dtype, int64_t out, int64_t in, const void *QG, const void *QA,
                        const void *F, int64_t m, const void *V, void *R) PK_MUST_CHECK;

/* S (out x q) = sum_n sum_c (QG^T u_nc)^2 ((QA^T abar_n)^2)^T with abar_n = [a_n; 1]:
 * the diagonal of sum_n sum_c (u_nc u_nc^T) (x) (abar_n abar_n^T) in the basis
 * QG (x) QA (EKFAC's eigenvalue correction, George et al. 2018). U (n x r x out):
 * r output-gradient columns per sample; A (n x in) the layer inputs. */
int pk_ekfac_scales(pk_dtype_t dtype, int64_t out, int64_t in, int64_t n, int64_t r, const void *QG,
                    const void *QA, const void *U, const void *A, void *S) PK_MUST_CHECK;

/* *logdet = sum_ij log(damped eigenvalue_ij). PK_ERR_SINGULAR if one is <= 0. */
int pk_kron_logdet(pk_dtype_t dtype, int64_t out, int64_t in, const void *wG, const void *wA,
                   double scale, double damping, pk_damp_t mode, double pi,
                   double *logdet) PK_MUST_CHECK;

/* B (p x p, leading dimension ldb >= p) = G (x) A in theta order. Only that
 * p x p block of B is written, so a caller can fill the diagonal blocks of a
 * larger zeroed matrix in place (B = &big[off * ld + off], ldb = ld). */
int pk_kron_to_dense(pk_dtype_t dtype, int64_t out, int64_t in, const void *G, const void *A,
                     void *B, int64_t ldb) PK_MUST_CHECK;

#ifdef __cplusplus
}
#endif
#endif
