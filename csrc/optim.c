/* optim.c: argument checks and dtype dispatch for the optimiser kernels
 * (pk_optim.h); the maths is in optim_impl.inc, compiled once per dtype. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "pk_kron.h"
#include "pk_optim.h"
#include "util.h"

#define PK_OPT_MAX_LAYERS 64

/* Valid widths for L layers, every GEMM dimension within the BLAS int range. */
static int check_sizes(int n_layers, const int64_t *sizes)
{
    if (!sizes || n_layers < 1) return PK_ERR_BAD_ARG;
    if (n_layers > PK_OPT_MAX_LAYERS) return PK_ERR_SHAPE;
    int64_t D = 0;
    for (int l = 0; l <= n_layers; l++) {
        if (sizes[l] < 1) return PK_ERR_SHAPE;
        if (!pk_fits_blasint(sizes[l] + 1)) return PK_ERR_TOO_LARGE;
    }
    for (int l = 0; l < n_layers; l++) {
        D += sizes[l + 1] * (sizes[l] + 1);
        if (!pk_fits_blasint(D)) return PK_ERR_TOO_LARGE;
    }
    return PK_OK;
}

static int all_set(int n, const void *const *p)
{
    if (!p) return 0;
    for (int i = 0; i < n; i++)
        if (!p[i]) return 0;
    return 1;
}

#define PK_REAL 64
#include "optim_impl.inc"
#undef PK_REAL
#define PK_REAL 32
#include "optim_impl.inc"
#undef PK_REAL

int pk_kfac_inverse(pk_dtype_t dtype, int n_layers, const int64_t *sizes, const void *const *A,
                    const void *const *G, const void *const *A_cross, const void *const *G_cross,
                    double gamma, const double *pi, void *const *KA, void *const *sA,
                    void *const *KG, void *const *sG, void *const *PA, void *const *PG)
{
    int rc = check_sizes(n_layers, sizes);
    if (rc) return rc;
    const int L = n_layers;
    const int cross = A_cross != NULL || G_cross != NULL;
    if (!all_set(L, A) || !all_set(L, G) || !pi || !all_set(L, (const void *const *)KA) ||
        !all_set(L, (const void *const *)sA) || !all_set(L, (const void *const *)KG) ||
        !all_set(L, (const void *const *)sG))
        return PK_ERR_BAD_ARG;
    if (cross && (!all_set(L - 1, A_cross) || !all_set(L - 1, G_cross) ||
                  !all_set(L - 1, (const void *const *)PA) || !all_set(L - 1, (const void *const *)PG)))
        return PK_ERR_BAD_ARG;
    if (!isfinite(gamma) || gamma < 0.0) return PK_ERR_BAD_ARG;
    for (int l = 0; l < L; l++)
        if (!isfinite(pi[l]) || !(pi[l] > 0.0)) return PK_ERR_BAD_ARG;
    switch (dtype) {
    case PK_FLOAT64:
        return kfac_inverse_d(L, sizes, (const double *const *)A, (const double *const *)G,
                              cross ? (const double *const *)A_cross : NULL,
                              cross ? (const double *const *)G_cross : NULL, gamma, pi,
                              (double *const *)KA, (double *const *)sA, (double *const *)KG,
                              (double *const *)sG, (double *const *)PA, (double *const *)PG);
    case PK_FLOAT32:
        return kfac_inverse_f(L, sizes, (const float *const *)A, (const float *const *)G,
                              cross ? (const float *const *)A_cross : NULL,
                              cross ? (const float *const *)G_cross : NULL, gamma, pi,
                              (float *const *)KA, (float *const *)sA, (float *const *)KG,
                              (float *const *)sG, (float *const *)PA, (float *const *)PG);
    default: return PK_ERR_DTYPE;
    }
}

int pk_kfac_apply(pk_dtype_t dtype, int n_layers, const int64_t *sizes, const void *const *KA,
                  const void *const *sA, const void *const *KG, const void *const *sG,
                  const void *const *PA, const void *const *PG, const void *V, void *R)
{
    int rc = check_sizes(n_layers, sizes);
    if (rc) return rc;
    const int L = n_layers;
    const int cross = PA != NULL || PG != NULL;
    if (!all_set(L, KA) || !all_set(L, sA) || !all_set(L, KG) || !all_set(L, sG) || !V || !R || V == R)
        return PK_ERR_BAD_ARG;
    if (cross && (!all_set(L - 1, PA) || !all_set(L - 1, PG))) return PK_ERR_BAD_ARG;
    switch (dtype) {
    case PK_FLOAT64:
        return kfac_apply_d(L, sizes, (const double *const *)KA, (const double *const *)sA,
                            (const double *const *)KG, (const double *const *)sG,
                            cross ? (const double *const *)PA : NULL,
                            cross ? (const double *const *)PG : NULL, V, R);
    case PK_FLOAT32:
        return kfac_apply_f(L, sizes, (const float *const *)KA, (const float *const *)sA,
                            (const float *const *)KG, (const float *const *)sG,
                            cross ? (const float *const *)PA : NULL,
                            cross ? (const float *const *)PG : NULL, V, R);
    default: return PK_ERR_DTYPE;
    }
}

int pk_ggn_gram(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X, int64_t m,
                const void *V, double *out)
{
    int rc = pk_mlp_check(net);
    if (rc) return rc;
    if (n < 1) return PK_ERR_EMPTY;
    if (m < 1 || !X || !V || !out) return m < 1 ? PK_ERR_EMPTY : PK_ERR_BAD_ARG;
    const int64_t K = net->sizes[net->n_layers];
    if (loss != PK_LOSS_MSE && loss != PK_LOSS_CE && loss != PK_LOSS_BCE) return PK_ERR_LOSS;
    if (loss == PK_LOSS_CE && K < 2) return PK_ERR_LOSS;
    switch (net->dtype) {
    case PK_FLOAT64: return ggn_gram_d(net, loss, n, X, m, V, out);
    case PK_FLOAT32: return ggn_gram_f(net, loss, n, X, m, V, out);
    default: return PK_ERR_DTYPE;
    }
}

int pk_sgd_update(pk_dtype_t dtype, int64_t D, void *theta, const void *grad, void *buf,
                  double lr, double momentum, int nesterov, double weight_decay, int first)
{
    if (D < 0 || (D > 0 && (!theta || !grad || !buf))) return PK_ERR_BAD_ARG;
    if (!isfinite(lr) || !isfinite(momentum) || !isfinite(weight_decay)) return PK_ERR_BAD_ARG;
    switch (dtype) {
    case PK_FLOAT64: sgd_update_d(D, theta, grad, buf, lr, momentum, nesterov, weight_decay, first); return PK_OK;
    case PK_FLOAT32: sgd_update_f(D, theta, grad, buf, lr, momentum, nesterov, weight_decay, first); return PK_OK;
    default: return PK_ERR_DTYPE;
    }
}

int pk_adam_update(pk_dtype_t dtype, int64_t D, void *theta, const void *grad, void *m, void *v,
                   int64_t t, double lr, double beta1, double beta2, double eps, double weight_decay)
{
    if (D < 0 || (D > 0 && (!theta || !grad || !m || !v)) || t < 1) return PK_ERR_BAD_ARG;
    if (!isfinite(lr) || !isfinite(weight_decay) || !isfinite(eps) || eps < 0.0) return PK_ERR_BAD_ARG;
    if (!(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0)) return PK_ERR_BAD_ARG;
    const double bc1 = 1.0 - pow(beta1, (double)t), bc2 = 1.0 - pow(beta2, (double)t);
    switch (dtype) {
    case PK_FLOAT64: adam_update_d(D, theta, grad, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2); return PK_OK;
    case PK_FLOAT32: adam_update_f(D, theta, grad, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2); return PK_OK;
    default: return PK_ERR_DTYPE;
    }
}
