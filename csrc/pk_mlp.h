/* pk_mlp.h: dense networks (MLPs), their losses, and every exact and
 * approximate curvature quantity of L(theta) = sum_n loss(y_n, f(x_n, theta)).
 *
 * Conventions (../shared/CONVENTIONS.md):
 *  - layer l (0-based, l < n_layers) maps sizes[l] -> sizes[l+1]:
 *    s_l = a_l W_l^T + b_l, a_{l+1} = act_l(s_l); the last layer is linear.
 *  - theta = [W_0.ravel() (row-major, out x in), b_0, W_1.ravel(), b_1, ...].
 *  - matrices are row-major, C-contiguous, in the network's dtype; labels are
 *    int64 class indices for PK_LOSS_CE, dtype values for MSE and BCE (n x K;
 *    BCE values in {0, 1}, -1 read as 0).
 *  - the data term is the SUM over samples, never the mean.
 *
 * All functions process the data in row chunks, so scratch memory is bounded
 * by the widths (not by n) except where the output itself is large. */
#ifndef PK_MLP_H
#define PK_MLP_H

#include "pk_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    PK_ACT_IDENTITY = 0,
    PK_ACT_RELU = 1,       /* relu'(0) = 0, as PyTorch */
    PK_ACT_LEAKY_RELU = 2, /* slope 0.01 for x < 0 (PyTorch's default) */
    PK_ACT_ELU = 3,        /* alpha = 1 */
    PK_ACT_TANH = 4,
    PK_ACT_SIGMOID = 5,
    PK_ACT_SOFTPLUS = 6,   /* log(1 + e^x), beta = 1 */
    PK_ACT_GELU = 7,       /* exact: x * Phi(x) (erf form) */
    PK_ACT_COUNT = 8
} pk_act_t;

/* BCE is kfac-jax's MultiBernoulliNegativeLogProbLoss: K >= 1 independent
 * logistic outputs, loss sum_k log(1 + exp(-t_k f_k)) (t_k = 2 y_k - 1),
 * Lambda = diag(p o (1 - p)), p = sigmoid(f). */
typedef enum { PK_LOSS_MSE = 0, PK_LOSS_CE = 1, PK_LOSS_BCE = 2 } pk_loss_t;

/* How the output-space curvature is represented when building approximations. */
typedef enum {
    PK_FISHER_EXACT = 0,     /* exact square root S of Lambda (K backward passes): GGN / KFLR */
    PK_FISHER_MC = 1,        /* targets sampled from the model's predictive */
    PK_FISHER_EMPIRICAL = 2, /* gradients at the true labels */
    PK_FISHER_KFRA = 3       /* Botev et al.'s recursive averaged pre-activation Hessian (K-FAC only) */
} pk_fisher_t;

/* A network view: nothing here is owned. */
typedef struct {
    pk_dtype_t dtype;
    int n_layers;           /* L >= 1 */
    const int64_t *sizes;   /* L + 1 widths, each >= 1; sizes[L] = K outputs */
    const pk_act_t *acts;   /* L - 1 hidden activations (NULL if L == 1) */
    const void *theta;      /* pk_mlp_num_params() values */
} pk_mlp_t;

/* PK_OK if the description is consistent (dtype, widths, activations, theta != NULL). */
int pk_mlp_check(const pk_mlp_t *net) PK_MUST_CHECK;
/* D = sum_l sizes[l+1] * (sizes[l] + 1); -1 if the description is invalid. */
int64_t pk_mlp_num_params(const pk_mlp_t *net);
/* Offset of W_l in theta (b_l follows at offset + sizes[l+1] * sizes[l]). */
int64_t pk_mlp_layer_offset(const pk_mlp_t *net, int layer);

/* out (n x K) = f(X). X: n x sizes[0]. */
int pk_forward(const pk_mlp_t *net, int64_t n, const void *X, void *out) PK_MUST_CHECK;

/* Penultimate features: out (n x sizes[L-1]) = a_{L-1} (X itself if L == 1). */
int pk_features(const pk_mlp_t *net, int64_t n, const void *X, void *out) PK_MUST_CHECK;

/* *loss_out (may be NULL) = sum_n loss_n (accumulated in double); grad (D, may be NULL) =
 * dL/dtheta. Errors: PK_ERR_LABEL, PK_ERR_LOSS (CE needs K >= 2), PK_ERR_EMPTY. */
int pk_loss_grad(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X, const void *y,
                 double *loss_out, void *grad) PK_MUST_CHECK;

/* Per-sample losses (n,) in double. */
int pk_loss_per_sample(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X,
                       const void *y, double *out) PK_MUST_CHECK;

/* J (n x K x D): J[i, k, :] = d f_k(x_i) / d theta. */
int pk_jacobian(const pk_mlp_t *net, int64_t n, const void *X, void *J) PK_MUST_CHECK;

/* The Jacobian rows in factored form, per layer l: G[l] (n x K x sizes[l+1]) =
 * d f_k(x_i) / d s_l (the bias columns of J) and A[l] (n x sizes[l]) = a_l, the
 * layer's input (A[0] = X). Then J[i, k, W_l] = G[l][i, k, :] (x) A[l][i, :] and
 * J[i, k, b_l] = G[l][i, k, :]: O(n K sum(sizes)) memory instead of O(n K D). */
int pk_layer_jacobians(const pk_mlp_t *net, int64_t n, const void *X, void **G, void **A) PK_MUST_CHECK;

/* Forward mode: out (n x K x m) = J V for V (D x m). */
int pk_jvp(const pk_mlp_t *net, int64_t n, const void *X, int64_t m, const void *V,
           void *out) PK_MUST_CHECK;

/* Reverse mode: out (D x m) = sum_i J_i^T U_i for U (n x K x m). */
int pk_vjp(const pk_mlp_t *net, int64_t n, const void *X, int64_t m, const void *U,
           void *out) PK_MUST_CHECK;

/* Curvature-matrix products with V (D x m) -> out (D x m), never forming J:
 * GGN: J^T Lambda J V (Schraudolph); Hessian: exact H V (Pearlmutter's R-op,
 * using the activations' exact second derivatives); residual: (H - GGN) V. */
typedef enum { PK_CURV_GGN = 0, PK_CURV_HESSIAN = 1, PK_CURV_RESIDUAL = 2 } pk_curv_t;
int pk_curvature_matvec(const pk_mlp_t *net, pk_curv_t which, pk_loss_t loss, int64_t n,
                        const void *X, const void *y, int64_t m, const void *V,
                        void *out) PK_MUST_CHECK;

/* out (n x D), theta order: row i is the gradient of sample i's loss,
 * J_i^T dl(y_i, f_i)/df (the rows sum to the gradient of the summed loss). */
int pk_grad_per_sample(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X, const void *y,
                       void *out) PK_MUST_CHECK;

/* Dense (D x D) exact Hessian / GGN, theta order. */
int pk_hessian(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X, const void *y,
               void *H) PK_MUST_CHECK;
int pk_ggn(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X, const void *y,
           void *G) PK_MUST_CHECK;

/* out (D) += diagonal of the exact Hessian (BackPACK's DiagHessian), never
 * forming H or J: the GGN diagonal (as pk_diag_curvature EXACT) plus the
 * residual from the activations' second derivatives, both from per-sample
 * pre-activation Hessian diagonals (mlp_impl.inc, diag_hessian). Equals the
 * diagonal of pk_hessian. loss_out (may be NULL) += sum_n loss_n.
 * Cost: pk_diag_curvature EXACT plus one gradient pass and one GEMM per hidden
 * layer; with three or more hidden layers whose activation has phi'' != 0,
 * hidden layer m >= 2 adds a stack of sizes[m+1] vectors per sample backpropagated
 * through layers m-1 .. 1. Scratch: W o W of the hidden layers (< D) plus
 * row chunks bounded independently of n.
 * Errors: as pk_hessian (PK_ERR_LABEL, PK_ERR_LOSS, PK_ERR_EMPTY, PK_ERR_NOMEM). */
int pk_diag_hessian(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X, const void *y,
                    void *out, double *loss_out) PK_MUST_CHECK;

/* out (D) += diagonal of the GGN (EXACT), of its Monte-Carlo estimate with
 * mc_samples sampled targets per datum (MC, averaged over samples), or of the
 * empirical Fisher sum_n grad_n grad_n^T (EMPIRICAL). rng is used by MC only.
 * loss_out (may be NULL) += sum_n loss_n from the same forward pass. */
int pk_diag_curvature(const pk_mlp_t *net, pk_fisher_t kind, pk_loss_t loss, int64_t n,
                      const void *X, const void *y, int mc_samples, pk_rng_t *rng,
                      void *out, double *loss_out) PK_MUST_CHECK;

/* Kronecker factors for every layer, ACCUMULATED so batches add up:
 *   A[l] (sizes[l]+1 squared) += sum_n abar_n abar_n^T   (abar = [a; 1], unnormalised)
 *   G[l] (sizes[l+1] squared) += sum_n g_n g_n^T          (EXACT: over the columns of a
 *                                                          square root S S^T = Lambda, K - 1
 *                                                          of them for CE (rank K - 1);
 *                                                          MC: averaged over mc_samples;
 *                                                          EMPIRICAL: true-label gradients;
 *                                                          KFRA: n * recursive average)
 * The caller divides A by the total number of samples. A and G are returned
 * symmetric.
 * Cross-layer statistics for the block-tridiagonal K-FAC (Martens & Grosse
 * sec. 4.3), both NULL or both given with L - 1 entries (not for KFRA):
 *   A_cross[l] ((sizes[l]+1) x (sizes[l+1]+1)) += sum_n abar_l abar_{l+1}^T
 *   G_cross[l] (sizes[l+1] x sizes[l+2])       += sum_n g_l g_{l+1}^T (same scaling as G)
 * loss_out (may be NULL) += sum_n loss_n from the same forward pass. */
int pk_kfac_factors(const pk_mlp_t *net, pk_fisher_t kind, pk_loss_t loss, int64_t n,
                    const void *X, const void *y, int mc_samples, pk_rng_t *rng, void *const *A,
                    void *const *G, void *const *A_cross, void *const *G_cross,
                    double *loss_out) PK_MUST_CHECK;

/* Output-space pieces at the current parameters (n rows):
 * dloss (n x K) = dl/df; lam (n x K x K) = Lambda_n; sqrt_lam (n x K x K) with
 * S S^T = Lambda (column v of S for CE is sqrt(p_v)(e_v - p); for BCE S is
 * diagonal, sqrt(p_v (1 - p_v)) e_v). Any output may be NULL. */
int pk_output_curvature(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X,
                        const void *y, void *dloss, void *lam, void *sqrt_lam) PK_MUST_CHECK;

/* out (n x K x M) with M = pk_output_stack_height(kind, loss, K, mc_samples): per
 * sample, M columns u_j with sum_j u_j u_j^T the output curvature of kind --
 * EXACT: Lambda_n (M = K, or K - 1 for CE: a rank-(K-1) square root); MC: the
 * estimate from mc_samples targets sampled from the model (u_j = the loss
 * gradient at target j over sqrt(mc_samples)); EMPIRICAL: g g^T with g the
 * loss gradient at the true label (M = 1). J_n^T U_n is then a square root of
 * sample n's GGN, Fisher or empirical-Fisher term. y is read by EMPIRICAL
 * (and checked always), rng by MC. */
int64_t pk_output_stack_height(pk_fisher_t kind, pk_loss_t loss, int64_t K, int mc_samples);
int pk_output_stack(const pk_mlp_t *net, pk_fisher_t kind, pk_loss_t loss, int64_t n, const void *X,
                    const void *y, int mc_samples, pk_rng_t *rng, void *out) PK_MUST_CHECK;

#ifdef __cplusplus
}
#endif
#endif
