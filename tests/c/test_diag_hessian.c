/* test_diag_hessian.c: C tests of pk_diag_hessian (csrc/mlp.c, mlp_impl.inc
 * diag_hessian), the diagonal of the exact Hessian of
 * L(theta) = sum_n loss(y_n, f(x_n, theta)) computed without forming H.
 *
 * Two independent float64 references for every network, activation and loss:
 *  - the diagonal of the dense Hessian from pk_hessian (a different kernel:
 *    one R-op per parameter, no factored pre-activation Hessians);
 *  - central finite differences of the gradient from pk_loss_grad,
 *    H_jj ~ (g_j(theta + h e_j) - g_j(theta - h e_j)) / (2 h).
 * Plus: float32 against float64, the row-chunked / blocked path of a wide
 * network against Hessian-vector products with unit vectors, accumulation
 * (out +=, loss_out +=), and every documented error code ("as pk_hessian").
 *
 * Compiled in when run.sh finds the MLP engine (PK_TEST_HAVE_MLP). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pk_test.h"
#include "pk_test_data.h"
#include "pykfac.h"

#ifdef PK_TEST_HAVE_MLP

/* ---- helpers ------------------------------------------------------------ */

static double max_abs(const double *x, long n)
{
    double m = 0;
    for (long i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

static const char *act_name(pk_act_t a)
{
    static const char *names[PK_ACT_COUNT] = {"identity", "relu", "leaky_relu", "elu",
                                              "tanh",     "sigmoid", "softplus", "gelu"};
    return (int)a >= 0 && a < PK_ACT_COUNT ? names[a] : "?";
}

static const char *loss_name(pk_loss_t l)
{
    return l == PK_LOSS_MSE ? "mse" : l == PK_LOSS_CE ? "ce" : l == PK_LOSS_BCE ? "bce" : "?";
}

/* phi'' == 0 everywhere (a.e.): the Hessian's diagonal is the GGN's. */
static int act_flat(pk_act_t a) { return a == PK_ACT_IDENTITY || a == PK_ACT_RELU || a == PK_ACT_LEAKY_RELU; }

/* A test problem: a network (float64 theta), n inputs and labels of `loss`. */
enum { MAXL = 5 };
typedef struct {
    int L;
    int64_t sizes[MAXL + 1];
    pk_act_t acts[MAXL];
    long D, n, K;
    pk_loss_t loss;
    double *theta, *X, *Yf; /* Yf: mse targets (n x K) or bce labels (n) */
    int64_t *labels;        /* ce labels (n) */
    pk_mlp_t net;
} problem_t;

/* widths[0..L-1] are the input and hidden widths; the output width K follows
 * from the loss (1 for bce, K_other otherwise). acts[0..L-2] hidden activations. */
static void problem_init(problem_t *p, int L, const int64_t *widths, int64_t K_other, const pk_act_t *acts,
                         pk_loss_t loss, long n, uint64_t seed)
{
    memset(p, 0, sizeof *p);
    p->L = L;
    for (int l = 0; l < L; l++) p->sizes[l] = widths[l];
    p->K = loss == PK_LOSS_BCE ? 1 : K_other;
    p->sizes[L] = p->K;
    for (int l = 0; l < L - 1; l++) p->acts[l] = acts[l];
    p->D = 0;
    for (int l = 0; l < L; l++) p->D += (long)(p->sizes[l + 1] * (p->sizes[l] + 1));
    p->n = n;
    p->loss = loss;
    p->theta = dalloc(p->D);
    p->X = dalloc(n * p->sizes[0]);
    p->Yf = dalloc(n * p->K);
    p->labels = calloc((size_t)n, sizeof(int64_t));
    if (!p->labels) exit(2);
    fill_normal(p->theta, p->D, seed, 0.7);
    fill_normal(p->X, n * p->sizes[0], seed + 1000, 1.0);
    fill_normal(p->Yf, n * p->K, seed + 2000, 1.0);
    pk_rng_t r;
    pk_rng_seed(&r, seed + 3000);
    for (long i = 0; i < n; i++) p->labels[i] = (int64_t)(pk_rng_next(&r) % (uint64_t)p->K);
    if (loss == PK_LOSS_BCE)
        for (long i = 0; i < n; i++) p->Yf[i] = (double)(pk_rng_next(&r) % 2);
    pk_mlp_t net = {PK_FLOAT64, L, p->sizes, L > 1 ? p->acts : NULL, p->theta};
    p->net = net;
}

static const void *problem_y(const problem_t *p)
{
    return p->loss == PK_LOSS_CE ? (const void *)p->labels : (const void *)p->Yf;
}

static void problem_free(problem_t *p)
{
    free(p->theta), free(p->X), free(p->Yf), free(p->labels);
}

static void describe(const problem_t *p, const char *what, char *buf, size_t size)
{
    int k = snprintf(buf, size, "%s: sizes", what);
    for (int l = 0; l <= p->L && k > 0 && (size_t)k < size; l++)
        k += snprintf(buf + k, size - (size_t)k, "%s%lld", l ? "-" : " ", (long long)p->sizes[l]);
    for (int l = 0; l < p->L - 1 && k > 0 && (size_t)k < size; l++)
        k += snprintf(buf + k, size - (size_t)k, "%s%s", l ? "," : " acts ", act_name(p->acts[l]));
    if (k > 0 && (size_t)k < size) snprintf(buf + k, size - (size_t)k, " loss %s", loss_name(p->loss));
}

/* ---- float64: dense Hessian, finite differences, diag GGN, accumulation ---- */

/* Checks of one problem; returns nothing, reports through pk_test_fail. */
static void check_problem(problem_t *p)
{
    const long D = p->D, n = p->n;
    const void *y = problem_y(p);
    char what[200];
    double *diag = dalloc(D), *H = dalloc(D * D), *ref = dalloc(D), *fd = dalloc(D);
    double *gp = dalloc(D), *gm = dalloc(D), *dg = dalloc(D), *acc = dalloc(D), *want = dalloc(D);
    double lossv = NAN, loss_ref = NAN;

    CHECK_INT_EQ(pk_diag_hessian(&p->net, p->loss, n, p->X, y, diag, NULL), PK_OK);
    CHECK_INT_EQ(pk_hessian(&p->net, p->loss, n, p->X, y, H), PK_OK);
    for (long j = 0; j < D; j++) ref[j] = H[j * D + j];
    const double scale = max_abs(ref, D);

    /* the dense Hessian's diagonal: two exact float64 algorithms, so only
     * rounding separates them (sums of O(n * K * width) terms of size <= scale) */
    describe(p, "vs diag(pk_hessian)", what, sizeof what);
    pk_test_allclose(diag, ref, D, 1e-10, 1e-12 * (1 + scale), __FILE__, __LINE__, what);

    /* central differences of the gradient: truncation h^2/6 |g'''| ~ 2e-11 and
     * rounding eps |g| / h ~ 2e-11 for h = 1e-5 and O(1) derivatives */
    for (long j = 0; j < D; j++) {
        const double h = 1e-5, keep = p->theta[j];
        p->theta[j] = keep + h;
        CHECK_INT_EQ(pk_loss_grad(&p->net, p->loss, n, p->X, y, NULL, gp), PK_OK);
        p->theta[j] = keep - h;
        CHECK_INT_EQ(pk_loss_grad(&p->net, p->loss, n, p->X, y, NULL, gm), PK_OK);
        p->theta[j] = keep;
        fd[j] = (gp[j] - gm[j]) / (2 * h);
    }
    describe(p, "vs finite differences of pk_loss_grad", what, sizeof what);
    pk_test_allclose(diag, fd, D, 1e-6, 1e-7 * (1 + max_abs(fd, D)), __FILE__, __LINE__, what);

    /* documented: with phi'' = 0 in every hidden layer the residual's diagonal
     * vanishes (f is multilinear in the weights) and the result is diag_ggn's */
    int flat = 1;
    for (int l = 0; l < p->L - 1; l++) flat &= act_flat(p->acts[l]);
    CHECK_INT_EQ(pk_diag_curvature(&p->net, PK_FISHER_EXACT, p->loss, n, p->X, y, 0, NULL, dg, NULL), PK_OK);
    if (flat) {
        describe(p, "piecewise-linear net: vs pk_diag_curvature EXACT", what, sizeof what);
        pk_test_allclose(diag, dg, D, 1e-12, 1e-14 * (1 + scale), __FILE__, __LINE__, what);
    }

    /* out += and loss_out +=, starting from arbitrary values */
    fill_normal(acc, D, 99, 1.0);
    for (long j = 0; j < D; j++) want[j] = acc[j] + diag[j];
    CHECK_INT_EQ(pk_loss_grad(&p->net, p->loss, n, p->X, y, &loss_ref, NULL), PK_OK);
    lossv = 1.25;
    CHECK_INT_EQ(pk_diag_hessian(&p->net, p->loss, n, p->X, y, acc, &lossv), PK_OK);
    describe(p, "accumulates into out", what, sizeof what);
    pk_test_allclose(acc, want, D, 1e-14, 1e-14, __FILE__, __LINE__, what);
    CHECK_CLOSE(lossv, 1.25 + loss_ref, 1e-13, 1e-13);
    /* deterministic: the same call twice gives the same bits */
    double *again = dalloc(D);
    CHECK_INT_EQ(pk_diag_hessian(&p->net, p->loss, n, p->X, y, again, NULL), PK_OK);
    CHECK(memcmp(again, diag, sizeof(double) * (size_t)D) == 0);

    free(again);
    free(diag), free(H), free(ref), free(fd), free(gp), free(gm), free(dg), free(acc), free(want);
}

/* The shapes: the input and hidden widths (the output width is set per loss). */
typedef struct {
    int L;
    int64_t widths[MAXL];
    int64_t K; /* output width for mse and ce (bce: 1) */
} shape_t;

static const shape_t shapes[] = {
    {1, {3}, 2},             /* one linear layer: H = GGN */
    {2, {3, 5}, 3},          /* one hidden layer */
    {3, {3, 4, 3}, 2},       /* 3-4-3-2 (bce: 3-4-3-1) */
    {4, {2, 3, 3, 3}, 1},    /* 2-3-3-3-1 (ce: 2-3-3-3-3): a residual stack from hidden layer 2 */
    {5, {2, 3, 2, 3, 2}, 2}, /* four hidden layers: stacks from hidden layers 2 and 3 */
};
enum { NSHAPES = sizeof shapes / sizeof shapes[0] };

static int64_t shape_K(const shape_t *s, pk_loss_t loss)
{
    if (loss == PK_LOSS_BCE) return 1;
    if (loss == PK_LOSS_CE && s->K < 2) return 3;
    return s->K;
}

static void test_uniform_activations(void)
{
    for (int si = 0; si < NSHAPES; si++)
        for (int a = 0; a < PK_ACT_COUNT; a++) {
            if (shapes[si].L == 1 && a > 0) continue; /* no hidden layer: one net */
            pk_act_t acts[MAXL];
            for (int l = 0; l < MAXL; l++) acts[l] = (pk_act_t)a;
            for (int lo = 0; lo < 3; lo++) {
                pk_loss_t loss = (pk_loss_t)lo;
                problem_t p;
                problem_init(&p, shapes[si].L, shapes[si].widths, shape_K(&shapes[si], loss), acts, loss, 5,
                             1000 * (uint64_t)si + 10 * (uint64_t)a + (uint64_t)lo);
                check_problem(&p);
                problem_free(&p);
            }
        }
}

/* Curved and flat activations interleaved: the lowest curved layer, which
 * hidden layers contribute residual stacks and W o W, all vary. */
static void test_mixed_activations(void)
{
    static const pk_act_t mixes[][4] = {
        {PK_ACT_TANH, PK_ACT_RELU, PK_ACT_SIGMOID, PK_ACT_GELU},
        {PK_ACT_RELU, PK_ACT_GELU, PK_ACT_ELU, PK_ACT_IDENTITY},
        {PK_ACT_RELU, PK_ACT_RELU, PK_ACT_SOFTPLUS, PK_ACT_LEAKY_RELU},
        {PK_ACT_SIGMOID, PK_ACT_IDENTITY, PK_ACT_RELU, PK_ACT_TANH},
        {PK_ACT_IDENTITY, PK_ACT_LEAKY_RELU, PK_ACT_RELU, PK_ACT_ELU},
        {PK_ACT_SOFTPLUS, PK_ACT_TANH, PK_ACT_LEAKY_RELU, PK_ACT_SIGMOID},
    };
    const int nm = (int)(sizeof mixes / sizeof mixes[0]);
    for (int si = 2; si < NSHAPES; si++)
        for (int mi = 0; mi < nm; mi++)
            for (int lo = 0; lo < 3; lo++) {
                pk_loss_t loss = (pk_loss_t)lo;
                problem_t p;
                problem_init(&p, shapes[si].L, shapes[si].widths, shape_K(&shapes[si], loss), mixes[mi], loss, 6,
                             50000 + 1000 * (uint64_t)si + 10 * (uint64_t)mi + (uint64_t)lo);
                check_problem(&p);
                problem_free(&p);
            }
}

/* N copies of one datum give N times its diagonal; batches add up. */
static void test_copies_and_batches(void)
{
    static const pk_act_t acts[3] = {PK_ACT_GELU, PK_ACT_TANH, PK_ACT_SOFTPLUS};
    static const int64_t widths[4] = {2, 3, 3, 3};
    for (int lo = 0; lo < 3; lo++) {
        pk_loss_t loss = (pk_loss_t)lo;
        problem_t p;
        problem_init(&p, 4, widths, 2, acts, loss, 7, 700 + (uint64_t)lo);
        const long D = p.D, K = p.K, d0 = (long)p.sizes[0], n = p.n;
        const void *y = problem_y(&p);
        double *all = dalloc(D), *parts = dalloc(D), *one = dalloc(D), *rep = dalloc(D), want[64];
        CHECK(D <= 64);
        CHECK_INT_EQ(pk_diag_hessian(&p.net, loss, n, p.X, y, all, NULL), PK_OK);
        /* rows [0, 3) then [3, n) into the same output */
        const void *y2 = loss == PK_LOSS_CE ? (const void *)(p.labels + 3)
                                            : (const void *)(p.Yf + 3 * (loss == PK_LOSS_MSE ? K : 1));
        CHECK_INT_EQ(pk_diag_hessian(&p.net, loss, 3, p.X, y, parts, NULL), PK_OK);
        CHECK_INT_EQ(pk_diag_hessian(&p.net, loss, n - 3, p.X + 3 * d0, y2, parts, NULL), PK_OK);
        CHECK_ALLCLOSE(parts, all, D, 1e-13, 1e-13 * (1 + max_abs(all, D)));
        /* five copies of row 0 */
        double *X5 = dalloc(5 * d0), *Y5 = dalloc(5 * K);
        int64_t lab5[5];
        for (int i = 0; i < 5; i++) {
            memcpy(X5 + i * d0, p.X, sizeof(double) * (size_t)d0);
            memcpy(Y5 + i * K, p.Yf, sizeof(double) * (size_t)K);
            lab5[i] = p.labels[0];
        }
        const void *y5 = loss == PK_LOSS_CE ? (const void *)lab5 : (const void *)Y5;
        CHECK_INT_EQ(pk_diag_hessian(&p.net, loss, 1, p.X, y, one, NULL), PK_OK);
        CHECK_INT_EQ(pk_diag_hessian(&p.net, loss, 5, X5, y5, rep, NULL), PK_OK);
        for (long j = 0; j < D && j < 64; j++) want[j] = 5 * one[j];
        CHECK_ALLCLOSE(rep, want, D, 1e-13, 1e-13 * (1 + max_abs(want, D)));
        free(X5), free(Y5), free(all), free(parts), free(one), free(rep);
        problem_free(&p);
    }
}

/* ---- float32 ------------------------------------------------------------ */

/* float32 against float64 on the same (float32-exact) inputs. The float32
 * unit roundoff is u = 2^-24 ~ 6e-8; each entry is a sum over n = 5 samples of
 * products formed through at most four layers of width <= 5, O(100) roundings
 * deep, so its error is bounded by ~ 100 u ~ 6e-6 times the magnitudes of the
 * summed terms (which may cancel: the residual term can offset the GGN term,
 * so the bound is relative to the largest entry, not to each entry). 1e-4 of
 * the largest |entry| leaves a 15x margin; float64 agrees to 1e-10 above. */
static void test_float32(void)
{
    static const pk_act_t acts_list[][4] = {
        {PK_ACT_TANH, PK_ACT_TANH, PK_ACT_TANH, PK_ACT_TANH},
        {PK_ACT_SIGMOID, PK_ACT_SIGMOID, PK_ACT_SIGMOID, PK_ACT_SIGMOID},
        {PK_ACT_SOFTPLUS, PK_ACT_SOFTPLUS, PK_ACT_SOFTPLUS, PK_ACT_SOFTPLUS},
        {PK_ACT_GELU, PK_ACT_GELU, PK_ACT_GELU, PK_ACT_GELU},
        {PK_ACT_ELU, PK_ACT_ELU, PK_ACT_ELU, PK_ACT_ELU},
        {PK_ACT_RELU, PK_ACT_RELU, PK_ACT_RELU, PK_ACT_RELU},
        {PK_ACT_TANH, PK_ACT_RELU, PK_ACT_SIGMOID, PK_ACT_GELU},
    };
    const int na = (int)(sizeof acts_list / sizeof acts_list[0]);
    for (int si = 0; si < NSHAPES; si++)
        for (int ai = 0; ai < na; ai++) {
            if (shapes[si].L == 1 && ai > 0) continue;
            for (int lo = 0; lo < 3; lo++) {
                pk_loss_t loss = (pk_loss_t)lo;
                problem_t p;
                problem_init(&p, shapes[si].L, shapes[si].widths, shape_K(&shapes[si], loss), acts_list[ai], loss,
                             5, 90000 + 1000 * (uint64_t)si + 10 * (uint64_t)ai + (uint64_t)lo);
                const long D = p.D, n = p.n, nx = n * (long)p.sizes[0], ny = n * p.K;
                float *thf = falloc(D), *Xf = falloc(nx), *Yff = falloc(ny), *d32 = falloc(D), *H32 = falloc(D * D);
                for (long i = 0; i < D; i++) p.theta[i] = thf[i] = (float)p.theta[i];
                for (long i = 0; i < nx; i++) p.X[i] = Xf[i] = (float)p.X[i];
                for (long i = 0; i < ny; i++) p.Yf[i] = Yff[i] = (float)p.Yf[i];
                pk_mlp_t nf = p.net;
                nf.dtype = PK_FLOAT32;
                nf.theta = thf;
                const void *yd = problem_y(&p);
                const void *yf = loss == PK_LOSS_CE ? (const void *)p.labels : (const void *)Yff;
                double *d64 = dalloc(D), l64 = 0, l32 = 0;
                CHECK_INT_EQ(pk_diag_hessian(&p.net, loss, n, p.X, yd, d64, &l64), PK_OK);
                CHECK_INT_EQ(pk_diag_hessian(&nf, loss, n, Xf, yf, d32, &l32), PK_OK);
                CHECK_INT_EQ(pk_hessian(&nf, loss, n, Xf, yf, H32), PK_OK);
                const double scale = max_abs(d64, D);
                int ok = 1, ok_dense = 1;
                long worst = -1;
                for (long j = 0; j < D; j++) {
                    double tol = 1e-4 * scale + 1e-4 * fabs(d64[j]);
                    if (!(isfinite(d32[j]) && fabs(d32[j] - d64[j]) <= tol)) ok = 0, worst = worst < 0 ? j : worst;
                    /* the float32 dense Hessian agrees to the same bound */
                    ok_dense &= fabs((double)d32[j] - (double)H32[j * D + j]) <= 2 * tol;
                }
                if (!ok || !ok_dense) {
                    char what[400], desc[200];
                    describe(&p, "float32", desc, sizeof desc);
                    snprintf(what, sizeof what, "%s: %s (first bad entry %ld: %.9g vs float64 %.17g)", desc,
                             ok ? "differs from float32 pk_hessian" : "differs from float64", worst,
                             worst >= 0 ? (double)d32[worst] : 0.0, worst >= 0 ? d64[worst] : 0.0);
                    pk_test_fail(__FILE__, __LINE__, what);
                }
                /* the loss is accumulated in double from float32 values */
                CHECK_CLOSE(l32, l64, 1e-5, 1e-6);
                free(thf), free(Xf), free(Yff), free(d32), free(H32), free(d64);
                problem_free(&p);
            }
        }
}

/* ---- a wide network: several row chunks and reverse-mode blocks ---------- */

/* With a hidden layer of width 128 the reverse-mode stacks hold ~900 values
 * per row, so pk_diag_hessian processes n = 1500 rows in about three blocks (its
 * budget is 2^19 elements per block, mlp.c). Width 128 rather than wider keeps
 * the valgrind run of this file within its time limit. The reference entries are
 * columns of the Hessian from pk_curvature_matvec (R-op) with unit vectors,
 * spread over every layer's weights and biases. */
static void test_wide_chunked(void)
{
    static const int64_t widths[4] = {3, 128, 4, 3};
    static const pk_act_t acts[3] = {PK_ACT_TANH, PK_ACT_SOFTPLUS, PK_ACT_GELU};
    enum { NPICK = 24 };
    for (int lo = 0; lo < 3; lo++) {
        pk_loss_t loss = (pk_loss_t)lo;
        problem_t p;
        problem_init(&p, 4, widths, 3, acts, loss, 1500, 4242 + (uint64_t)lo);
        for (long j = 0; j < p.sizes[1] * (p.sizes[0] + 1); j++) p.theta[j] *= 0.5; /* keep tanh unsaturated */
        const long D = p.D, n = p.n;
        const void *y = problem_y(&p);
        double *diag = dalloc(D), *V = dalloc(D * NPICK), *HV = dalloc(D * NPICK), lossv = 0, loss_ref = 0;
        long pick[NPICK];
        for (int k = 0; k < NPICK; k++) pick[k] = (long)((double)k * (double)(D - 1) / (NPICK - 1));
        pick[1] = 384 + 5;       /* a layer-0 bias (W_0 is 128 x 3) */
        pick[2] = 384 + 127;     /* the last layer-0 bias */
        pick[NPICK - 2] = D - 2; /* an output bias */
        for (int k = 0; k < NPICK; k++) V[pick[k] * NPICK + k] = 1;
        CHECK_INT_EQ(pk_diag_hessian(&p.net, loss, n, p.X, y, diag, &lossv), PK_OK);
        CHECK_INT_EQ(pk_curvature_matvec(&p.net, PK_CURV_HESSIAN, loss, n, p.X, y, NPICK, V, HV), PK_OK);
        CHECK_INT_EQ(pk_loss_grad(&p.net, loss, n, p.X, y, &loss_ref, NULL), PK_OK);
        CHECK_CLOSE(lossv, loss_ref, 1e-12, 0);
        double got[NPICK], want[NPICK];
        for (int k = 0; k < NPICK; k++) got[k] = diag[pick[k]], want[k] = HV[pick[k] * NPICK + k];
        char what[64];
        snprintf(what, sizeof what, "wide net, loss %s: vs Hessian columns", loss_name(loss));
        pk_test_allclose(got, want, NPICK, 1e-9, 1e-11 * (1 + max_abs(diag, D)), __FILE__, __LINE__, what);
        /* and the same rows in two calls of uneven size */
        double *parts = dalloc(D);
        const long cut = 611, K = p.K;
        const void *y2 = loss == PK_LOSS_CE ? (const void *)(p.labels + cut)
                                            : (const void *)(p.Yf + cut * (loss == PK_LOSS_MSE ? K : 1));
        CHECK_INT_EQ(pk_diag_hessian(&p.net, loss, cut, p.X, y, parts, NULL), PK_OK);
        CHECK_INT_EQ(pk_diag_hessian(&p.net, loss, n - cut, p.X + cut * p.sizes[0], y2, parts, NULL), PK_OK);
        snprintf(what, sizeof what, "wide net, loss %s: two batches", loss_name(loss));
        pk_test_allclose(parts, diag, D, 1e-11, 1e-13 * (1 + max_abs(diag, D)), __FILE__, __LINE__, what);
        free(diag), free(V), free(HV), free(parts);
        problem_free(&p);
    }
}

/* ---- errors ------------------------------------------------------------- */

/* A failed call returns `want`, the same code as pk_hessian (the header: "Errors:
 * as pk_hessian"), has a message, and leaves out and loss_out alone. */
static void check_error(const pk_mlp_t *net, pk_loss_t loss, int64_t n, const void *X, const void *y,
                        int use_out, int want, int line)
{
    double out[64], H[64 * 64], lossv = 7.5;
    for (int i = 0; i < 64; i++) out[i] = 3.0 + i;
    int rc = pk_diag_hessian(net, loss, n, X, y, use_out ? out : NULL, &lossv);
    int rc_h = pk_hessian(net, loss, n, X, y, use_out ? H : NULL);
    char what[160];
    if (rc != want) {
        snprintf(what, sizeof what, "pk_diag_hessian returned %d (%s), expected %d (%s)", rc, pk_strerror(rc),
                 want, pk_strerror(want));
        pk_test_fail(__FILE__, line, what);
    }
    if (rc != rc_h) {
        snprintf(what, sizeof what, "pk_diag_hessian returned %d, pk_hessian %d", rc, rc_h);
        pk_test_fail(__FILE__, line, what);
    }
    int untouched = lossv == 7.5;
    for (int i = 0; i < 64; i++) untouched &= out[i] == 3.0 + i;
    if (!untouched) pk_test_fail(__FILE__, line, "a failed call wrote to out or loss_out");
    const char *m = pk_strerror(rc);
    if (!m || !*m) pk_test_fail(__FILE__, line, "no message for the returned code");
}
#define CHECK_ERROR(net, loss, n, X, y, use_out, want) check_error(net, loss, n, X, y, use_out, want, __LINE__)

static void test_errors(void)
{
    static const int64_t sizes[3] = {2, 3, 3};
    static const pk_act_t acts[1] = {PK_ACT_TANH};
    double theta[9 + 12];
    fill_normal(theta, 21, 5, 1.0);
    const pk_mlp_t net = {PK_FLOAT64, 2, sizes, acts, theta};
    double X[4] = {0.5, -1, 2, 0.25}, Y[6] = {0.5, 1, -1, 2, 0, 1};
    int64_t labels[2] = {0, 2};

    /* valid: NULL loss_out is allowed */
    double out[21] = {0};
    CHECK_INT_EQ(pk_diag_hessian(&net, PK_LOSS_CE, 2, X, labels, out, NULL), PK_OK);
    CHECK_INT_EQ(pk_diag_hessian(&net, PK_LOSS_MSE, 2, X, Y, out, NULL), PK_OK);

    /* NULL pointers: PK_ERR_BAD_ARG */
    CHECK_ERROR(NULL, PK_LOSS_CE, 2, X, labels, 1, PK_ERR_BAD_ARG);
    CHECK_ERROR(&net, PK_LOSS_CE, 2, NULL, labels, 1, PK_ERR_BAD_ARG);
    CHECK_ERROR(&net, PK_LOSS_CE, 2, X, NULL, 1, PK_ERR_BAD_ARG);
    CHECK_ERROR(&net, PK_LOSS_MSE, 2, X, NULL, 1, PK_ERR_BAD_ARG);
    CHECK_ERROR(&net, PK_LOSS_CE, 2, X, labels, 0, PK_ERR_BAD_ARG); /* out */
    pk_mlp_t bad = net;
    bad.theta = NULL;
    CHECK_ERROR(&bad, PK_LOSS_CE, 2, X, labels, 1, PK_ERR_BAD_ARG);
    bad = net;
    bad.sizes = NULL;
    CHECK_ERROR(&bad, PK_LOSS_CE, 2, X, labels, 1, PK_ERR_BAD_ARG);
    bad = net;
    bad.acts = NULL; /* a hidden layer without an activation */
    CHECK_ERROR(&bad, PK_LOSS_CE, 2, X, labels, 1, PK_ERR_BAD_ARG);

    /* unknown activation codes: PK_ERR_BAD_ARG */
    const pk_act_t bad_acts[3] = {PK_ACT_COUNT, (pk_act_t)-1, (pk_act_t)1000};
    for (int i = 0; i < 3; i++) {
        bad = net;
        bad.acts = &bad_acts[i];
        CHECK_ERROR(&bad, PK_LOSS_CE, 2, X, labels, 1, PK_ERR_BAD_ARG);
    }

    /* bad sizes: PK_ERR_SHAPE */
    static const int64_t zero_hidden[3] = {2, 0, 3}, zero_in[3] = {0, 3, 3}, zero_out[3] = {2, 3, 0},
                         neg[3] = {2, -3, 3};
    const int64_t *bad_sizes[4] = {zero_hidden, zero_in, zero_out, neg};
    for (int i = 0; i < 4; i++) {
        bad = net;
        bad.sizes = bad_sizes[i];
        CHECK_ERROR(&bad, PK_LOSS_CE, 2, X, labels, 1, PK_ERR_SHAPE);
    }
    const int bad_layers[3] = {0, -1, 65};
    for (int i = 0; i < 3; i++) {
        bad = net;
        bad.n_layers = bad_layers[i];
        CHECK_ERROR(&bad, PK_LOSS_MSE, 2, X, Y, 1, PK_ERR_SHAPE);
    }

    /* unknown dtype: PK_ERR_DTYPE */
    bad = net;
    bad.dtype = (pk_dtype_t)5;
    CHECK_ERROR(&bad, PK_LOSS_CE, 2, X, labels, 1, PK_ERR_DTYPE);

    /* empty batch: PK_ERR_EMPTY (also for n < 0, which cannot be a batch) */
    CHECK_ERROR(&net, PK_LOSS_CE, 0, X, labels, 1, PK_ERR_EMPTY);
    CHECK_ERROR(&net, PK_LOSS_CE, -1, X, labels, 1, PK_ERR_EMPTY);
    CHECK_ERROR(&net, PK_LOSS_MSE, INT64_MIN, X, Y, 1, PK_ERR_EMPTY);

    /* unknown loss codes (far from the defined ones, which may grow), and
     * a loss that does not fit K: PK_ERR_LOSS */
    const pk_loss_t bad_losses[3] = {(pk_loss_t)77, (pk_loss_t)-1, (pk_loss_t)1000};
    for (int i = 0; i < 3; i++) CHECK_ERROR(&net, bad_losses[i], 2, X, Y, 1, PK_ERR_LOSS);
    CHECK_ERROR(&net, PK_LOSS_BCE, 2, X, Y, 1, PK_ERR_LABEL); /* K = 3 bce labels: 0.5 and 2 are not 0/1 */
    static const int64_t s1[3] = {2, 3, 1};
    const pk_mlp_t net1 = {PK_FLOAT64, 2, s1, acts, theta};
    int64_t zeros[2] = {0, 0};
    CHECK_ERROR(&net1, PK_LOSS_CE, 2, X, zeros, 1, PK_ERR_LOSS); /* K = 1 */

    /* labels out of range: PK_ERR_LABEL */
    const int64_t bad_labels[4] = {-1, 3, 1000, INT64_MIN};
    for (int i = 0; i < 4; i++) {
        int64_t lab[2] = {1, bad_labels[i]};
        CHECK_ERROR(&net, PK_LOSS_CE, 2, X, lab, 1, PK_ERR_LABEL);
    }
    const double bad_bce[4] = {0.5, 2, -2, NAN};
    for (int i = 0; i < 4; i++) {
        double yb[2] = {bad_bce[i], 1};
        CHECK_ERROR(&net1, PK_LOSS_BCE, 2, X, yb, 1, PK_ERR_LABEL);
    }
    /* bce accepts -1 as 0 */
    double ym[2] = {-1, 1}, y0[2] = {0, 1}, om[13] = {0}, o0[13] = {0};
    CHECK_INT_EQ(pk_diag_hessian(&net1, PK_LOSS_BCE, 2, X, ym, om, NULL), PK_OK);
    CHECK_INT_EQ(pk_diag_hessian(&net1, PK_LOSS_BCE, 2, X, y0, o0, NULL), PK_OK);
    CHECK_ALLCLOSE(om, o0, 13, 0, 0);

    /* non-finite mse targets: PK_ERR_NONFINITE */
    const double nonfinite[3] = {NAN, INFINITY, -INFINITY};
    for (int i = 0; i < 3; i++) {
        double Yb[6];
        memcpy(Yb, Y, sizeof Y);
        Yb[4] = nonfinite[i];
        CHECK_ERROR(&net, PK_LOSS_MSE, 2, X, Yb, 1, PK_ERR_NONFINITE);
    }

    /* float32 nets go through the same checks */
    float thf[21], Xf[4] = {0.5f, -1, 2, 0.25f};
    for (int i = 0; i < 21; i++) thf[i] = (float)theta[i];
    pk_mlp_t nf = net;
    nf.dtype = PK_FLOAT32;
    nf.theta = thf;
    float of[21] = {0};
    CHECK_INT_EQ(pk_diag_hessian(&nf, PK_LOSS_CE, 2, Xf, labels, of, NULL), PK_OK);
    CHECK_ERROR(&nf, PK_LOSS_CE, 0, Xf, labels, 1, PK_ERR_EMPTY);
    CHECK_ERROR(&nf, PK_LOSS_CE, 2, NULL, labels, 1, PK_ERR_BAD_ARG);
    CHECK_ERROR(&nf, (pk_loss_t)1000, 2, Xf, labels, 1, PK_ERR_LOSS);
    int64_t labf[2] = {3, 0};
    CHECK_ERROR(&nf, PK_LOSS_CE, 2, Xf, labf, 1, PK_ERR_LABEL);
}

#endif /* PK_TEST_HAVE_MLP */

int main(void)
{
#ifdef PK_TEST_HAVE_MLP
    PK_RUN(test_uniform_activations);
    PK_RUN(test_mixed_activations);
    PK_RUN(test_copies_and_batches);
    PK_RUN(test_float32);
    PK_RUN(test_wide_chunked);
    PK_RUN(test_errors);
#else
    printf("test_diag_hessian: MLP kernels not in csrc/ yet; their tests were compiled out\n");
#endif
    return pk_test_summary("test_diag_hessian");
}
