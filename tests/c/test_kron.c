/* test_kron.c: unit tests of csrc/kron.c against naive double-precision loops.
 *
 * Standalone: prints "kron: N passed, M failed" and returns non-zero on
 * failure. Build (scipy-openblas32; a system OpenBLAS needs -DPK_BLAS_PREFIX=PK_EMPTY):
 *   LIB=$(python3 -c "import scipy_openblas32 as s; print(s.get_lib_dir())")
 *   cc -std=c11 -Wall -Wextra -Werror -Icsrc -DPK_BLAS_PREFIX=scipy_ tests/c/test_kron.c \
 *      csrc/kron.c csrc/common.c -L$LIB -lscipy_openblas -Wl,-rpath,$LIB -lm -ldl */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pykfac.h"

static int n_pass = 0, n_fail = 0;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (cond) {                                                                           \
            n_pass++;                                                                         \
        } else {                                                                              \
            n_fail++;                                                                         \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                      \
            printf(__VA_ARGS__);                                                              \
            printf("\n");                                                                     \
        }                                                                                     \
    } while (0)

static pk_rng_t rng;

/* ---- naive double helpers ------------------------------------------------ */
static double *dalloc(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(double)); }

/* S = X Xᵀ + shift I with X (n x k) standard normal: SPD for k >= n or shift > 0,
 * rank k otherwise. */
static double *rand_psd(int64_t n, int64_t k, double shift)
{
    double *X = dalloc(n * k), *S = dalloc(n * n);
    for (int64_t i = 0; i < n * k; i++) X[i] = pk_rng_normal(&rng);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = i == j ? shift : 0.0;
            for (int64_t t = 0; t < k; t++) s += X[i * k + t] * X[j * k + t];
            S[i * n + j] = s;
        }
    free(X);
    return S;
}

static double *rand_mat(int64_t n)
{
    double *x = dalloc(n);
    for (int64_t i = 0; i < n; i++) x[i] = pk_rng_normal(&rng);
    return x;
}

/* Theta index of Wbar entry (i, k): W row-major, then the biases. */
static int64_t theta_index(int64_t out, int64_t in, int64_t i, int64_t k)
{
    return k < in ? i * in + k : out * in + i;
}

/* Dense p x p of (G + sg I) (x) (A + sa I) in theta order, by definition. */
static double *naive_dense(int64_t out, int64_t in, const double *G, const double *A, double sg, double sa)
{
    const int64_t q = in + 1, p = out * q;
    double *B = dalloc(p * p);
    for (int64_t i = 0; i < out; i++)
        for (int64_t k = 0; k < q; k++)
            for (int64_t i2 = 0; i2 < out; i2++)
                for (int64_t k2 = 0; k2 < q; k2++) {
                    double g = G[i * out + i2] + (i == i2 ? sg : 0.0);
                    double a = A[k * q + k2] + (k == k2 ? sa : 0.0);
                    B[theta_index(out, in, i, k) * p + theta_index(out, in, i2, k2)] = g * a;
                }
    return B;
}

/* C (n x m) = B (n x n) X (n x m) + shift X */
static double *naive_mul(int64_t n, int64_t m, const double *B, const double *X, double shift)
{
    double *C = dalloc(n * m);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < m; j++) {
            double s = shift * X[i * m + j];
            for (int64_t t = 0; t < n; t++) s += B[i * n + t] * X[t * m + j];
            C[i * m + j] = s;
        }
    return C;
}

/* log det of SPD B (n x n) by an unpivoted Cholesky; NAN if not PD. */
static double naive_logdet(int64_t n, const double *B)
{
    double *L = dalloc(n * n), ld = 0.0;
    for (int64_t j = 0; j < n; j++) {
        double d = B[j * n + j];
        for (int64_t t = 0; t < j; t++) d -= L[j * n + t] * L[j * n + t];
        if (!(d > 0)) {
            free(L);
            return NAN;
        }
        L[j * n + j] = sqrt(d);
        ld += log(d);
        for (int64_t i = j + 1; i < n; i++) {
            double s = B[i * n + j];
            for (int64_t t = 0; t < j; t++) s -= L[i * n + t] * L[j * n + t];
            L[i * n + j] = s / L[j * n + j];
        }
    }
    free(L);
    return ld;
}

static double max_rel_err(int64_t n, const double *x, const double *ref)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (fabs(x[i] - ref[i]) > num) num = fabs(x[i] - ref[i]);
        if (fabs(ref[i]) > den) den = fabs(ref[i]);
    }
    return num / (den > 0 ? den : 1.0);
}

/* ---- dtype plumbing: the kernels run in `dt`, references in double ------- */
static void *to_dt(pk_dtype_t dt, int64_t n, const double *x)
{
    void *y = malloc((size_t)(n > 0 ? n : 1) * pk_dtype_size(dt));
    for (int64_t i = 0; i < n; i++) {
        if (dt == PK_FLOAT64) ((double *)y)[i] = x[i];
        else ((float *)y)[i] = (float)x[i];
    }
    return y;
}

static double *from_dt(pk_dtype_t dt, int64_t n, const void *y)
{
    double *x = dalloc(n);
    for (int64_t i = 0; i < n; i++) x[i] = dt == PK_FLOAT64 ? ((const double *)y)[i] : ((const float *)y)[i];
    return x;
}

static void *dt_alloc(pk_dtype_t dt, int64_t n) { return calloc((size_t)(n > 0 ? n : 1), pk_dtype_size(dt)); }

static double tol_of(pk_dtype_t dt) { return dt == PK_FLOAT64 ? 1e-10 : 2e-3; }
static const char *name_of(pk_dtype_t dt) { return dt == PK_FLOAT64 ? "f64" : "f32"; }

/* ---- tests ------------------------------------------------------------------ */
static void test_sym_eigh(pk_dtype_t dt)
{
    const int64_t n = 7;
    double *M = rand_psd(n, 3, 0.0); /* rank 3: exercises repeated zero eigenvalues */
    void *Mt = to_dt(dt, n * n, M), *w = dt_alloc(dt, n), *Q = dt_alloc(dt, n * n);
    void *Mcopy = to_dt(dt, n * n, M);
    int rc = pk_sym_eigh(dt, n, Mt, w, Q);
    CHECK(rc == PK_OK, "%s sym_eigh rc %d", name_of(dt), rc);
    double *wd = from_dt(dt, n, w), *Qd = from_dt(dt, n * n, Q);
    double *R = dalloc(n * n), *I = dalloc(n * n), *E = dalloc(n * n);
    int ascending = 1;
    for (int64_t i = 1; i < n; i++) ascending &= wd[i - 1] <= wd[i];
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double r = 0.0, o = 0.0;
            for (int64_t t = 0; t < n; t++) {
                r += Qd[i * n + t] * wd[t] * Qd[j * n + t]; /* Q diag(w) Qᵀ */
                o += Qd[t * n + i] * Qd[t * n + j];         /* Qᵀ Q */
            }
            R[i * n + j] = r;
            I[i * n + j] = o;
            E[i * n + j] = i == j;
        }
    /* column j of Q is an eigenvector: M q_j = w_j q_j */
    double resid = 0.0;
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < n; i++) {
            double s = -wd[j] * Qd[i * n + j];
            for (int64_t t = 0; t < n; t++) s += M[i * n + t] * Qd[t * n + j];
            if (fabs(s) > resid) resid = fabs(s);
        }
    double scale = wd[n - 1];
    CHECK(ascending, "%s sym_eigh not ascending", name_of(dt));
    CHECK(max_rel_err(n * n, R, M) < tol_of(dt), "%s Q diag(w) Q^T != M", name_of(dt));
    CHECK(max_rel_err(n * n, I, E) < tol_of(dt), "%s Q^T Q != I", name_of(dt));
    CHECK(resid < tol_of(dt) * scale, "%s eigenvector residual %g", name_of(dt), resid);
    CHECK(memcmp(Mt, Mcopy, (size_t)(n * n) * pk_dtype_size(dt)) == 0, "%s sym_eigh modified M", name_of(dt));

    /* NaN is rejected before LAPACK sees it */
    if (dt == PK_FLOAT64) ((double *)Mt)[3] = NAN;
    else ((float *)Mt)[3] = NAN;
    rc = pk_sym_eigh(dt, n, Mt, w, Q);
    CHECK(rc == PK_ERR_NONFINITE, "%s sym_eigh NaN rc %d", name_of(dt), rc);
    CHECK(pk_sym_eigh(dt, 0, NULL, NULL, NULL) == PK_OK, "sym_eigh n = 0");
    CHECK(pk_sym_eigh(dt, -1, Mt, w, Q) == PK_ERR_BAD_ARG, "sym_eigh n < 0");
    CHECK(pk_sym_eigh(dt, (int64_t)1 << 20, Mt, w, Q) == PK_ERR_TOO_LARGE, "sym_eigh too large");
    free(M), free(Mt), free(Mcopy), free(w), free(Q), free(wd), free(Qd), free(R), free(I), free(E);
}

static void test_layer(pk_dtype_t dt, int64_t out, int64_t in, int64_t m)
{
    const int64_t q = in + 1, p = out * q;
    const double tol = tol_of(dt);
    double *G = rand_psd(out, out + 2, 0.0), *A = rand_psd(q, q + 2, 0.0), *V = rand_mat(p * m);
    void *Gt = to_dt(dt, out * out, G), *At = to_dt(dt, q * q, A), *Vt = to_dt(dt, p * m, V);
    void *R = dt_alloc(dt, p * m), *R2 = dt_alloc(dt, p * m);
    void *wG = dt_alloc(dt, out), *QG = dt_alloc(dt, out * out), *wA = dt_alloc(dt, q), *QA = dt_alloc(dt, q * q);
    double *K = naive_dense(out, in, G, A, 0.0, 0.0);
    char tag[64];
    snprintf(tag, sizeof tag, "%s out=%ld in=%ld m=%ld", name_of(dt), (long)out, (long)in, (long)m);

    /* to_dense into a padded buffer: only the p x p block is written */
    const int64_t ld = p + 3;
    double *Bref = dalloc(ld * ld);
    for (int64_t i = 0; i < ld * ld; i++) Bref[i] = -7.0;
    void *Bt = to_dt(dt, ld * ld, Bref);
    for (int64_t i = 0; i < p; i++) memcpy(Bref + i * ld, K + i * p, (size_t)p * sizeof(double));
    int rc = pk_kron_to_dense(dt, out, in, Gt, At, Bt, ld);
    double *Bd = from_dt(dt, ld * ld, Bt);
    CHECK(rc == PK_OK && max_rel_err(ld * ld, Bd, Bref) < tol, "%s to_dense", tag);
    CHECK(pk_kron_to_dense(dt, out, in, Gt, At, Bt, p - 1) == PK_ERR_BAD_ARG, "%s to_dense ldb < p", tag);

    /* matvec */
    rc = pk_kron_matvec(dt, out, in, Gt, At, m, Vt, R);
    double *Rd = from_dt(dt, p * m, R), *ref = naive_mul(p, m, K, V, 0.0);
    CHECK(rc == PK_OK && max_rel_err(p * m, Rd, ref) < tol, "%s matvec err %g", tag, max_rel_err(p * m, Rd, ref));
    free(Rd), free(ref);

    CHECK(pk_sym_eigh(dt, out, Gt, wG, QG) == PK_OK && pk_sym_eigh(dt, q, At, wA, QA) == PK_OK, "%s eigh", tag);

    /* exact damping: (K + d I) R = V and power 1 gives (K + d I) V */
    const double d = 0.3;
    double *Kd = naive_dense(out, in, G, A, 0.0, 0.0);
    for (int64_t i = 0; i < p; i++) Kd[i * p + i] += d;
    rc = pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, d, PK_DAMP_EXACT, 1.0, -1.0, m, Vt, R);
    Rd = from_dt(dt, p * m, R);
    ref = naive_mul(p, m, Kd, Rd, 0.0);
    CHECK(rc == PK_OK && max_rel_err(p * m, ref, V) < tol, "%s exact solve", tag);
    free(Rd), free(ref);
    rc = pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, d, PK_DAMP_EXACT, 1.0, 1.0, m, Vt, R);
    Rd = from_dt(dt, p * m, R);
    ref = naive_mul(p, m, Kd, V, 0.0);
    CHECK(rc == PK_OK && max_rel_err(p * m, Rd, ref) < tol, "%s power 1", tag);
    free(Rd), free(ref);

    /* (-0.5 twice) == -1 and (0.5 twice) == 1 */
    const double powers[2] = {-0.5, 0.5};
    for (int t = 0; t < 2; t++) {
        int rc1 = pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, d, PK_DAMP_EXACT, 1.0, powers[t], m, Vt, R);
        int rc2 = pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, d, PK_DAMP_EXACT, 1.0, powers[t], m, R, R2);
        int rc3 = pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, d, PK_DAMP_EXACT, 1.0, 2 * powers[t], m, Vt, R);
        double *a = from_dt(dt, p * m, R2), *b = from_dt(dt, p * m, R);
        CHECK(!rc1 && !rc2 && !rc3 && max_rel_err(p * m, a, b) < tol, "%s power %g twice", tag, powers[t]);
        free(a), free(b);
    }

    /* factored damping: (sG + g/pi I) (x) (A + g pi I), with a scale s */
    const double s = 0.7, pi = 1.3, g = sqrt(d);
    double *Gs = dalloc(out * out);
    for (int64_t i = 0; i < out * out; i++) Gs[i] = s * G[i];
    double *Kf = naive_dense(out, in, Gs, A, g / pi, g * pi);
    rc = pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, s, d, PK_DAMP_FACTORED, pi, -1.0, m, Vt, R);
    Rd = from_dt(dt, p * m, R);
    ref = naive_mul(p, m, Kf, Rd, 0.0);
    CHECK(rc == PK_OK && max_rel_err(p * m, ref, V) < tol, "%s factored solve", tag);
    free(Rd), free(ref);

    /* log-dets against a Cholesky of the dense matrices */
    double ld1 = 0.0, ld2 = 0.0, ref1 = naive_logdet(p, Kd), ref2 = naive_logdet(p, Kf);
    rc = pk_kron_logdet(dt, out, in, wG, wA, 1.0, d, PK_DAMP_EXACT, 1.0, &ld1);
    CHECK(rc == PK_OK && fabs(ld1 - ref1) < tol * (1 + fabs(ref1)) * p, "%s logdet %g vs %g", tag, ld1, ref1);
    rc = pk_kron_logdet(dt, out, in, wG, wA, s, d, PK_DAMP_FACTORED, pi, &ld2);
    CHECK(rc == PK_OK && fabs(ld2 - ref2) < tol * (1 + fabs(ref2)) * p, "%s factored logdet %g vs %g", tag, ld2, ref2);

    /* in place (R == V) gives the same result */
    void *Vin = to_dt(dt, p * m, V);
    rc = pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, d, PK_DAMP_EXACT, 1.0, -1.0, m, Vt, R);
    int rc2 = pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, d, PK_DAMP_EXACT, 1.0, -1.0, m, Vin, Vin);
    CHECK(!rc && !rc2 && memcmp(Vin, R, (size_t)(p * m) * pk_dtype_size(dt)) == 0, "%s in place", tag);
    free(Vin);

    /* m = 0 is a no-op; V/R untouched inputs */
    CHECK(pk_kron_matvec(dt, out, in, Gt, At, 0, NULL, NULL) == PK_OK, "%s matvec m = 0", tag);
    void *Vcopy = to_dt(dt, p * m, V);
    CHECK(memcmp(Vcopy, Vt, (size_t)(p * m) * pk_dtype_size(dt)) == 0, "%s V modified", tag);
    free(Vcopy);

    free(G), free(A), free(V), free(Gt), free(At), free(Vt), free(R), free(R2), free(wG), free(QG);
    free(wA), free(QA), free(K), free(Kd), free(Kf), free(Gs), free(Bref), free(Bt), free(Bd);
}

/* A rank-deficient G with zero damping must fail cleanly, never give NaN/Inf. */
static void test_singular(pk_dtype_t dt)
{
    const int64_t out = 4, in = 3, q = in + 1, p = out * q;
    double *G = rand_psd(out, 2, 0.0), *A = rand_psd(q, q + 2, 0.0), *V = rand_mat(p);
    void *Gt = to_dt(dt, out * out, G), *At = to_dt(dt, q * q, A), *Vt = to_dt(dt, p, V);
    void *R = dt_alloc(dt, p);
    void *wG = dt_alloc(dt, out), *QG = dt_alloc(dt, out * out), *wA = dt_alloc(dt, q), *QA = dt_alloc(dt, q * q);
    int rc = pk_sym_eigh(dt, out, Gt, wG, QG) | pk_sym_eigh(dt, q, At, wA, QA);
    CHECK(rc == PK_OK, "%s singular eigh", name_of(dt));
    double ld = 0.0;
    rc = pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, 0.0, PK_DAMP_EXACT, 1.0, -1.0, 1, Vt, R);
    CHECK(rc == PK_ERR_SINGULAR, "%s singular solve rc %d", name_of(dt), rc);
    rc = pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, 0.0, PK_DAMP_EXACT, 1.0, -0.5, 0, NULL, NULL);
    CHECK(rc == PK_ERR_SINGULAR, "%s singular is reported even for m = 0: rc %d", name_of(dt), rc);
    rc = pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, 0.0, PK_DAMP_FACTORED, 1.0, -1.0, 1, Vt, R);
    CHECK(rc == PK_ERR_SINGULAR, "%s singular factored rc %d", name_of(dt), rc);
    rc = pk_kron_logdet(dt, out, in, wG, wA, 1.0, 0.0, PK_DAMP_EXACT, 1.0, &ld);
    CHECK(rc == PK_ERR_SINGULAR, "%s singular logdet rc %d", name_of(dt), rc);
    /* square root of a PSD block exists; with damping everything works */
    rc = pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, 0.0, PK_DAMP_EXACT, 1.0, 0.5, 1, Vt, R);
    CHECK(rc == PK_OK, "%s sqrt of singular PSD rc %d", name_of(dt), rc);
    rc = pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, 1e-2, PK_DAMP_EXACT, 1.0, -1.0, 1, Vt, R);
    double *Rd = from_dt(dt, p, R);
    int finite = 1;
    for (int64_t i = 0; i < p; i++) finite &= isfinite(Rd[i]);
    CHECK(rc == PK_OK && finite, "%s damped singular solve rc %d", name_of(dt), rc);

    /* argument errors */
    CHECK(pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, 0.1, PK_DAMP_EXACT, 1.0, 2.0, 1, Vt, R) == PK_ERR_BAD_ARG, "power 2");
    CHECK(pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, 0.1, PK_DAMP_FACTORED, 0.0, -1.0, 1, Vt, R) == PK_ERR_BAD_ARG, "pi 0");
    CHECK(pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, -0.1, PK_DAMP_FACTORED, 1.0, -1.0, 1, Vt, R) == PK_ERR_BAD_ARG, "factored damping < 0");
    CHECK(pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, NAN, PK_DAMP_EXACT, 1.0, -1.0, 1, Vt, R) == PK_ERR_BAD_ARG, "NaN damping");
    CHECK(pk_kron_eig_apply(dt, out, in, wG, QG, wA, QA, 1.0, 0.1, (pk_damp_t)5, 1.0, -1.0, 1, Vt, R) == PK_ERR_BAD_ARG, "bad mode");
    CHECK(pk_kron_matvec(dt, -1, in, Gt, At, 1, Vt, R) == PK_ERR_BAD_ARG, "out < 0");
    CHECK(pk_kron_matvec(dt, out, in, NULL, At, 1, Vt, R) == PK_ERR_BAD_ARG, "NULL G");
    CHECK(pk_kron_matvec((pk_dtype_t)9, out, in, Gt, At, 1, Vt, R) == PK_ERR_DTYPE, "bad dtype");
    CHECK(pk_kron_matvec(dt, (int64_t)1 << 31, in, Gt, At, 1, Vt, R) == PK_ERR_TOO_LARGE, "too large");
    CHECK(pk_kron_logdet(dt, out, in, wG, wA, 1.0, 0.1, PK_DAMP_EXACT, 1.0, NULL) == PK_ERR_BAD_ARG, "NULL logdet");
    free(G), free(A), free(V), free(Gt), free(At), free(Vt), free(R), free(wG), free(QG), free(wA), free(QA), free(Rd);
}

int main(void)
{
    pk_rng_seed(&rng, 20240601);
    const pk_dtype_t dts[2] = {PK_FLOAT64, PK_FLOAT32};
    for (int t = 0; t < 2; t++) {
        test_sym_eigh(dts[t]);
        test_layer(dts[t], 3, 4, 1);
        test_layer(dts[t], 5, 2, 4);
        test_layer(dts[t], 1, 6, 3);
        test_layer(dts[t], 4, 0, 2); /* bias-only layer: q = 1 */
        test_singular(dts[t]);
    }
    CHECK(strcmp(pk_strerror(PK_ERR_SINGULAR), pk_strerror(12345)) != 0, "SINGULAR has a message");
    printf("kron: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail != 0;
}
