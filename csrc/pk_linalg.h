/* pk_linalg.h: framework-agnostic dense linear algebra for Laplace approximations.
 *
 * Everything here works on plain arrays (no network): a user whose model lives
 * in JAX or PyTorch passes Jacobians, output Hessians or Kronecker factors and
 * gets GGNs, Woodbury inverses/log-dets/samples, Kronecker eigen-solves and
 * matrix-normal samples. pykfac's Laplace (pykfac/laplace.py) is built on the
 * same functions.
 *
 * Conventions. Matrices are row-major and C-contiguous, float (PK_FLOAT32) or
 * double (PK_FLOAT64) as `dtype` says; scalars that parametrise a matrix
 * (alpha, scale, damping, eigenvalue weights) are double. "Cholesky factor"
 * always means the LOWER factor L of A = L L^T, stored row-major with zeros
 * above the diagonal. Log-determinants are accumulated in double. Outputs are
 * allocated by the caller; scratch is allocated here and stated per function.
 *
 * Low rank plus diagonal (Woodbury). With U (D x M) and a > 0 (one value, or
 * D values) the precision
 *     P = diag(a) + U U^T
 * is handled through the M x M capacitance C = I + U~^T U~, U~ = diag(a)^-1/2 U:
 *     P^-1     = diag(a)^-1/2 (I - U~ C^-1 U~^T) diag(a)^-1/2,
 *     log|P|   = sum log a + log|C|,
 * which for a scalar a = alpha is (1/alpha)[I - U (alpha I + U^T U)^-1 U^T]
 * (CONVENTIONS.md). C = L_C L_C^T by Cholesky; cost O(M^2 D + M^3) plus
 * O(D M m) for m right-hand sides, and never a D x D matrix except in
 * pk_woodbury_inverse, which returns it.
 *
 * Common errors: PK_ERR_BAD_ARG (NULL pointer, negative size, a <= 0 or not
 * finite, n_alpha not 1 or D), PK_ERR_DTYPE, PK_ERR_NOMEM, PK_ERR_TOO_LARGE
 * (a dimension above the 32-bit BLAS interface), PK_ERR_NONFINITE (NaN/Inf in
 * a matrix handed to LAPACK), PK_ERR_NOT_PD (a Cholesky failed: info > 0),
 * PK_ERR_EIG_FAILED.
 *
 * Example: a low-rank Laplace posterior P = alpha I + U U^T, its log-det and
 * one solve, for U (D x M) and a vector v (D):
 *
 *     double alpha = 1.0, logdet;
 *     int rc = pk_woodbury_logdet(PK_FLOAT64, D, M, 1, &alpha, U, &logdet);
 *     if (!rc) rc = pk_woodbury_solve(PK_FLOAT64, D, M, 1, &alpha, U, 1, v, x);
 *     if (rc) fprintf(stderr, "%s\n", pk_strerror(rc));
 */
#ifndef PK_LINALG_H
#define PK_LINALG_H

#include "pk_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- GGN from Jacobians ---------------------------------------------------
 * G (D x D) = sum_n J_n^T Lam_n J_n for J (n x K x D) and Lam (n x K x K), or
 * sum_n J_n^T J_n when lam is NULL. Lam need not be PSD; G is returned exactly
 * symmetric. Cost O(n K^2 D + n K D^2) (one GEMM per chunk of samples);
 * scratch about min(n, chunk) K D values. */
int pk_ggn_from_jacobians(pk_dtype_t dtype, int64_t n, int64_t K, int64_t D, const void *J,
                          const void *lam, void *G) PK_MUST_CHECK;

/* Exact GGN of a LINEAR layer f = W phi + b (W: K x h) on features Phi (n x h):
 * its Jacobian is J_n = I_K (x) [phi_n; 1]^T, so
 *   G = sum_n Lam_n (x) phibar_n phibar_n^T      (Wbar = [W b] order),
 * written here in THETA order (W row-major, then b), D = K (h + 1).
 * One (h+1) x n x (h+1) GEMM per pair k <= k' of outputs: cost
 * O(K^2 n h^2 / 2) instead of O(n K D^2) = O(n K^3 h^2) through Jacobians.
 * Lam (n x K x K); G (D x D) is overwritten, exactly symmetric.
 * Scratch min(n, chunk) (h + 1) + (h + 1)^2 values. */
int pk_ggn_linear(pk_dtype_t dtype, int64_t n, int64_t K, int64_t h, const void *Phi,
                  const void *lam, void *G) PK_MUST_CHECK;

/* U (D x n K): column n K + j is J_n^T S_n[:, j], so that U U^T =
 * sum_n J_n^T S_n S_n^T J_n (the Woodbury factor of a GGN with S S^T = Lam).
 * J (n x K x D), S (n x K x K). Cost O(n K^2 D); scratch min(n, chunk) K D values. */
int pk_ggn_factor(pk_dtype_t dtype, int64_t n, int64_t K, int64_t D, const void *J,
                  const void *S, void *U) PK_MUST_CHECK;

/* Square roots of n symmetric PSD K x K matrices: S_n = Q diag(sqrt(w)) Q^T
 * (symmetric, S S^T = Lam). Eigenvalues below the roundoff level are set to 0;
 * a clearly negative one (< -sqrt(eps) max|w|) gives PK_ERR_NOT_PD.
 * Cost O(n K^3). */
int pk_psd_sqrt_batched(pk_dtype_t dtype, int64_t n, int64_t K, const void *lam,
                        void *S) PK_MUST_CHECK;

/* out_n (K x K) = J_n R_n for n = 0..N-1, J (N x K x D) and R (D x N K), i.e.
 * R_n = R[:, n K : (n + 1) K]: the diagonal blocks of J R. With R = P^-1 J^T
 * this is the GLM functional variance J_n P^-1 J_n^T. Cost O(N K^2 D). */
int pk_batched_gram(pk_dtype_t dtype, int64_t N, int64_t K, int64_t D, const void *J,
                    const void *R, void *out) PK_MUST_CHECK;

/* out_n (K x K) = J_n diag(w) J_n^T for J (N x K x D), w (D, double).
 * Cost O(N K^2 D); scratch K D values. */
int pk_diag_quad(pk_dtype_t dtype, int64_t N, int64_t K, int64_t D, const void *J,
                 const double *w, void *out) PK_MUST_CHECK;

/* ---- Woodbury (low rank plus diagonal) ------------------------------------
 * alpha: n_alpha doubles, n_alpha = 1 (a scalar) or D (a diagonal); U (D x M).
 * Scratch for all: D M + M^2 values (U~ and the capacitance). */

/* *logdet = log det(diag(alpha) + U U^T). Cost O(M^2 D + M^3). */
int pk_woodbury_logdet(pk_dtype_t dtype, int64_t D, int64_t M, int64_t n_alpha,
                       const double *alpha, const void *U, double *logdet) PK_MUST_CHECK;

/* R (D x m) = (diag(alpha) + U U^T)^-1 V, V (D x m); R may be V.
 * Cost O(M^2 D + M^3 + D M m); extra scratch 2 D m + M m values. */
int pk_woodbury_solve(pk_dtype_t dtype, int64_t D, int64_t M, int64_t n_alpha,
                      const double *alpha, const void *U, int64_t m, const void *V,
                      void *R) PK_MUST_CHECK;

/* Pinv (D x D) = (diag(alpha) + U U^T)^-1, dense and exactly symmetric.
 * Cost O(D^2 M + M^2 D + M^3). */
int pk_woodbury_inverse(pk_dtype_t dtype, int64_t D, int64_t M, int64_t n_alpha,
                        const double *alpha, const void *U, void *Pinv) PK_MUST_CHECK;

/* d (D) = diagonal of (diag(alpha) + U U^T)^-1 (the posterior marginal
 * variances). Cost O(M^2 D + M^3). */
int pk_woodbury_diag_inverse(pk_dtype_t dtype, int64_t D, int64_t M, int64_t n_alpha,
                             const double *alpha, const void *U, void *d) PK_MUST_CHECK;

/* out (n x D): n draws of N(0, P^-1), P = diag(alpha) + U U^T, by
 * perturb-then-solve: y = diag(alpha)^1/2 z1 + U z2 ~ N(0, P) with standard
 * normal z1 (D), z2 (M) from rng, then x = P^-1 y. Cost O(M^2 D + M^3 + n D M);
 * extra scratch n M values. */
int pk_woodbury_sample(pk_dtype_t dtype, int64_t D, int64_t M, int64_t n_alpha,
                       const double *alpha, const void *U, int64_t n, pk_rng_t *rng,
                       void *out) PK_MUST_CHECK;

/* ---- thin eigendecomposition of a low-rank PSD matrix -----------------------
 * U U^T = Q diag(s) Q^T for U (D x M): eigendecomposition of the M x M Gram
 * U^T U = R diag(s) R^T (syevd), then Q = U R diag(s)^-1/2. The Gram and its
 * eigendecomposition are in double for float data too (a float Gram would lose
 * every singular value under ~2e-4 of the largest). *rank receives the number
 * r of eigenvalues above max(M eps64, (max(M, D) eps)^2) max(s), eps that of
 * the dtype: the Gram's roundoff and the data's (the rest); s (M)
 * gets them in DESCENDING order (zeros after r), and the first D r values of
 * the caller's D x M buffer Q get the (D x r) row-major matrix of orthonormal
 * eigenvectors (compact, leading dimension r; the rest is zeroed).
 * Cost O(M^2 D + M^3); scratch 3 M^2 doubles. When M > D, U U^T (D x D) is
 * decomposed directly instead: cost O(D^2 M + D^3), r <= D. */
int pk_lowrank_eigh(pk_dtype_t dtype, int64_t D, int64_t M, const void *U, void *s, void *Q,
                    int64_t *rank) PK_MUST_CHECK;

/* The same for an L-layer MLP's Gmat given by its layer factors, never formed:
 * column n Kp + j (n < N, j < Kp, M = N Kp) is, layer by layer in theta order
 * (W_l row-major, then b_l), U[l][n, j, :] (x) [A[l][n, :]; 1] with U[l]
 * (N x Kp x sizes[l+1]) and A[l] (N x sizes[l]) row-major: per-sample
 * Jacobian factors (pk_layer_jacobians) times square roots of the output
 * Hessians. The Gram is sum_l (U_l U_l^T) o (A_l A_l^T + 1) and Q = Gmat C
 * is built per layer and output unit by A_l^T V GEMMs, so the cost is
 * O(M^2 sum_l (sizes[l] + sizes[l+1]) + M^3 + D N r) instead of O(M^2 D).
 * At most max_rank >= 1 eigenpairs (the largest) are kept: Q is a buffer of
 * D x min(M, max_rank) values whose first D r get the compact (D x r) result.
 * Scratch 3 M^2 + N^2 values and up to 2^24 for the expansion. When M > D,
 * Gmat (D x M) is formed and U U^T decomposed as above. C (may be NULL), a
 * buffer like Q of M x min(M, max_rank) values, gets the compact (M x r)
 * coefficients with Q = Gmat C, which pk_lowrank_jq_layers takes. */
int pk_lowrank_eigh_layers(pk_dtype_t dtype, int L, const int64_t *sizes, int64_t N, int64_t Kp,
                           const void *const *U, const void *const *A, int64_t max_rank, void *s, void *Q,
                           void *C, int64_t *rank) PK_MUST_CHECK;

/* out (Nx x K x r) = J(x) diag(w) Q for Q = Gmat C as above (U, A, N, Kp,
 * C (M x r)), where J(x) is given by the layer factors of Nx inputs: Gx[l]
 * (Nx x K x sizes[l+1]) and Axb[l] (Nx x (sizes[l] + 1), its last column the
 * bias's 1, not read), and w (L values, NULL: all 1) weighs the layers. Through
 * the kernel sum_l w_l (Gx_l U_l^T) o (Ax_l A_l^T + 1) (K x M per input):
 * cost O(Nx K M (sum(sizes[1:]) + r) + Nx N sum(sizes[:-1])), where J(x) Q by
 * forward mode costs O(Nx D r). Scratch about 2^22 values. */
int pk_lowrank_jq_layers(pk_dtype_t dtype, int L, const int64_t *sizes, int64_t Nx, int64_t K,
                         const void *const *Gx, const void *const *Axb, int64_t N, int64_t Kp,
                         const void *const *U, const void *const *A, const double *w, int64_t r, const void *C,
                         void *out) PK_MUST_CHECK;

/* R (D x m) = a0 V + Q diag(d) Q^T V for Q (D x r), d (r, double): every
 * spectral function of a0' I + Q diag(s) Q^T (Q orthonormal), e.g. its inverse
 * with a0 = 1/a0', d_i = 1/(a0' + s_i) - 1/a0'. R may not alias V.
 * Cost O(D r m); scratch r m values. */
int pk_lowrank_apply(pk_dtype_t dtype, int64_t D, int64_t r, const void *Q, double a0,
                     const double *d, int64_t m, const void *V, void *R) PK_MUST_CHECK;

/* out_n (K x K) = J_n (a0 I + Q diag(d) Q^T) J_n^T for J (N x K x D), Q (D x r):
 * the GLM variance under a low-rank-plus-scaled-identity covariance, through
 * one GEMM T = J Q (N K x r). Cost O(N K D (r + K)); scratch N K r values. */
int pk_lowrank_quad(pk_dtype_t dtype, int64_t N, int64_t K, int64_t D, int64_t r, const void *J,
                    const void *Q, double a0, const double *d, void *out) PK_MUST_CHECK;

/* ---- symmetric eigenvalues ------------------------------------------------------ */

/* w (n) = eigenvalues of the symmetric M (lower triangle read), ascending,
 * without eigenvectors (syevd jobz = 'N', about 4/3 n^3 flops instead of the
 * ~9 n^3 of a full decomposition). PK_ERR_NONFINITE, PK_ERR_EIG_FAILED. */
int pk_sym_eigvals(pk_dtype_t dtype, int64_t n, const void *M, void *w) PK_MUST_CHECK;

/* ---- dense SPD matrices by Cholesky ----------------------------------------- */

/* L (n x n) = lower Cholesky factor of the symmetric A (lower triangle read),
 * zeros above the diagonal. PK_ERR_NOT_PD if A is not positive definite.
 * Cost n^3 / 3; no scratch. */
int pk_chol(pk_dtype_t dtype, int64_t n, const void *A, void *L) PK_MUST_CHECK;

/* X (n x m) = A^-1 B for A = L L^T, B (n x m); X may be B. Cost O(n^2 m);
 * scratch n m values. */
int pk_chol_solve(pk_dtype_t dtype, int64_t n, const void *L, int64_t m, const void *B,
                  void *X) PK_MUST_CHECK;

/* Ainv (n x n) = (L L^T)^-1, exactly symmetric. Cost O(n^3). */
int pk_chol_inverse(pk_dtype_t dtype, int64_t n, const void *L, void *Ainv) PK_MUST_CHECK;

/* *logdet = log det(L L^T) = 2 sum log L_ii. */
int pk_chol_logdet(pk_dtype_t dtype, int64_t n, const void *L, double *logdet) PK_MUST_CHECK;

/* X (m x n): row k is L^-T z_k for the rows z_k of Z (m x n); for standard
 * normal Z the rows are draws of N(0, (L L^T)^-1), i.e. samples from a
 * Gaussian with PRECISION L L^T. X may be Z. Cost O(n^2 m). */
int pk_chol_sample(pk_dtype_t dtype, int64_t n, const void *L, int64_t m, const void *Z,
                   void *X) PK_MUST_CHECK;

/* ---- Kronecker products -------------------------------------------------------
 * Plain Kronecker order: a vector of length nG nA is the row-major vec of an
 * (nG x nA) matrix X, and (G (x) A) vec(X) = vec(G X A^T) (np.kron(G, A)). */

/* Eigendecompositions of both factors (syevd): A = QA diag(wA) QA^T (nA),
 * G = QG diag(wG) QG^T (nG), ascending, eigenvectors as columns.
 * Cost O(nA^3 + nG^3). */
int pk_kron_eigh(pk_dtype_t dtype, int64_t nG, int64_t nA, const void *G, const void *A,
                 void *wG, void *QG, void *wA, void *QA) PK_MUST_CHECK;

/* R (m x nG x nA) = (scale G (x) A + damping I)^power X for m matrices X
 * (m x nG x nA) and power in {1, -1, 0.5, -0.5}, through the eigendecompositions:
 * R_j = QG [F o (QG^T X_j QA)] QA^T, F_ik = (scale wG_i wA_k + damping)^power.
 * Factor eigenvalues are used as given (clip them first if they come from a
 * noisy PSD estimate). PK_ERR_SINGULAR if a damped eigenvalue is <= 0 for a
 * negative power or < 0 for power 0.5 (every value is checked, even if m = 0);
 * PK_ERR_BAD_ARG for another power. R may be X.
 * Cost O(m nG nA (nG + nA)); scratch 2 nG nA values. */
int pk_kron_spectral_apply(pk_dtype_t dtype, int64_t nG, int64_t nA, const void *wG,
                           const void *QG, const void *wA, const void *QA, double scale,
                           double damping, double power, int64_t m, const void *X,
                           void *R) PK_MUST_CHECK;

/* m draws of N(0, (scale G (x) A + damping I)^-1) for a dense layer's [W b]
 * block (nG x nA, the bias last), ADDED to out: draw j goes to out + j*ld in
 * theta order (W row-major, nG x (nA-1), then b), so the caller can start from
 * the posterior mean and pass the layer's offset. Matrix-normal form: the draw
 * is QG [F o Z] QA^T with Z standard normal from rng and F_ik = (damped
 * eigenvalue)^-1/2 (the rotation of a symmetric square root is skipped: Z is
 * isotropic). factored != 0: (scale wG_i + sqrt(damping))(wA_k + sqrt(damping)).
 * Factor eigenvalues are clipped at the roundoff level as in pk_kron.h;
 * PK_ERR_SINGULAR if a damped eigenvalue is <= 0. Cost O(m nG nA (nG + nA));
 * scratch two buffers of about 2^22 elements. */
int pk_kron_sample(pk_dtype_t dtype, int64_t nG, int64_t nA, const void *wG, const void *QG,
                   const void *wA, const void *QA, double scale, double damping, int factored,
                   int64_t m, pk_rng_t *rng, int64_t ld, void *out) PK_MUST_CHECK;

/* GLM variances of a dense layer through its Kronecker block, without
 * forming the Jacobian's rotations. Row (n, k) of the layer's Jacobian (plain
 * order, an nG x nA matrix) is the rank-one g_nk a_n^T (pre-activation
 * gradient times the input, a_n ending with the bias 1), so with F_ij the
 * inverse damped eigenvalues
 *   out_n[k, k'] = (g_nk (x) a_n)^T (scale G (x) A + damping I)^-1 (g_nk' (x) a_n)
 *                = sum_i (QG^T g_nk)_i (QG^T g_nk')_i sum_j (QA^T a_n)_j^2 F_ij,
 * F_ij = 1 / (scale wG_i wA_j + damping), or with factored != 0
 * 1 / ((scale wG_i + sqrt(damping)) (wA_j + sqrt(damping))) (Ritter et al.).
 * Factor eigenvalues are clipped at the roundoff level as in pk_kron.h.
 * Gv (N x K x nG), Av (N x nA); out (N x K x K) is ADDED to (layers sum up).
 * PK_ERR_SINGULAR if a damped eigenvalue is <= 0.
 * Cost O(N (K nG^2 + nA^2 + nA nG + K^2 nG)), versus O(N K nG nA (nG + nA))
 * for a Kronecker solve of every Jacobian row; scratch N (K nG + nA + nG). */
int pk_kron_inv_quad(pk_dtype_t dtype, int64_t nG, int64_t nA, const void *wG, const void *QG,
                     const void *wA, const void *QA, double scale, double damping, int factored,
                     int64_t N, int64_t K, const void *Gv, const void *Av, void *out) PK_MUST_CHECK;

/* The same quadratic forms for a diagonal covariance: F (nG x nA) holds the
 * variances of the layer's parameters in [W b] order (F_ij for W_ij, F_i,nA-1
 * for b_i, with Av's last column 1), so
 *   out_n[k, k'] += sum_ij g_nk,i g_nk',i a_n,j^2 F_ij.
 * Gv (N x K x nG), Av (N x nA). Cost O(N (nA nG + K^2 nG)); scratch N (nA + nG). */
int pk_diag_inv_quad(pk_dtype_t dtype, int64_t nG, int64_t nA, const void *F, int64_t N, int64_t K,
                     const void *Gv, const void *Av, void *out) PK_MUST_CHECK;

/* GLM variances of a linear model f = W a + b (a network's last layer on its
 * features) under a dense covariance S ((nG nA) x (nG nA), theta order: W
 * row-major nG x (nA-1), then b): the Jacobian rows are e_k (x) a_n, so
 *   out_n[k, k'] = abar_n^T S[(k, :), (k', :)] abar_n    (Av (N x nA) ends with 1).
 * Cost O(N nG^2 nA^2) in one GEMM per chunk (half of J S J^T with J formed:
 * O(N nG (nG nA)^2)); scratch nG^2 nA (nA + chunk) elements. */
int pk_linear_cov_quad(pk_dtype_t dtype, int64_t nG, int64_t nA, const void *S, int64_t N,
                       const void *Av, void *out) PK_MUST_CHECK;

/* out (n x r x c): n draws of the matrix normal MN(M, U, V), i.e.
 * X = M + LU Z LV^T with Z (r x c) standard normal from rng and the Cholesky
 * factors LU (r x r) of U and LV (c x c) of V (pk_chol); then
 * Cov(vec X) = U (x) V (row-major vec). Cost O(n r c (r + c)); scratch r c. */
int pk_matrix_normal_sample(pk_dtype_t dtype, int64_t r, int64_t c, const void *M,
                            const void *LU, const void *LV, int64_t n, pk_rng_t *rng,
                            void *out) PK_MUST_CHECK;

#ifdef __cplusplus
}
#endif
#endif
