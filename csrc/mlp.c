/* mlp.c: validation and dtype dispatch for the MLP engine (mlp_impl.inc). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "act.h"
#include "blas.h"
#include "pk_mlp.h"
#include "util.h"

#define PK_MAX_LAYERS 64
/* Scratch budget per chunk of rows, in elements: bounds memory independently
 * of N while keeping GEMMs large enough to run near peak. */
#define PK_CHUNK_ELEMS ((int64_t)1 << 21) /* 16 MiB of float64: faster than 64 MiB chunks (cache, page faults) */
#define PK_MAX_CHUNK_ROWS ((int64_t)8192)
/* Budgets of the diagonal and K-FAC kernels (mlp_impl.inc, plan_rows), in
 * elements: rows per chunk for the forward pass and the per-layer GEMMs/SYRKs
 * (weights packed, outputs swept once per chunk), rows per block of the
 * reverse-mode stacks (kept near L2: 512 KiB per core on Zen 2). Both are
 * capped by the memory guard's estimate. Measured on 784-256-256-10: within
 * 2% of the best of 2^19..2^22 x 2^17..2^20 on one thread, 2-4% faster than
 * 2^20 x 2^18 on two. */
#define PK_CURV_CHUNK_ELEMS ((int64_t)1 << 21)
#define PK_CURV_STACK_ELEMS ((int64_t)1 << 19)
/* Elements per tile of the fused stack loops (the tile's running sums stay in L1). */
#define PK_SQ_TILE 1024
/* Directions processed together in tangent/R-op passes (columns of V). */
#define PK_MAX_STACK ((int64_t)64)

/* 1 if phi'' is not identically zero: only such activations add a residual
 * term to the Hessian's diagonal (mlp_impl.inc, diag_hessian). */
static int act_curved(pk_act_t a)
{
    return a != PK_ACT_IDENTITY && a != PK_ACT_RELU && a != PK_ACT_LEAKY_RELU;
}

/* For diag_hessian: the lowest hidden layer with a curved activation
 * (n_layers - 1 if none), the height of the residual stack (the widths
 * sizes[m+1] of curved hidden layers m >= 2) and the elements of W_m o W_m
 * over curved hidden layers m >= 1. */
static void diag_hessian_shape(const pk_mlp_t *net, int *lowest, int64_t *Mres, int64_t *nWW)
{
    *lowest = net->n_layers - 1;
    *Mres = 0;
    *nWW = 0;
    for (int m = net->n_layers - 2; m >= 0; m--) {
        if (!act_curved(net->acts[m])) continue;
        *lowest = m;
        if (m >= 2) *Mres += net->sizes[m + 1];
        if (m >= 1) *nWW += net->sizes[m + 1] * net->sizes[m];
    }
}

#define PK_REAL 64
#include "mlp_impl.inc"
#undef PK_REAL
#define PK_REAL 32
#include "mlp_impl.inc"
#undef PK_REAL

int pk_mlp_check(const pk_mlp_t *net)
{
    if (!net || !net->sizes || !net->theta) return PK_ERR_BAD_ARG;
    if (net->dtype != PK_FLOAT32 && net->dtype != PK_FLOAT64) return PK_ERR_DTYPE;
    if (net->n_layers < 1 || net->n_layers > PK_MAX_LAYERS) return PK_ERR_SHAPE;
    if (net->n_layers > 1 && !net->acts) return PK_ERR_BAD_ARG;
    int64_t D = 0;
    for (int l = 0; l <= net->n_layers; l++) {
        if (net->sizes[l] < 1) return PK_ERR_SHAPE;
        if (!pk_fits_blasint(net->sizes[l] + 1)) return PK_ERR_TOO_LARGE;
    }
    for (int l = 0; l < net->n_layers; l++) {
        D += net->sizes[l + 1] * (net->sizes[l] + 1);
        if (!pk_fits_blasint(D)) return PK_ERR_TOO_LARGE;
    }
    for (int l = 0; l < net->n_layers - 1; l++)
        if ((int)net->acts[l] < 0 || net->acts[l] >= PK_ACT_COUNT) return PK_ERR_BAD_ARG;
    return PK_OK;
}

int64_t pk_mlp_num_params(const pk_mlp_t *net)
{
    if (pk_mlp_check(net) != PK_OK) return -1;
    int64_t D = 0;
    for (int l = 0; l < net->n_layers; l++) D += net->sizes[l + 1] * (net->sizes[l] + 1);
    return D;
}

int64_t pk_mlp_layer_offset(const pk_mlp_t *net, int layer)
{
    if (pk_mlp_check(net) != PK_OK || layer < 0 || layer >= net->n_layers) return -1;
    int64_t off = 0;
    for (int l = 0; l < layer; l++) off += net->sizes[l + 1] * (net->sizes[l] + 1);
    return off;
}

/* Shared argument checks: a valid net, n >= 1 rows, non-NULL data. */
static int check_common(const pk_mlp_t *net, int64_t n, const void *X)
{
    int rc = pk_mlp_check(net);
    if (rc) return rc;
    if (n < 1) return PK_ERR_EMPTY;
    if (!X) return PK_ERR_BAD_ARG;
    return PK_OK;
}

static int check_loss(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *y)
{
    int64_t K = net->sizes[net->n_layers];
    if (!y) return PK_ERR_BAD_ARG;
    if (loss == PK_LOSS_CE) {
        if (K < 2) return PK_ERR_LOSS;
        const int64_t *lab = y;
        for (int64_t i = 0; i < n; i++)
            if (lab[i] < 0 || lab[i] >= K) return PK_ERR_LABEL;
        return PK_OK;
    }
    if (loss == PK_LOSS_MSE) return pk_check_finite(net->dtype, n * K, y);
    if (loss == PK_LOSS_BCE) { /* n x K values */
        for (int64_t i = 0; i < n * K; i++) {
            double v = net->dtype == PK_FLOAT64 ? ((const double *)y)[i] : ((const float *)y)[i];
            if (!(v == 0.0 || v == 1.0 || v == -1.0)) return PK_ERR_LABEL;
        }
        return PK_OK;
    }
    return PK_ERR_LOSS;
}

#define DISPATCH(call_d, call_f) (net->dtype == PK_FLOAT64 ? (call_d) : (call_f))

int pk_forward(const pk_mlp_t *net, int64_t n, const void *X, void *out)
{
    int rc = check_common(net, n, X);
    if (rc) return rc;
    if (!out) return PK_ERR_BAD_ARG;
    return DISPATCH(forward_d(net, n, X, out, 0), forward_f(net, n, X, out, 0));
}

int pk_features(const pk_mlp_t *net, int64_t n, const void *X, void *out)
{
    int rc = check_common(net, n, X);
    if (rc) return rc;
    if (!out) return PK_ERR_BAD_ARG;
    if (net->n_layers == 1) {
        memcpy(out, X, (size_t)(n * net->sizes[0]) * pk_dtype_size(net->dtype));
        return PK_OK;
    }
    return DISPATCH(forward_d(net, n, X, out, 1), forward_f(net, n, X, out, 1));
}

int pk_loss_grad(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X, const void *y,
                 double *loss_out, void *grad)
{
    int rc = check_common(net, n, X);
    if (!rc) rc = check_loss(net, loss, n, y);
    if (rc) return rc;
    return DISPATCH(loss_grad_d(net, loss, n, X, y, loss_out, NULL, grad),
                    loss_grad_f(net, loss, n, X, y, loss_out, NULL, grad));
}

int pk_loss_per_sample(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X,
                       const void *y, double *out)
{
    int rc = check_common(net, n, X);
    if (!rc) rc = check_loss(net, loss, n, y);
    if (rc) return rc;
    if (!out) return PK_ERR_BAD_ARG;
    return DISPATCH(loss_grad_d(net, loss, n, X, y, NULL, out, NULL),
                    loss_grad_f(net, loss, n, X, y, NULL, out, NULL));
}

int pk_jacobian(const pk_mlp_t *net, int64_t n, const void *X, void *J)
{
    int rc = check_common(net, n, X);
    if (rc) return rc;
    if (!J) return PK_ERR_BAD_ARG;
    return DISPATCH(jacobian_d(net, n, X, J), jacobian_f(net, n, X, J));
}

int pk_layer_jacobians(const pk_mlp_t *net, int64_t n, const void *X, void **G, void **A)
{
    int rc = check_common(net, n, X);
    if (rc) return rc;
    if (!G || !A) return PK_ERR_BAD_ARG;
    for (int l = 0; l < net->n_layers; l++)
        if (!G[l] || !A[l]) return PK_ERR_BAD_ARG;
    return DISPATCH(layer_jacobians_d(net, n, X, (double **)G, (double **)A),
                    layer_jacobians_f(net, n, X, (float **)G, (float **)A));
}

int pk_jvp(const pk_mlp_t *net, int64_t n, const void *X, int64_t m, const void *V, void *out)
{
    int rc = check_common(net, n, X);
    if (rc) return rc;
    if (m < 1 || !V || !out) return m < 1 ? PK_ERR_EMPTY : PK_ERR_BAD_ARG;
    return DISPATCH(jvp_d(net, n, X, m, V, out), jvp_f(net, n, X, m, V, out));
}

int pk_vjp(const pk_mlp_t *net, int64_t n, const void *X, int64_t m, const void *U, void *out)
{
    int rc = check_common(net, n, X);
    if (rc) return rc;
    if (m < 1 || !U || !out) return m < 1 ? PK_ERR_EMPTY : PK_ERR_BAD_ARG;
    return DISPATCH(vjp_d(net, n, X, m, U, out), vjp_f(net, n, X, m, U, out));
}

int pk_curvature_matvec(const pk_mlp_t *net, pk_curv_t which, pk_loss_t loss, int64_t n,
                        const void *X, const void *y, int64_t m, const void *V, void *out)
{
    int rc = check_common(net, n, X);
    if (!rc) rc = check_loss(net, loss, n, y);
    if (rc) return rc;
    if (which < PK_CURV_GGN || which > PK_CURV_RESIDUAL) return PK_ERR_BAD_ARG;
    if (m < 1 || !V || !out) return m < 1 ? PK_ERR_EMPTY : PK_ERR_BAD_ARG;
    return DISPATCH(curvature_matvec_d(net, which, loss, n, X, y, m, V, out),
                    curvature_matvec_f(net, which, loss, n, X, y, m, V, out));
}

int pk_hessian(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X, const void *y, void *H)
{
    int rc = check_common(net, n, X);
    if (!rc) rc = check_loss(net, loss, n, y);
    if (rc) return rc;
    if (!H) return PK_ERR_BAD_ARG;
    return DISPATCH(hessian_d(net, loss, n, X, y, H), hessian_f(net, loss, n, X, y, H));
}

int pk_ggn(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X, const void *y, void *G)
{
    int rc = check_common(net, n, X);
    if (!rc) rc = check_loss(net, loss, n, y);
    if (rc) return rc;
    if (!G) return PK_ERR_BAD_ARG;
    return DISPATCH(ggn_d(net, loss, n, X, y, G), ggn_f(net, loss, n, X, y, G));
}

int pk_diag_hessian(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X, const void *y, void *out,
                    double *loss_out)
{
    int rc = check_common(net, n, X);
    if (!rc) rc = check_loss(net, loss, n, y);
    if (rc) return rc;
    if (!out) return PK_ERR_BAD_ARG;
    return DISPATCH(diag_hessian_d(net, loss, n, X, y, out, loss_out),
                    diag_hessian_f(net, loss, n, X, y, out, loss_out));
}

static int check_fisher(pk_fisher_t kind, int mc_samples, pk_rng_t *rng, int allow_kfra)
{
    if (kind == PK_FISHER_MC) return (mc_samples < 1 || !rng) ? PK_ERR_BAD_ARG : PK_OK;
    if (kind == PK_FISHER_EXACT || kind == PK_FISHER_EMPIRICAL) return PK_OK;
    if (kind == PK_FISHER_KFRA && allow_kfra) return PK_OK;
    return PK_ERR_BAD_ARG;
}

int pk_diag_curvature(const pk_mlp_t *net, pk_fisher_t kind, pk_loss_t loss, int64_t n,
                      const void *X, const void *y, int mc_samples, pk_rng_t *rng, void *out,
                      double *loss_out)
{
    int rc = check_common(net, n, X);
    if (!rc) rc = check_loss(net, loss, n, y);
    if (!rc) rc = check_fisher(kind, mc_samples, rng, 0);
    if (rc) return rc;
    if (!out) return PK_ERR_BAD_ARG;
    return DISPATCH(diag_curvature_d(net, kind, loss, n, X, y, mc_samples, rng, out, loss_out),
                    diag_curvature_f(net, kind, loss, n, X, y, mc_samples, rng, out, loss_out));
}

int pk_kfac_factors(const pk_mlp_t *net, pk_fisher_t kind, pk_loss_t loss, int64_t n,
                    const void *X, const void *y, int mc_samples, pk_rng_t *rng, void *const *A,
                    void *const *G, void *const *A_cross, void *const *G_cross, double *loss_out)
{
    int rc = check_common(net, n, X);
    if (!rc) rc = check_loss(net, loss, n, y);
    if (!rc) rc = check_fisher(kind, mc_samples, rng, 1);
    if (rc) return rc;
    if (!A || !G) return PK_ERR_BAD_ARG;
    for (int l = 0; l < net->n_layers; l++)
        if (!A[l] || !G[l]) return PK_ERR_BAD_ARG;
    if ((A_cross == NULL) != (G_cross == NULL) || (A_cross && kind == PK_FISHER_KFRA)) return PK_ERR_BAD_ARG;
    for (int l = 0; A_cross && l + 1 < net->n_layers; l++)
        if (!A_cross[l] || !G_cross[l]) return PK_ERR_BAD_ARG;
    return DISPATCH(kfac_factors_d(net, kind, loss, n, X, y, mc_samples, rng, (double *const *)A,
                                   (double *const *)G, (double *const *)A_cross, (double *const *)G_cross,
                                   loss_out),
                    kfac_factors_f(net, kind, loss, n, X, y, mc_samples, rng, (float *const *)A,
                                   (float *const *)G, (float *const *)A_cross, (float *const *)G_cross,
                                   loss_out));
}

int pk_grad_per_sample(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X, const void *y, void *out)
{
    int rc = check_common(net, n, X);
    if (!rc) rc = check_loss(net, loss, n, y);
    if (rc) return rc;
    if (!out) return PK_ERR_BAD_ARG;
    return DISPATCH(grad_per_sample_d(net, loss, n, X, y, out), grad_per_sample_f(net, loss, n, X, y, out));
}

int64_t pk_output_stack_height(pk_fisher_t kind, pk_loss_t loss, int64_t K, int mc_samples)
{
    if (kind == PK_FISHER_EXACT) return loss == PK_LOSS_CE ? K - 1 : K;
    return kind == PK_FISHER_MC ? mc_samples : 1;
}

int pk_output_stack(const pk_mlp_t *net, pk_fisher_t kind, pk_loss_t loss, int64_t n, const void *X,
                    const void *y, int mc_samples, pk_rng_t *rng, void *out)
{
    int rc = check_common(net, n, X);
    if (!rc) rc = check_loss(net, loss, n, y);
    if (!rc) rc = check_fisher(kind, mc_samples, rng, 0);
    if (rc) return rc;
    if (!out) return PK_ERR_BAD_ARG;
    return DISPATCH(output_stack_d(net, kind, loss, n, X, y, mc_samples, rng, out),
                    output_stack_f(net, kind, loss, n, X, y, mc_samples, rng, out));
}

int pk_output_curvature(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X,
                        const void *y, void *dloss, void *lam, void *sqrt_lam)
{
    int rc = check_common(net, n, X);
    if (rc) return rc;
    if (dloss || loss == PK_LOSS_CE || loss == PK_LOSS_BCE) {
        /* labels are only read for dloss; still validate the loss/width pairing */
        int64_t K = net->sizes[net->n_layers];
        if (loss == PK_LOSS_CE && K < 2) return PK_ERR_LOSS;
    }
    if (loss != PK_LOSS_MSE && loss != PK_LOSS_CE && loss != PK_LOSS_BCE) return PK_ERR_LOSS;
    if (dloss) {
        rc = check_loss(net, loss, n, y);
        if (rc) return rc;
    }
    return DISPATCH(output_curvature_d(net, loss, n, X, y, dloss, lam, sqrt_lam),
                    output_curvature_f(net, loss, n, X, y, dloss, lam, sqrt_lam));
}
