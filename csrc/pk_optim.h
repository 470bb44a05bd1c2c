/* pk_optim.h: the numerical kernels of the optimisers -- K-FAC's damped
 * block-diagonal and block-tridiagonal inverse (Martens & Grosse 2015,
 * sections 4.2, 4.3 and 6.3), and the SGD and Adam parameter updates.
 *
 * Everything here is stateless: the optimiser state (moving averages of the
 * Kronecker factors, the inverse representation, momentum buffers) lives in
 * caller-owned arrays; pykfac/optim.py keeps it between steps.
 *
 * Layout. A network with L dense layers has widths sizes[0..L]; layer l has
 * out_l = sizes[l+1] outputs and q_l = sizes[l] + 1 augmented inputs (the last
 * is the bias). Vectors over parameters are in THETA order (per layer
 * W.ravel() then b); internally a layer's part is the row-major matrix
 * Wbar_l = [W_l b_l] (out_l x q_l), and Kronecker products act as
 * (G (x) A) vec(X) = vec(G X A^T) in row-major vec order (CONVENTIONS.md).
 *
 * K-FAC's F-tilde. Layer l's diagonal block is G_l (x) A_l and the block
 * coupling layers l and l+1 is Gc_l (x) Ac_l, with
 *   A_l  = E[abar_l abar_l^T]   (q_l x q_l),    G_l  = E[g_l g_l^T]        (out_l x out_l),
 *   Ac_l = E[abar_l abar_{l+1}^T] (q_l x q_{l+1}), Gc_l = E[g_l g_{l+1}^T] (out_l x out_{l+1}).
 * Factored Tikhonov damping replaces the diagonal factors by
 *   G~_l = G_l + (gamma / pi_l) I,   A~_l = A_l + gamma pi_l I.
 *
 * Block-diagonal inverse: F^-1 = blockdiag_l (G~_l (x) A~_l)^-1.
 * Block-tridiagonal inverse (sec. 4.3): F-hat is the matrix that equals the
 * damped F-tilde on the diagonal and first off-diagonal blocks and whose
 * inverse is block-tridiagonal,
 *   F-hat^-1 = Xi^T Lambda Xi,   (Xi v)_l = v_l - Psi_l v_{l+1}  (v_L-1 unchanged),
 *   Psi_l = (Gc_l G~_{l+1}^-1) (x) (Ac_l A~_{l+1}^-1) = PG_l (x) PA_l,
 *   Lambda = blockdiag(Sigma_0^-1, ..., Sigma_{L-1}^-1),
 *   Sigma_l = G~_l (x) A~_l - (PG_l Gc_l^T) (x) (PA_l Ac_l^T)   (l < L-1),
 *   Sigma_{L-1} = G~_{L-1} (x) A~_{L-1}.
 * Sigma_l^-1 comes from eigendecompositions (the paper's appendix B): with
 * R = Q diag(w)^-1/2 from G~_l = Q diag(w) Q^T and R^T (PG_l Gc_l^T) R =
 * E diag(sG) E^T, KG_l = R E whitens G~_l to I and the correction to
 * diag(sG); likewise KA_l, sA_l. Then
 *   Sigma_l^-1 vec(X) = vec(KG (KG^T X KA o 1 / (1 - sG sA^T)) KA^T),
 * and 0 <= sG_i sA_j < 1 whenever the statistics come from one joint PSD
 * covariance (same samples, same moving-average weights) and gamma > 0.
 * For the block-diagonal inverse and the last layer sG = sA = 0.
 *
 * The quadratic model of the step needs only V^T G V for the exact GGN G and a
 * few directions V: pk_ggn_gram.
 *
 * Example: one block-tridiagonal K-FAC direction for a 3-layer network.
 *
 *     // A[l], G[l], Ac[l], Gc[l]: the (moving-average) statistics above
 *     double pi[3] = {...};   // sqrt((tr A_l / q_l) / (tr G_l / out_l))
 *     int rc = pk_kfac_inverse(PK_FLOAT64, 3, sizes, A, G, Ac, Gc, gamma, pi,
 *                              KA, sA, KG, sG, PA, PG);
 *     if (!rc) rc = pk_kfac_apply(PK_FLOAT64, 3, sizes, KA, sA, KG, sG, PA, PG, grad, dir);
 *     if (rc) fprintf(stderr, "%s\n", pk_strerror(rc));
 */
#ifndef PK_OPTIM_H
#define PK_OPTIM_H

#include "pk_common.h"
#include "pk_mlp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The representation of the damped inverse from the statistics.
 *
 * Inputs (dtype, row-major, read only; only the lower triangles of A[l] and
 * G[l] are read): A[l] (q_l x q_l), G[l] (out_l x out_l) for l < L; and for
 * the block-tridiagonal inverse A_cross[l] (q_l x q_{l+1}), G_cross[l]
 * (out_l x out_{l+1}) for l < L - 1 (both NULL for the block-diagonal one).
 * gamma >= 0 and pi[l] > 0 set the factored damping.
 * Outputs (caller allocated): KA[l] (q_l x q_l), sA[l] (q_l), KG[l]
 * (out_l x out_l), sG[l] (out_l); with the cross statistics also PA[l]
 * (q_l x q_{l+1}) and PG[l] (out_l x out_{l+1}) for l < L - 1 (else unused,
 * may be NULL).
 * Errors: PK_ERR_BAD_ARG (NULL pointers, L < 1, gamma < 0 or a pi[l] <= 0,
 * non-finite), PK_ERR_SHAPE (a width < 1), PK_ERR_NONFINITE (NaN/Inf in a
 * statistic), PK_ERR_SINGULAR (a damped factor has an eigenvalue at roundoff
 * level or below, or a conditional covariance Sigma_l is not positive
 * definite), PK_ERR_EIG_FAILED, PK_ERR_NOMEM, PK_ERR_TOO_LARGE. */
int pk_kfac_inverse(pk_dtype_t dtype, int n_layers, const int64_t *sizes, const void *const *A,
                    const void *const *G, const void *const *A_cross, const void *const *G_cross,
                    double gamma, const double *pi, void *const *KA, void *const *sA,
                    void *const *KG, void *const *sG, void *const *PA,
                    void *const *PG) PK_MUST_CHECK;

/* R (D) = F^-1 V (D), theta order, from pk_kfac_inverse's outputs: the
 * block-diagonal inverse when PA and PG are NULL, else the block-tridiagonal
 * Xi^T Lambda Xi applied right to left. R may not alias V.
 * Errors: PK_ERR_BAD_ARG, PK_ERR_SHAPE, PK_ERR_NOMEM, PK_ERR_TOO_LARGE. */
int pk_kfac_apply(pk_dtype_t dtype, int n_layers, const int64_t *sizes, const void *const *KA,
                  const void *const *sA, const void *const *KG, const void *const *sG,
                  const void *const *PA, const void *const *PG, const void *V,
                  void *R) PK_MUST_CHECK;

/* out (m x m, row-major doubles) = V^T G V = sum_n (J_n V)^T Lambda_n (J_n V)
 * for the exact GGN G of the SUMMED loss on the n rows of X and V (D x m,
 * row-major, the network's dtype). Forward mode only (one tangent pass for
 * all m columns, plus one plain forward pass for ce/bce, whose Lambda needs
 * the outputs): cheaper than forming G V when only the small Gram matrix is
 * needed, as in K-FAC's quadratic model. Lambda does not depend on labels.
 * Errors: those of pk_jvp / pk_forward, PK_ERR_LOSS, PK_ERR_NOMEM. */
int pk_ggn_gram(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X, int64_t m,
                const void *V, double *out) PK_MUST_CHECK;

/* SGD with (Nesterov) momentum, in place on theta (D) and buf (D), as
 * PyTorch's torch.optim.SGD without dampening:
 *   g = grad + weight_decay theta
 *   buf = g                      (first step, first != 0)
 *   buf = momentum buf + g       (later steps)
 *   theta -= lr (g + momentum buf)   if nesterov, else   theta -= lr buf.
 * momentum = 0 gives plain gradient descent (buf still holds g).
 * Errors: PK_ERR_BAD_ARG (NULL, D < 0, non-finite scalars), PK_ERR_DTYPE. */
int pk_sgd_update(pk_dtype_t dtype, int64_t D, void *theta, const void *grad, void *buf,
                  double lr, double momentum, int nesterov, double weight_decay,
                  int first) PK_MUST_CHECK;

/* Adam (Kingma & Ba), in place on theta, m, v (D each), step t >= 1 (the
 * number of this update), as torch.optim.Adam:
 *   g = grad + weight_decay theta
 *   m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
 *   theta -= lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps).
 * Errors: PK_ERR_BAD_ARG (NULL, D < 0, t < 1, betas outside [0, 1),
 * eps < 0, non-finite scalars), PK_ERR_DTYPE. */
int pk_adam_update(pk_dtype_t dtype, int64_t D, void *theta, const void *grad, void *m, void *v,
                   int64_t t, double lr, double beta1, double beta2, double eps,
                   double weight_decay) PK_MUST_CHECK;

#ifdef __cplusplus
}
#endif
#endif
