/* test_core.c: C tests of csrc/common.c (status codes, dtypes, RNG, finiteness
 * checks, BLAS information) and of the MLP kernels' edge cases and closed
 * forms (csrc/mlp*.c; compiled in when run.sh finds pk_mlp_check defined).
 *
 * References are computed here with plain loops from the formulas in
 * shared/CONVENTIONS.md (closed forms, finite differences, identities), never
 * by calling another pykfac function for the same quantity. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pk_test.h"
#include "pk_test_data.h"
#include "pykfac.h"

/* ======================================================================
 * common.c
 * ==================================================================== */

static void test_strerror_every_code(void)
{
    const char *msg[1 - PK_ERR_MIN];
    for (int c = PK_OK; c >= PK_ERR_MIN; c--) {
        const char *m = pk_strerror(c);
        CHECK(m != NULL);
        msg[-c] = m ? m : "";
        CHECK(strlen(msg[-c]) > 0);
    }
    /* every code has its own message */
    for (int i = 0; i <= -PK_ERR_MIN; i++)
        for (int j = i + 1; j <= -PK_ERR_MIN; j++) {
            if (strcmp(msg[i], msg[j]) == 0) {
                char what[96];
                snprintf(what, sizeof what, "codes %d and %d share a message", -i, -j);
                pk_test_fail(__FILE__, __LINE__, what);
            }
        }
    /* unknown codes get a fallback that is none of the real messages */
    const int unknown[] = {1, 42, PK_ERR_MIN - 1, -1000, INT_MIN, INT_MAX};
    const char *fallback = pk_strerror(unknown[0]);
    CHECK(fallback != NULL && strlen(fallback) > 0);
    for (size_t u = 0; u < sizeof unknown / sizeof unknown[0]; u++) {
        const char *m = pk_strerror(unknown[u]);
        CHECK(m != NULL);
        if (!m) continue;
        CHECK(strlen(m) > 0);
        CHECK(strcmp(m, fallback) == 0);
        for (int i = 0; i <= -PK_ERR_MIN; i++) CHECK(strcmp(m, msg[i]) != 0);
    }
}

static void test_error_codes_are_negative_and_dense(void)
{
    /* the enum is what the Python layer and pk_strerror rely on */
    const int codes[] = {PK_ERR_BAD_ARG, PK_ERR_NOMEM,   PK_ERR_SHAPE,      PK_ERR_NONFINITE,
                         PK_ERR_LABEL,   PK_ERR_NOT_PD,  PK_ERR_EIG_FAILED, PK_ERR_SINGULAR,
                         PK_ERR_TOO_LARGE, PK_ERR_EMPTY, PK_ERR_DTYPE,      PK_ERR_LOSS};
    int n = (int)(sizeof codes / sizeof codes[0]);
    CHECK_INT_EQ(PK_OK, 0);
    CHECK_INT_EQ(n, -PK_ERR_MIN);
    for (int i = 0; i < n; i++) CHECK_INT_EQ(codes[i], -(i + 1));
}

static void test_dtype_size(void)
{
    CHECK_INT_EQ(pk_dtype_size(PK_FLOAT32), 4);
    CHECK_INT_EQ(pk_dtype_size(PK_FLOAT64), 8);
    CHECK_INT_EQ(pk_dtype_size((pk_dtype_t)2), 0);
    CHECK_INT_EQ(pk_dtype_size((pk_dtype_t)-1), 0);
    CHECK_INT_EQ(pk_dtype_size((pk_dtype_t)1000), 0);
}

/* The header promises xoshiro256** seeded through splitmix64: pin the state
 * after seeding (splitmix64's published outputs from state 0) and the first
 * output, computed here from the published recurrence. */
static uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static void test_rng_algorithm(void)
{
    pk_rng_t r;
    pk_rng_seed(&r, 0);
    CHECK(r.s[0] == UINT64_C(0xe220a8397b1dcdaf));
    CHECK(r.s[1] == UINT64_C(0x6e789e6aa1b965f4));
    CHECK(r.s[2] == UINT64_C(0x06c45d188009454f));
    CHECK(r.s[3] == UINT64_C(0xf88bb8a8724c81ec));
    uint64_t s[4] = {r.s[0], r.s[1], r.s[2], r.s[3]};
    for (int i = 0; i < 100; i++) {
        uint64_t want = rotl64(s[1] * 5, 7) * 9;
        uint64_t t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = rotl64(s[3], 45);
        CHECK(pk_rng_next(&r) == want);
    }
}

static void test_rng_reproducible(void)
{
    const uint64_t seeds[] = {0, 1, 2, 12345, UINT64_MAX};
    for (size_t k = 0; k < sizeof seeds / sizeof seeds[0]; k++) {
        pk_rng_t a, b;
        pk_rng_seed(&a, seeds[k]);
        pk_rng_seed(&b, seeds[k]);
        int same = 1;
        for (int i = 0; i < 1000; i++) same &= pk_rng_next(&a) == pk_rng_next(&b);
        for (int i = 0; i < 100; i++) same &= pk_rng_normal(&a) == pk_rng_normal(&b);
        for (int i = 0; i < 100; i++) same &= pk_rng_uniform(&a) == pk_rng_uniform(&b);
        CHECK(same);
    }
    /* re-seeding restarts the stream */
    pk_rng_t a;
    pk_rng_seed(&a, 99);
    uint64_t first = pk_rng_next(&a);
    for (int i = 0; i < 10; i++) (void)pk_rng_next(&a);
    pk_rng_seed(&a, 99);
    CHECK(pk_rng_next(&a) == first);
}

static void test_rng_seeds_differ(void)
{
    /* neighbouring seeds give unrelated streams: no common value in the
     * first 64 outputs, and outputs are never all equal */
    const uint64_t seeds[] = {0, 1, 2, 3, 1000, UINT64_MAX};
    const int ns = (int)(sizeof seeds / sizeof seeds[0]);
    uint64_t out[6][64];
    for (int k = 0; k < ns; k++) {
        pk_rng_t r;
        pk_rng_seed(&r, seeds[k]);
        for (int i = 0; i < 64; i++) out[k][i] = pk_rng_next(&r);
    }
    for (int a = 0; a < ns; a++)
        for (int b = a + 1; b < ns; b++) {
            int equal = 0;
            for (int i = 0; i < 64; i++) equal += out[a][i] == out[b][i];
            CHECK_INT_EQ(equal, 0);
        }
    int distinct = 0;
    for (int i = 1; i < 64; i++) distinct += out[0][i] != out[0][0];
    CHECK_INT_EQ(distinct, 63);
}

static void test_rng_uniform(void)
{
    pk_rng_t r;
    pk_rng_seed(&r, 7);
    const int n = 100000;
    double sum = 0, sum2 = 0, lo = 1, hi = 0;
    int in_range = 1, below_half = 0;
    int bins[10] = {0};
    for (int i = 0; i < n; i++) {
        double u = pk_rng_uniform(&r);
        in_range &= u >= 0.0 && u < 1.0;
        if (!(u >= 0.0 && u < 1.0)) continue;
        sum += u;
        sum2 += u * u;
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
        below_half += u < 0.5;
        bins[(int)(u * 10)]++;
    }
    CHECK(in_range);
    double mean = sum / n, var = sum2 / n - mean * mean;
    /* 5 standard errors: mean sd = sqrt(1/12/n), var sd = sqrt(1/180/n) */
    CHECK_CLOSE(mean, 0.5, 0, 5 * sqrt(1.0 / 12 / n));
    CHECK_CLOSE(var, 1.0 / 12, 0, 5 * sqrt(1.0 / 180 / n));
    CHECK(lo < 1e-3 && hi > 1 - 1e-3);
    /* each decile holds 10% +- 5 binomial standard errors */
    for (int b = 0; b < 10; b++) CHECK_CLOSE(bins[b], n / 10.0, 0, 5 * sqrt(n * 0.1 * 0.9));
    /* 53 random bits: the values are multiples of 2^-53 */
    pk_rng_seed(&r, 8);
    int on_grid = 1;
    for (int i = 0; i < 1000; i++) {
        double u = pk_rng_uniform(&r) * 0x1.0p53;
        on_grid &= u == floor(u);
    }
    CHECK(on_grid);
}

static void test_rng_normal(void)
{
    pk_rng_t r;
    pk_rng_seed(&r, 2024);
    const int n = 100000;
    double sum = 0, sum2 = 0, sum3 = 0, sum4 = 0;
    int finite = 1, beyond2 = 0;
    for (int i = 0; i < n; i++) {
        double z = pk_rng_normal(&r);
        finite &= isfinite(z);
        sum += z;
        sum2 += z * z;
        sum3 += z * z * z;
        sum4 += z * z * z * z;
        beyond2 += fabs(z) > 2;
    }
    CHECK(finite);
    double mean = sum / n, var = sum2 / n - mean * mean;
    /* standard errors: mean 1/sqrt(n), variance sqrt(2/n), skew sqrt(6/n),
     * fourth moment sqrt(96/n) */
    CHECK_CLOSE(mean, 0.0, 0, 5 / sqrt(n));
    CHECK_CLOSE(var, 1.0, 0, 5 * sqrt(2.0 / n));
    CHECK_CLOSE(sum3 / n, 0.0, 0, 5 * sqrt(15.0 / n));
    CHECK_CLOSE(sum4 / n, 3.0, 0, 5 * sqrt(96.0 / n));
    /* P(|z| > 2) = 0.0455 */
    CHECK_CLOSE(beyond2, n * 0.0455, 0, 5 * sqrt(n * 0.0455 * 0.9545));
}

static void test_rng_fill_normal(void)
{
    pk_rng_t a, b;
    double d[257];
    float f[257];
    pk_rng_seed(&a, 5);
    pk_rng_seed(&b, 5);
    /* fills run on block streams keyed by one word of the generator: reproducible
     * per seed, a different key (and values) on the next call, finite, and a
     * standard normal by their first moments */
    double d2[257];
    CHECK_INT_EQ(pk_rng_fill_normal(&a, PK_FLOAT64, 257, d), PK_OK);
    CHECK_INT_EQ(pk_rng_fill_normal(&b, PK_FLOAT64, 257, d2), PK_OK);
    int same = 1, differ = 0;
    for (int i = 0; i < 257; i++) same &= d[i] == d2[i] && isfinite(d[i]);
    CHECK(same);
    CHECK_INT_EQ(pk_rng_fill_normal(&b, PK_FLOAT64, 257, d2), PK_OK);
    for (int i = 0; i < 257; i++) differ += d[i] != d2[i];
    CHECK(differ > 250);
    float f2[257];
    pk_rng_seed(&a, 5);
    CHECK_INT_EQ(pk_rng_fill_normal(&a, PK_FLOAT32, 257, f), PK_OK);
    pk_rng_seed(&a, 5);
    CHECK_INT_EQ(pk_rng_fill_normal(&a, PK_FLOAT32, 257, f2), PK_OK);
    same = 1;
    for (int i = 0; i < 257; i++) same &= f[i] == f2[i] && isfinite(f[i]);
    CHECK(same);
    {
        enum { NF = 200000 };
        static float big[NF];
        pk_rng_seed(&a, 11);
        CHECK_INT_EQ(pk_rng_fill_normal(&a, PK_FLOAT32, NF, big), PK_OK);
        double m = 0, v = 0;
        for (int i = 0; i < NF; i++) m += big[i];
        m /= NF;
        for (int i = 0; i < NF; i++) v += (big[i] - m) * (big[i] - m);
        v /= NF - 1;
        CHECK_CLOSE(m, 0.0, 0, 5 * sqrt(1.0 / NF));
        CHECK_CLOSE(v, 1.0, 0, 5 * sqrt(2.0 / NF));
        /* the affine form is mean + scale * (the same draws), row by row with a stride */
        static float aff[9 * (NF / 7)];
        float mu[7] = {0, 1, -2, 3.5f, 0, 1e3f, -1e-3f}, sc[7] = {1, 2, 0.5f, 0, 3, 1e-3f, 7};
        pk_rng_seed(&a, 11);
        CHECK_INT_EQ(pk_rng_fill_normal_affine(&a, PK_FLOAT32, NF / 7, 7, mu, sc, 9, aff), PK_OK);
        int ok = 1;
        for (int r = 0; r < NF / 7; r++)
            for (int c = 0; c < 7; c++) ok &= aff[r * 9 + c] == mu[c] + sc[c] * big[r * 7 + c];
        CHECK(ok);
        CHECK_INT_EQ(pk_rng_fill_normal_affine(&a, PK_FLOAT32, 2, 7, mu, sc, 6, aff), PK_ERR_BAD_ARG);
    }
    /* n = 0 writes nothing and accepts NULL */
    CHECK_INT_EQ(pk_rng_fill_normal(&a, PK_FLOAT64, 0, NULL), PK_OK);
    /* errors */
    CHECK_INT_EQ(pk_rng_fill_normal(NULL, PK_FLOAT64, 3, d), PK_ERR_BAD_ARG);
    CHECK_INT_EQ(pk_rng_fill_normal(&a, PK_FLOAT64, -1, d), PK_ERR_BAD_ARG);
    CHECK_INT_EQ(pk_rng_fill_normal(&a, PK_FLOAT64, 3, NULL), PK_ERR_BAD_ARG);
    CHECK_INT_EQ(pk_rng_fill_normal(&a, (pk_dtype_t)9, 3, d), PK_ERR_DTYPE);
}

static void test_check_finite(void)
{
    double d[5] = {0.0, -1.5, DBL_MAX, -DBL_MAX, DBL_MIN / 4}; /* incl. a subnormal */
    float f[5] = {0.0f, -1.5f, FLT_MAX, -FLT_MAX, FLT_MIN / 4};
    CHECK_INT_EQ(pk_check_finite(PK_FLOAT64, 5, d), PK_OK);
    CHECK_INT_EQ(pk_check_finite(PK_FLOAT32, 5, f), PK_OK);
    const double bad_d[3] = {NAN, INFINITY, -INFINITY};
    const float bad_f[3] = {NAN, INFINITY, -INFINITY};
    for (int pos = 0; pos < 5; pos++)
        for (int k = 0; k < 3; k++) {
            double dd[5];
            float ff[5];
            memcpy(dd, d, sizeof d);
            memcpy(ff, f, sizeof f);
            dd[pos] = bad_d[k];
            ff[pos] = bad_f[k];
            CHECK_INT_EQ(pk_check_finite(PK_FLOAT64, 5, dd), PK_ERR_NONFINITE);
            CHECK_INT_EQ(pk_check_finite(PK_FLOAT32, 5, ff), PK_ERR_NONFINITE);
            /* only the first n values are read */
            if (pos == 4) {
                CHECK_INT_EQ(pk_check_finite(PK_FLOAT64, 4, dd), PK_OK);
                CHECK_INT_EQ(pk_check_finite(PK_FLOAT32, 4, ff), PK_OK);
            }
        }
    /* float32 data are checked as float32: 1e39 does not fit a float */
    float big = (float)1e39;
    CHECK_INT_EQ(pk_check_finite(PK_FLOAT32, 1, &big), PK_ERR_NONFINITE);
    CHECK_INT_EQ(pk_check_finite(PK_FLOAT64, 0, NULL), PK_OK);
    CHECK_INT_EQ(pk_check_finite(PK_FLOAT64, -1, d), PK_ERR_BAD_ARG);
    CHECK_INT_EQ(pk_check_finite(PK_FLOAT64, 2, NULL), PK_ERR_BAD_ARG);
    CHECK_INT_EQ(pk_check_finite((pk_dtype_t)3, 2, d), PK_ERR_DTYPE);
}

static void test_blas_info(void)
{
    const char *src = pk_blas_source(), *cfg = pk_blas_config(), *core = pk_blas_corename();
    const char *path = pk_blas_library_path();
    CHECK(src && strlen(src) > 0);
    CHECK(cfg && strstr(cfg, "OpenBLAS") != NULL);
    CHECK(core && strlen(core) > 0);
    CHECK(pk_blas_num_threads() >= 1);
    CHECK(path != NULL);
    /* dladdr finds the OpenBLAS shared object that run.sh linked */
    CHECK(path && strstr(path, "openblas") != NULL);
}

/* ======================================================================
 * MLP kernels (csrc/mlp*.c)
 * ==================================================================== */
#ifdef PK_TEST_HAVE_MLP

static pk_mlp_t mknet(int L, const int64_t *sizes, const pk_act_t *acts, const double *theta)
{
    pk_mlp_t net = {PK_FLOAT64, L, sizes, acts, theta};
    return net;
}

/* Index in theta-order of entry (r, c) of layer's augmented Wbar = [W b]. */
static long wbar_index(long out, long in, long r, long c) { return c < in ? r * in + c : out * in + r; }

/* The layer block of G (x) A (row-major Wbar order) scattered into theta order:
 * B (p x p) with p = out * (in + 1). */
static void kron_block_theta(long out, long in, const double *G, const double *A, double scaleA,
                             double *B)
{
    long q = in + 1, p = out * q;
    for (long r = 0; r < out; r++)
        for (long c = 0; c < q; c++)
            for (long r2 = 0; r2 < out; r2++)
                for (long c2 = 0; c2 < q; c2++)
                    B[wbar_index(out, in, r, c) * p + wbar_index(out, in, r2, c2)] =
                        G[r * out + r2] * A[c * q + c2] * scaleA;
}

/* Copy the diagonal block [off, off+p) of a D x D matrix. */
static void sub_block(const double *M, long D, long off, long p, double *B)
{
    for (long i = 0; i < p; i++)
        for (long j = 0; j < p; j++) B[i * p + j] = M[(off + i) * D + off + j];
}

static double max_abs(const double *x, long n)
{
    double m = 0;
    for (long i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* ---- descriptions ---------------------------------------------------- */

static void test_mlp_check_and_layout(void)
{
    int64_t sizes[3] = {3, 4, 2};
    pk_act_t acts[1] = {PK_ACT_TANH};
    double theta[26] = {0};
    pk_mlp_t net = mknet(2, sizes, acts, theta);
    CHECK_INT_EQ(pk_mlp_check(&net), PK_OK);
    CHECK_INT_EQ(pk_mlp_num_params(&net), 4 * 4 + 2 * 5);
    CHECK_INT_EQ(pk_mlp_layer_offset(&net, 0), 0);
    CHECK_INT_EQ(pk_mlp_layer_offset(&net, 1), 16);
    net.dtype = PK_FLOAT32;
    CHECK_INT_EQ(pk_mlp_check(&net), PK_OK);
    CHECK_INT_EQ(pk_mlp_num_params(&net), 26);
    /* every activation code is accepted */
    for (int a = 0; a < PK_ACT_COUNT; a++) {
        pk_act_t acts2[1] = {(pk_act_t)a};
        pk_mlp_t n2 = mknet(2, sizes, acts2, theta);
        CHECK_INT_EQ(pk_mlp_check(&n2), PK_OK);
    }
    /* one layer needs no activations */
    int64_t s1[2] = {1, 1};
    pk_mlp_t one = mknet(1, s1, NULL, theta);
    CHECK_INT_EQ(pk_mlp_check(&one), PK_OK);
    CHECK_INT_EQ(pk_mlp_num_params(&one), 2);
}

static void test_mlp_check_invalid(void)
{
    int64_t sizes[3] = {3, 4, 2};
    pk_act_t acts[1] = {PK_ACT_TANH};
    double theta[26] = {0}, out[8] = {0}, X[3] = {1, 2, 3};
    pk_mlp_t bad[12];
    int nb = 0;
    static int64_t zero_hidden[3] = {3, 0, 2}, zero_in[3] = {0, 4, 2}, zero_out[3] = {3, 4, 0},
                   neg[3] = {3, -4, 2};
    static pk_act_t act_count[1] = {PK_ACT_COUNT}, act_neg[1] = {(pk_act_t)-1},
                    act_big[1] = {(pk_act_t)1000};
    bad[nb++] = mknet(0, sizes, acts, theta);        /* n_layers 0 */
    bad[nb++] = mknet(-1, sizes, acts, theta);       /* n_layers < 0 */
    bad[nb++] = mknet(2, zero_hidden, acts, theta);  /* a size 0 */
    bad[nb++] = mknet(2, zero_in, acts, theta);
    bad[nb++] = mknet(2, zero_out, acts, theta);
    bad[nb++] = mknet(2, neg, acts, theta);          /* negative size */
    bad[nb++] = mknet(2, sizes, act_count, theta);   /* unknown activation codes */
    bad[nb++] = mknet(2, sizes, act_neg, theta);
    bad[nb++] = mknet(2, sizes, act_big, theta);
    bad[nb++] = mknet(2, sizes, acts, NULL);         /* NULL theta */
    bad[nb++] = mknet(2, NULL, acts, theta);         /* NULL sizes */
    bad[nb++] = mknet(2, sizes, NULL, theta);        /* hidden layer without activation */
    for (int i = 0; i < nb; i++) {
        int rc = pk_mlp_check(&bad[i]);
        if (rc == PK_OK || rc < PK_ERR_MIN) {
            char what[64];
            snprintf(what, sizeof what, "invalid net #%d accepted (rc %d)", i, rc);
            pk_test_fail(__FILE__, __LINE__, what);
        }
        /* the kernels reject it too, without touching memory */
        CHECK(pk_forward(&bad[i], 1, X, out) < 0);
        double loss = -1;
        int64_t labels[1] = {0};
        CHECK(pk_loss_grad(&bad[i], PK_LOSS_CE, 1, X, labels, &loss, NULL) < 0);
    }
    /* pk_mlp_num_params is -1 when the description is invalid (theta is not
     * needed to count, so only check descriptions with a bad shape) */
    for (int i = 0; i < 9; i++) CHECK_INT_EQ(pk_mlp_num_params(&bad[i]), -1);
    /* a bad dtype */
    pk_mlp_t dt = mknet(2, sizes, acts, theta);
    dt.dtype = (pk_dtype_t)5;
    CHECK(pk_mlp_check(&dt) < 0);
    CHECK(pk_forward(&dt, 1, X, out) < 0);
}

/* ---- one linear layer with mse: everything in closed form ------------ */

enum { LN = 3, LIN = 3, LK = 2, LQ = LIN + 1, LD = LK * LQ };
static const double lin_X[LN * LIN] = {1, 0, 2, -1, 1, 0.5, 0.25, -2, 1};
static const double lin_Y[LN * LK] = {0.5, -1, 2, 0, -0.5, 1.5};
/* theta = W (2 x 3) row-major, then b (2) */
static const double lin_theta[LD] = {1, 2, -1, 0.5, -1, 3, 0.1, -0.2};

static void lin_abar(long n, double *abar)
{
    for (long i = 0; i < LIN; i++) abar[i] = lin_X[n * LIN + i];
    abar[LIN] = 1;
}

static void test_linear_mse_closed_form(void)
{
    static const int64_t sizes[2] = {LIN, LK};
    pk_mlp_t net = mknet(1, sizes, NULL, lin_theta);
    CHECK_INT_EQ(pk_mlp_num_params(&net), LD);
    /* hand-computed forward: f = W x + b */
    double F[LN * LK], R[LN * LK]; /* R = f - y */
    for (int n = 0; n < LN; n++)
        for (int k = 0; k < LK; k++) {
            double s = lin_theta[LK * LIN + k];
            for (int i = 0; i < LIN; i++) s += lin_theta[k * LIN + i] * lin_X[n * LIN + i];
            F[n * LK + k] = s;
            R[n * LK + k] = s - lin_Y[n * LK + k];
        }
    /* literal values for the first datum: W x = [1 + 0 - 2, 0.5 + 0 + 6] */
    CHECK_CLOSE(F[0], -1.0 + 0.1, 1e-15, 0);
    CHECK_CLOSE(F[1], 6.5 - 0.2, 1e-15, 0);

    double out[LN * LK];
    CHECK_INT_EQ(pk_forward(&net, LN, lin_X, out), PK_OK);
    CHECK_ALLCLOSE(out, F, LN * LK, 1e-14, 1e-14);
    double feat[LN * LIN];
    CHECK_INT_EQ(pk_features(&net, LN, lin_X, feat), PK_OK);
    CHECK_ALLCLOSE(feat, lin_X, LN * LIN, 0, 0);

    /* loss = 1/2 sum ||f - y||^2; grad_W = sum r x^T, grad_b = sum r */
    double want_loss = 0, want_grad[LD] = {0}, per[LN] = {0};
    for (int n = 0; n < LN; n++) {
        double ab[LQ];
        lin_abar(n, ab);
        for (int k = 0; k < LK; k++) {
            double r = R[n * LK + k];
            per[n] += 0.5 * r * r;
            for (int c = 0; c < LQ; c++) want_grad[wbar_index(LK, LIN, k, c)] += r * ab[c];
        }
        want_loss += per[n];
    }
    double loss = -1, grad[LD];
    CHECK_INT_EQ(pk_loss_grad(&net, PK_LOSS_MSE, LN, lin_X, lin_Y, &loss, grad), PK_OK);
    CHECK_CLOSE(loss, want_loss, 1e-14, 0);
    CHECK_ALLCLOSE(grad, want_grad, LD, 1e-14, 1e-14);
    loss = -1;
    CHECK_INT_EQ(pk_loss_grad(&net, PK_LOSS_MSE, LN, lin_X, lin_Y, &loss, NULL), PK_OK);
    CHECK_CLOSE(loss, want_loss, 1e-14, 0);
    double got_per[LN];
    CHECK_INT_EQ(pk_loss_per_sample(&net, PK_LOSS_MSE, LN, lin_X, lin_Y, got_per), PK_OK);
    CHECK_ALLCLOSE(got_per, per, LN, 1e-14, 0);

    /* Jacobian: J[n, k, (k', c)] = delta_kk' abar_c */
    double wantJ[LN * LK * LD] = {0}, J[LN * LK * LD];
    for (int n = 0; n < LN; n++) {
        double ab[LQ];
        lin_abar(n, ab);
        for (int k = 0; k < LK; k++)
            for (int c = 0; c < LQ; c++) wantJ[(n * LK + k) * LD + wbar_index(LK, LIN, k, c)] = ab[c];
    }
    CHECK_INT_EQ(pk_jacobian(&net, LN, lin_X, J), PK_OK);
    CHECK_ALLCLOSE(J, wantJ, LN * LK * LD, 0, 1e-15);

    /* GGN = Hessian = sum_n I_K (x) abar abar^T; the residual term is 0 */
    double wantG[LD * LD] = {0}, G[LD * LD], H[LD * LD];
    for (int n = 0; n < LN; n++) {
        double ab[LQ];
        lin_abar(n, ab);
        for (int k = 0; k < LK; k++)
            for (int c = 0; c < LQ; c++)
                for (int c2 = 0; c2 < LQ; c2++)
                    wantG[wbar_index(LK, LIN, k, c) * LD + wbar_index(LK, LIN, k, c2)] += ab[c] * ab[c2];
    }
    CHECK_INT_EQ(pk_ggn(&net, PK_LOSS_MSE, LN, lin_X, lin_Y, G), PK_OK);
    CHECK_ALLCLOSE(G, wantG, LD * LD, 1e-14, 1e-14);
    CHECK_INT_EQ(pk_hessian(&net, PK_LOSS_MSE, LN, lin_X, lin_Y, H), PK_OK);
    CHECK_ALLCLOSE(H, wantG, LD * LD, 1e-14, 1e-14);
    double V[LD * 2], GV[LD * 2], wantGV[LD * 2] = {0}, RV[LD * 2], zero[LD * 2] = {0};
    fill_normal(V, LD * 2, 3, 1.0);
    for (int i = 0; i < LD; i++)
        for (int j = 0; j < LD; j++)
            for (int m = 0; m < 2; m++) wantGV[i * 2 + m] += wantG[i * LD + j] * V[j * 2 + m];
    CHECK_INT_EQ(pk_curvature_matvec(&net, PK_CURV_GGN, PK_LOSS_MSE, LN, lin_X, lin_Y, 2, V, GV), PK_OK);
    CHECK_ALLCLOSE(GV, wantGV, LD * 2, 1e-13, 1e-13);
    CHECK_INT_EQ(pk_curvature_matvec(&net, PK_CURV_HESSIAN, PK_LOSS_MSE, LN, lin_X, lin_Y, 2, V, GV), PK_OK);
    CHECK_ALLCLOSE(GV, wantGV, LD * 2, 1e-13, 1e-13);
    CHECK_INT_EQ(pk_curvature_matvec(&net, PK_CURV_RESIDUAL, PK_LOSS_MSE, LN, lin_X, lin_Y, 2, V, RV), PK_OK);
    CHECK_ALLCLOSE(RV, zero, LD * 2, 0, 1e-13);

    /* diagonals: GGN diag = sum abar_c^2; empirical Fisher diag = sum (r_k abar_c)^2 */
    double want_dg[LD] = {0}, want_ef[LD] = {0};
    for (int n = 0; n < LN; n++) {
        double ab[LQ];
        lin_abar(n, ab);
        for (int k = 0; k < LK; k++)
            for (int c = 0; c < LQ; c++) {
                long t = wbar_index(LK, LIN, k, c);
                want_dg[t] += ab[c] * ab[c];
                want_ef[t] += R[n * LK + k] * R[n * LK + k] * ab[c] * ab[c];
            }
    }
    double dg[LD] = {0}, ef[LD] = {0};
    CHECK_INT_EQ(pk_diag_curvature(&net, PK_FISHER_EXACT, PK_LOSS_MSE, LN, lin_X, lin_Y, 0, NULL, dg, NULL), PK_OK);
    CHECK_ALLCLOSE(dg, want_dg, LD, 1e-14, 1e-14);
    CHECK_INT_EQ(pk_diag_curvature(&net, PK_FISHER_EMPIRICAL, PK_LOSS_MSE, LN, lin_X, lin_Y, 0, NULL, ef, NULL), PK_OK);
    CHECK_ALLCLOSE(ef, want_ef, LD, 1e-13, 1e-13);
    /* out += : a second call doubles */
    CHECK_INT_EQ(pk_diag_curvature(&net, PK_FISHER_EXACT, PK_LOSS_MSE, LN, lin_X, lin_Y, 0, NULL, dg, NULL), PK_OK);
    for (int i = 0; i < LD; i++) want_dg[i] *= 2;
    CHECK_ALLCLOSE(dg, want_dg, LD, 1e-14, 1e-14);

    /* K-FAC: A = sum abar abar^T (unnormalised); G = N I for exact (S = I)
     * and for KFRA (Lambda = I); empirical G = sum r r^T */
    double wantA[LQ * LQ] = {0}, wantGe[LK * LK] = {0}, wantGn[LK * LK] = {0};
    for (int n = 0; n < LN; n++) {
        double ab[LQ];
        lin_abar(n, ab);
        for (int c = 0; c < LQ; c++)
            for (int c2 = 0; c2 < LQ; c2++) wantA[c * LQ + c2] += ab[c] * ab[c2];
        for (int k = 0; k < LK; k++)
            for (int k2 = 0; k2 < LK; k2++) wantGe[k * LK + k2] += R[n * LK + k] * R[n * LK + k2];
    }
    for (int k = 0; k < LK; k++) wantGn[k * LK + k] = LN;
    const pk_fisher_t kinds[3] = {PK_FISHER_EXACT, PK_FISHER_KFRA, PK_FISHER_EMPIRICAL};
    for (int t = 0; t < 3; t++) {
        double A[LQ * LQ] = {0}, Gf[LK * LK] = {0};
        void *Ap[1] = {A}, *Gp[1] = {Gf};
        CHECK_INT_EQ(pk_kfac_factors(&net, kinds[t], PK_LOSS_MSE, LN, lin_X, lin_Y, 1, NULL, Ap, Gp, NULL, NULL, NULL), PK_OK);
        CHECK_ALLCLOSE(A, wantA, LQ * LQ, 1e-14, 1e-14);
        CHECK_ALLCLOSE(Gf, kinds[t] == PK_FISHER_EMPIRICAL ? wantGe : wantGn, LK * LK, 1e-13, 1e-13);
    }
}

/* ---- N = 1, hidden width 1, K = 1, bce -------------------------------- */

static void test_bce_tiny(void)
{
    static const int64_t sizes[3] = {1, 1, 1};
    static const pk_act_t acts[1] = {PK_ACT_TANH};
    const double w1 = 0.8, b1 = -0.3, w2 = 1.7, b2 = 0.4, x = 0.7;
    const double theta[4] = {w1, b1, w2, b2};
    pk_mlp_t net = mknet(2, sizes, acts, theta);
    const double h = tanh(w1 * x + b1), f = w2 * h + b2, sig = 1 / (1 + exp(-f));
    const double dh = 1 - h * h;
    /* J = df/dtheta in theta order [w1, b1, w2, b2] */
    const double Jt[4] = {w2 * dh * x, w2 * dh, h, 1};
    const double labels[3] = {1, 0, -1};
    const double want_losses[3] = {log1p(exp(-f)), log1p(exp(f)), log1p(exp(f))};
    for (int t = 0; t < 3; t++) {
        double y = labels[t], ybin = y > 0 ? 1 : 0;
        double loss = -1, grad[4], want[4];
        CHECK_INT_EQ(pk_loss_grad(&net, PK_LOSS_BCE, 1, &x, &y, &loss, grad), PK_OK);
        CHECK_CLOSE(loss, want_losses[t], 1e-14, 0);
        for (int i = 0; i < 4; i++) want[i] = (sig - ybin) * Jt[i];
        CHECK_ALLCLOSE(grad, want, 4, 1e-13, 1e-15);
        /* GGN = sigma (1 - sigma) J^T J */
        double G[16], wantG[16];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) wantG[i * 4 + j] = sig * (1 - sig) * Jt[i] * Jt[j];
        CHECK_INT_EQ(pk_ggn(&net, PK_LOSS_BCE, 1, &x, &y, G), PK_OK);
        CHECK_ALLCLOSE(G, wantG, 16, 1e-13, 1e-15);
    }
    double out = 0;
    CHECK_INT_EQ(pk_forward(&net, 1, &x, &out), PK_OK);
    CHECK_CLOSE(out, f, 1e-15, 0);
    double feat = 0;
    CHECK_INT_EQ(pk_features(&net, 1, &x, &feat), PK_OK);
    CHECK_CLOSE(feat, h, 1e-15, 0);
    double dl, lam, S;
    const double y1 = 1;
    CHECK_INT_EQ(pk_output_curvature(&net, PK_LOSS_BCE, 1, &x, &y1, &dl, &lam, &S), PK_OK);
    CHECK_CLOSE(dl, sig - 1, 1e-14, 1e-16);
    CHECK_CLOSE(lam, sig * (1 - sig), 1e-14, 0);
    CHECK_CLOSE(S * S, sig * (1 - sig), 1e-14, 0);
    /* Exact Hessian: GGN + (dl/df) d2f/dtheta2; d2f is nonzero in
     * (w1,w1), (w1,b1), (b1,b1) via tanh'' and (w1,w2), (b1,w2) via dh */
    double H[16], wantH[16];
    const double d = sig - 1, ddh = -2 * h * dh; /* tanh'' = -2 tanh (1 - tanh^2) */
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) wantH[i * 4 + j] = sig * (1 - sig) * Jt[i] * Jt[j];
    const double xs[2] = {x, 1}; /* ds1/dw1, ds1/db1 */
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 2; j++) wantH[i * 4 + j] += d * w2 * ddh * xs[i] * xs[j];
        wantH[i * 4 + 2] += d * dh * xs[i];
        wantH[2 * 4 + i] += d * dh * xs[i];
    }
    CHECK_INT_EQ(pk_hessian(&net, PK_LOSS_BCE, 1, &x, &y1, H), PK_OK);
    CHECK_ALLCLOSE(H, wantH, 16, 1e-12, 1e-14);
    /* K-FAC with N = 1 is exact on each layer's block (KFLR and KFRA) */
    double G[16];
    CHECK_INT_EQ(pk_ggn(&net, PK_LOSS_BCE, 1, &x, &y1, G), PK_OK);
    const pk_fisher_t kinds[2] = {PK_FISHER_EXACT, PK_FISHER_KFRA};
    for (int t = 0; t < 2; t++) {
        double A0[4] = {0}, A1[4] = {0}, G0[1] = {0}, G1[1] = {0};
        void *Ap[2] = {A0, A1}, *Gp[2] = {G0, G1};
        CHECK_INT_EQ(pk_kfac_factors(&net, kinds[t], PK_LOSS_BCE, 1, &x, &y1, 1, NULL, Ap, Gp, NULL, NULL, NULL), PK_OK);
        const double wantA0[4] = {x * x, x, x, 1}, wantA1[4] = {h * h, h, h, 1};
        CHECK_ALLCLOSE(A0, wantA0, 4, 1e-14, 1e-15);
        CHECK_ALLCLOSE(A1, wantA1, 4, 1e-14, 1e-15);
        double B[4], blk[4];
        kron_block_theta(1, 1, G0, A0, 1.0, B);
        sub_block(G, 4, 0, 2, blk);
        CHECK_ALLCLOSE(B, blk, 4, 1e-12, 1e-15);
        kron_block_theta(1, 1, G1, A1, 1.0, B);
        sub_block(G, 4, 2, 2, blk);
        CHECK_ALLCLOSE(B, blk, 4, 1e-12, 1e-15);
    }
}

/* ---- empty batches, bad arguments ------------------------------------ */

static void test_empty_batch(void)
{
    static const int64_t sizes[3] = {2, 3, 2};
    static const pk_act_t acts[1] = {PK_ACT_RELU};
    double theta[9 + 8];
    fill_normal(theta, 17, 1, 1.0);
    pk_mlp_t net = mknet(2, sizes, acts, theta);
    /* valid, readable pointers: an implementation must not read them for n = 0 */
    double X[2] = {1, 2}, Y[2] = {0, 1}, V[17] = {0}, out[17 * 17], loss = 123;
    int64_t labels[1] = {1};
    double A0[9] = {0}, A1[16] = {0}, G0[9] = {0}, G1[4] = {0};
    void *Ap[2] = {A0, A1}, *Gp[2] = {G0, G1};
    pk_rng_t rng;
    pk_rng_seed(&rng, 0);
    /* every kernel rejects an empty batch with PK_ERR_EMPTY (the Python layer
     * raises ValueError for N = 0 everywhere), and a negative n with some error */
    for (int64_t n = 0; n >= -1; n--) {
        int rc[11];
        rc[0] = pk_loss_grad(&net, PK_LOSS_MSE, n, X, Y, &loss, out);
        rc[1] = pk_loss_grad(&net, PK_LOSS_CE, n, X, labels, &loss, NULL);
        rc[2] = pk_curvature_matvec(&net, PK_CURV_GGN, PK_LOSS_MSE, n, X, Y, 1, V, out);
        rc[3] = pk_hessian(&net, PK_LOSS_CE, n, X, labels, out);
        rc[4] = pk_ggn(&net, PK_LOSS_CE, n, X, labels, out);
        rc[5] = pk_diag_curvature(&net, PK_FISHER_MC, PK_LOSS_CE, n, X, labels, 1, &rng, out, NULL);
        rc[6] = pk_kfac_factors(&net, PK_FISHER_EXACT, PK_LOSS_CE, n, X, labels, 1, NULL, Ap, Gp, NULL, NULL, NULL);
        rc[7] = pk_forward(&net, n, X, out);
        rc[8] = pk_loss_per_sample(&net, PK_LOSS_MSE, n, X, Y, out);
        rc[9] = pk_jacobian(&net, n, X, out);
        rc[10] = pk_output_curvature(&net, PK_LOSS_CE, n, X, labels, out, NULL, NULL);
        for (int k = 0; k < 11; k++) {
            if (n == 0 && rc[k] != PK_ERR_EMPTY) {
                char what[80];
                snprintf(what, sizeof what, "kernel #%d returned %d for n = 0, not PK_ERR_EMPTY", k, rc[k]);
                pk_test_fail(__FILE__, __LINE__, what);
            }
            if (n < 0) CHECK(rc[k] < 0);
        }
    }
    /* the K-FAC accumulators were left alone */
    double zeros[16] = {0};
    CHECK_ALLCLOSE(A1, zeros, 16, 0, 0);
    CHECK_ALLCLOSE(G1, zeros, 4, 0, 0);
}

static void test_bad_arguments(void)
{
    static const int64_t sizes[2] = {2, 3};
    double theta[9];
    fill_normal(theta, 9, 2, 1.0);
    pk_mlp_t net = mknet(1, sizes, NULL, theta);
    double X[4] = {1, 2, 3, 4}, Y[6] = {0}, out[81], loss;
    int64_t labels[2] = {0, 2};
    pk_rng_t rng;
    pk_rng_seed(&rng, 0);
    /* NULL data or outputs */
    CHECK(pk_loss_grad(&net, PK_LOSS_CE, 2, NULL, labels, &loss, NULL) < 0);
    CHECK(pk_loss_grad(&net, PK_LOSS_CE, 2, X, NULL, &loss, NULL) < 0);
    CHECK(pk_forward(&net, 2, NULL, out) < 0);
    CHECK(pk_forward(&net, 2, X, NULL) < 0);
    CHECK(pk_ggn(&net, PK_LOSS_CE, 2, X, labels, NULL) < 0);
    /* unknown loss / curvature / fisher kinds */
    CHECK(pk_loss_grad(&net, (pk_loss_t)7, 2, X, labels, &loss, NULL) < 0);
    CHECK(pk_curvature_matvec(&net, (pk_curv_t)9, PK_LOSS_CE, 2, X, labels, 1, theta, out) < 0);
    CHECK(pk_diag_curvature(&net, (pk_fisher_t)9, PK_LOSS_CE, 2, X, labels, 1, &rng, out, NULL) < 0);
    /* bce with K = 3 outputs reads n x K labels in {0, 1, -1}: Y is all 0 (valid), then 0.5 is not */
    CHECK_INT_EQ(pk_loss_grad(&net, PK_LOSS_BCE, 2, X, Y, &loss, NULL), PK_OK);
    Y[4] = 0.5;
    CHECK_INT_EQ(pk_loss_grad(&net, PK_LOSS_BCE, 2, X, Y, &loss, NULL), PK_ERR_LABEL);
    Y[4] = 0.0;
    /* m < 0 columns */
    CHECK(pk_curvature_matvec(&net, PK_CURV_GGN, PK_LOSS_CE, 2, X, labels, -1, theta, out) < 0);
    CHECK(pk_jvp(&net, 2, X, -1, theta, out) < 0);
    /* MC without a generator, or with negative samples */
    CHECK(pk_diag_curvature(&net, PK_FISHER_MC, PK_LOSS_CE, 2, X, labels, 1, NULL, out, NULL) < 0);
    CHECK(pk_diag_curvature(&net, PK_FISHER_MC, PK_LOSS_CE, 2, X, labels, -1, &rng, out, NULL) < 0);
    double A[9] = {0}, G[9] = {0};
    void *Ap[1] = {A}, *Gp[1] = {G};
    CHECK(pk_kfac_factors(&net, PK_FISHER_MC, PK_LOSS_CE, 2, X, labels, 1, NULL, Ap, Gp, NULL, NULL, NULL) < 0);
    CHECK(pk_kfac_factors(&net, PK_FISHER_MC, PK_LOSS_CE, 2, X, labels, -1, &rng, Ap, Gp, NULL, NULL, NULL) < 0);
    CHECK(pk_kfac_factors(&net, PK_FISHER_EXACT, PK_LOSS_CE, 2, X, labels, 1, NULL, NULL, Gp, NULL, NULL, NULL) < 0);
}

static void test_labels_out_of_range(void)
{
    static const int64_t sizes[3] = {2, 3, 3};
    static const pk_act_t acts[1] = {PK_ACT_TANH};
    double theta[9 + 12];
    fill_normal(theta, 21, 4, 1.0);
    pk_mlp_t net = mknet(2, sizes, acts, theta);
    double X[4] = {0.5, -1, 2, 0.25}, loss, out[21], per[2];
    pk_rng_t rng;
    pk_rng_seed(&rng, 0);
    const int64_t bad[4] = {-1, 3, 1000, INT64_MIN};
    for (int t = 0; t < 4; t++) {
        int64_t labels[2] = {1, bad[t]};
        CHECK_INT_EQ(pk_loss_grad(&net, PK_LOSS_CE, 2, X, labels, &loss, out), PK_ERR_LABEL);
        CHECK_INT_EQ(pk_loss_grad(&net, PK_LOSS_CE, 2, X, labels, &loss, NULL), PK_ERR_LABEL);
        CHECK_INT_EQ(pk_loss_per_sample(&net, PK_LOSS_CE, 2, X, labels, per), PK_ERR_LABEL);
        CHECK_INT_EQ(pk_diag_curvature(&net, PK_FISHER_EMPIRICAL, PK_LOSS_CE, 2, X, labels, 0, NULL, out, NULL), PK_ERR_LABEL);
        CHECK_INT_EQ(pk_curvature_matvec(&net, PK_CURV_HESSIAN, PK_LOSS_CE, 2, X, labels, 1, theta, out), PK_ERR_LABEL);
        double A0[9] = {0}, A1[16] = {0}, G0[9] = {0}, G1[9] = {0};
        void *Ap[2] = {A0, A1}, *Gp[2] = {G0, G1};
        CHECK_INT_EQ(pk_kfac_factors(&net, PK_FISHER_EMPIRICAL, PK_LOSS_CE, 2, X, labels, 1, NULL, Ap, Gp, NULL, NULL, NULL), PK_ERR_LABEL);
    }
    /* bce: labels are 0/1 (and -1 read as 0) */
    static const int64_t s1[3] = {2, 3, 1};
    pk_mlp_t bnet = mknet(2, s1, acts, theta);
    const double badb[4] = {0.5, 2, -2, 3};
    for (int t = 0; t < 4; t++) {
        double y[2] = {1, badb[t]};
        CHECK_INT_EQ(pk_loss_grad(&bnet, PK_LOSS_BCE, 2, X, y, &loss, out), PK_ERR_LABEL);
    }
    double yneg[2] = {-1, 1}, yzero[2] = {0, 1}, l1, l2, g1[13], g2[13];
    CHECK_INT_EQ(pk_loss_grad(&bnet, PK_LOSS_BCE, 2, X, yneg, &l1, g1), PK_OK);
    CHECK_INT_EQ(pk_loss_grad(&bnet, PK_LOSS_BCE, 2, X, yzero, &l2, g2), PK_OK);
    CHECK_CLOSE(l1, l2, 1e-15, 0);
    CHECK_ALLCLOSE(g1, g2, 13, 1e-15, 0);
}

/* ---- huge logits ------------------------------------------------------- */

static void test_huge_logits(void)
{
    /* one linear layer 1 -> 3 with logits (1e4, -1e4, 0) x */
    static const int64_t sizes[2] = {1, 3};
    const double theta[6] = {1e4, -1e4, 0, 0, 0, 0};
    pk_mlp_t net = mknet(1, sizes, NULL, theta);
    const float thetaf[6] = {1e4f, -1e4f, 0, 0, 0, 0};
    pk_mlp_t netf = net;
    netf.dtype = PK_FLOAT32;
    netf.theta = thetaf;
    for (int sgn = -1; sgn <= 1; sgn += 2) {
        double x = sgn;
        float xf = (float)sgn;
        /* p = e_top (top = 0 for x = 1, 1 for x = -1) up to e^-1e4 */
        int top = sgn > 0 ? 0 : 1;
        for (int64_t y = 0; y < 3; y++) {
            double want_loss = y == top ? 0 : (y == 2 ? 1e4 : 2e4);
            double loss = NAN, grad[6], want[6] = {0};
            CHECK_INT_EQ(pk_loss_grad(&net, PK_LOSS_CE, 1, &x, &y, &loss, grad), PK_OK);
            CHECK_CLOSE(loss, want_loss, 1e-12, 1e-12);
            /* grad_W = (p - e_y) x, grad_b = p - e_y */
            for (int k = 0; k < 3; k++) {
                double r = (k == top) - (k == y);
                want[k] = r * x;
                want[3 + k] = r;
            }
            CHECK_ALLCLOSE(grad, want, 6, 1e-12, 1e-12);
            float gradf[6];
            CHECK_INT_EQ(pk_loss_grad(&netf, PK_LOSS_CE, 1, &xf, &y, &loss, gradf), PK_OK);
            CHECK_CLOSE(loss, want_loss, 1e-6, 1e-6);
            for (int k = 0; k < 6; k++) CHECK_CLOSE(gradf[k], want[k], 1e-6, 1e-6);
            double G[36], H[36], dg[6] = {0}, lam[9], S[9], dl[3];
            CHECK_INT_EQ(pk_ggn(&net, PK_LOSS_CE, 1, &x, &y, G), PK_OK);
            CHECK_INT_EQ(pk_hessian(&net, PK_LOSS_CE, 1, &x, &y, H), PK_OK);
            CHECK_INT_EQ(pk_diag_curvature(&net, PK_FISHER_EMPIRICAL, PK_LOSS_CE, 1, &x, &y, 0, NULL, dg, NULL), PK_OK);
            CHECK_INT_EQ(pk_output_curvature(&net, PK_LOSS_CE, 1, &x, &y, dl, lam, S), PK_OK);
            /* p is one-hot up to e^-1e4, so Lambda = diag(p) - p p^T = 0 */
            CHECK(max_abs(G, 36) < 1e-12);
            CHECK(max_abs(H, 36) < 1e-12);
            CHECK(max_abs(lam, 9) < 1e-12);
            CHECK(max_abs(S, 9) < 1e-6);
            CHECK(isfinite(max_abs(dg, 6)) && isfinite(max_abs(dl, 3)));
        }
    }
    /* bce with f = +-1e4 */
    static const int64_t s1[2] = {1, 1};
    const double tb[2] = {1e4, 0};
    pk_mlp_t bnet = mknet(1, s1, NULL, tb);
    for (int sgn = -1; sgn <= 1; sgn += 2)
        for (int y = 0; y <= 1; y++) {
            double x = sgn, yy = y, loss = NAN, grad[2];
            int agree = (sgn > 0) == (y == 1);
            CHECK_INT_EQ(pk_loss_grad(&bnet, PK_LOSS_BCE, 1, &x, &yy, &loss, grad), PK_OK);
            CHECK_CLOSE(loss, agree ? 0 : 1e4, 1e-12, 1e-12);
            /* dl/df = sigma(f) - y */
            double r = (sgn > 0) - y;
            CHECK_CLOSE(grad[0], r * x, 1e-12, 1e-12);
            CHECK_CLOSE(grad[1], r, 1e-12, 1e-12);
        }
}

/* ---- a generic deeper network: identities and finite differences ------- */

typedef struct {
    int64_t sizes[4];
    pk_act_t acts[2];
    double *theta;
    long D;
    pk_mlp_t net;
} testnet_t;

static void testnet_init(testnet_t *t, int64_t in, int64_t h1, int64_t h2, int64_t K, pk_act_t act,
                         uint64_t seed)
{
    t->sizes[0] = in;
    t->sizes[1] = h1;
    t->sizes[2] = h2;
    t->sizes[3] = K;
    t->acts[0] = act;
    t->acts[1] = act;
    t->D = h1 * (in + 1) + h2 * (h1 + 1) + K * (h2 + 1);
    t->theta = dalloc(t->D);
    fill_normal(t->theta, t->D, seed, 0.7);
    t->net = mknet(3, t->sizes, t->acts, t->theta);
}

static double loss_at(const pk_mlp_t *net, pk_loss_t loss, long n, const double *X, const void *y)
{
    double v = NAN;
    CHECK_INT_EQ(pk_loss_grad(net, loss, n, X, y, &v, NULL), PK_OK);
    return v;
}

static void test_gradient_and_hessian_fd(void)
{
    const long n = 4;
    for (int act = 0; act < PK_ACT_COUNT; act++)
        for (int l = 0; l < 3; l++) {
            pk_loss_t loss = (pk_loss_t)l;
            testnet_t t;
            testnet_init(&t, 3, 4, 3, loss == PK_LOSS_BCE ? 1 : 3, (pk_act_t)act, 10 + act);
            const long K = t.sizes[3], D = t.D;
            double X[12], Yf[12];
            int64_t labels[4] = {0, 2, 1, 2};
            fill_normal(X, 12, 20 + act, 1.0);
            fill_normal(Yf, 12, 30, 1.0);
            if (loss == PK_LOSS_BCE)
                for (int i = 0; i < 4; i++) Yf[i] = i % 2;
            const void *y = loss == PK_LOSS_CE ? (const void *)labels : (const void *)Yf;
            double *grad = dalloc(D), *fd = dalloc(D), *H = dalloc(D * D), *Hfd = dalloc(D * D);
            double *gp = dalloc(D), *gm = dalloc(D), lossv;
            CHECK_INT_EQ(pk_loss_grad(&t.net, loss, n, X, y, &lossv, grad), PK_OK);
            /* central differences of the loss and of the gradient */
            for (long j = 0; j < D; j++) {
                const double h = 1e-5, keep = t.theta[j];
                t.theta[j] = keep + h;
                double lp = loss_at(&t.net, loss, n, X, y);
                CHECK_INT_EQ(pk_loss_grad(&t.net, loss, n, X, y, &lossv, gp), PK_OK);
                t.theta[j] = keep - h;
                double lm = loss_at(&t.net, loss, n, X, y);
                CHECK_INT_EQ(pk_loss_grad(&t.net, loss, n, X, y, &lossv, gm), PK_OK);
                t.theta[j] = keep;
                fd[j] = (lp - lm) / (2 * h);
                for (long i = 0; i < D; i++) Hfd[i * D + j] = (gp[i] - gm[i]) / (2 * h);
            }
            char what[64];
            snprintf(what, sizeof what, "act %d loss %d gradient", act, l);
            pk_test_allclose(grad, fd, D, 1e-5, 1e-6 * (1 + max_abs(fd, D)), __FILE__, __LINE__, what);
            CHECK_INT_EQ(pk_hessian(&t.net, loss, n, X, y, H), PK_OK);
            snprintf(what, sizeof what, "act %d loss %d hessian", act, l);
            pk_test_allclose(H, Hfd, D * D, 1e-4, 1e-5 * (1 + max_abs(Hfd, D * D)), __FILE__, __LINE__, what);
            (void)K;
            free(grad), free(fd), free(H), free(Hfd), free(gp), free(gm), free(t.theta);
        }
}

static void test_products_match_dense(void)
{
    const long n = 5, m = 3;
    for (int l = 0; l < 3; l++) {
        pk_loss_t loss = (pk_loss_t)l;
        testnet_t t;
        testnet_init(&t, 4, 5, 3, loss == PK_LOSS_BCE ? 1 : 3, PK_ACT_SOFTPLUS, 40 + l);
        const long K = t.sizes[3], D = t.D;
        double X[20], Yf[15];
        int64_t labels[5] = {2, 0, 1, 1, 0};
        fill_normal(X, 20, 50, 1.0);
        fill_normal(Yf, 15, 51, 1.0);
        if (loss == PK_LOSS_BCE)
            for (int i = 0; i < 5; i++) Yf[i] = (i + 1) % 2;
        const void *y = loss == PK_LOSS_CE ? (const void *)labels : (const void *)Yf;
        double *J = dalloc(n * K * D), *lam = dalloc(n * K * K), *S = dalloc(n * K * K);
        double *dl = dalloc(n * K), *G = dalloc(D * D), *H = dalloc(D * D), *Gref = dalloc(D * D);
        double *V = dalloc(D * m), *out = dalloc(D * m), *ref = dalloc(D * m);
        double *U = dalloc(n * K * m), *JV = dalloc(n * K * m), *JVref = dalloc(n * K * m);
        fill_normal(V, D * m, 60, 1.0);
        fill_normal(U, n * K * m, 61, 1.0);
        CHECK_INT_EQ(pk_jacobian(&t.net, n, X, J), PK_OK);
        CHECK_INT_EQ(pk_output_curvature(&t.net, loss, n, X, y, dl, lam, S), PK_OK);
        CHECK_INT_EQ(pk_ggn(&t.net, loss, n, X, y, G), PK_OK);
        CHECK_INT_EQ(pk_hessian(&t.net, loss, n, X, y, H), PK_OK);
        /* S S^T = Lambda; for ce Lambda = diag(p) - p p^T with p = softmax */
        for (long i = 0; i < n; i++) {
            double SS[9] = {0};
            for (long a = 0; a < K; a++)
                for (long b = 0; b < K; b++)
                    for (long c = 0; c < K; c++) SS[a * K + b] += S[(i * K + a) * K + c] * S[(i * K + b) * K + c];
            CHECK_ALLCLOSE(SS, lam + i * K * K, K * K, 1e-12, 1e-14);
        }
        /* GGN = sum_n J_n^T Lambda_n J_n */
        for (long i = 0; i < n; i++)
            for (long a = 0; a < K; a++)
                for (long b = 0; b < K; b++) {
                    double L = lam[(i * K + a) * K + b];
                    for (long p = 0; p < D; p++)
                        for (long q = 0; q < D; q++)
                            Gref[p * D + q] += J[(i * K + a) * D + p] * L * J[(i * K + b) * D + q];
                }
        CHECK_ALLCLOSE(G, Gref, D * D, 1e-10, 1e-12);
        /* matvecs equal the dense matrices times V */
        const pk_curv_t which[3] = {PK_CURV_GGN, PK_CURV_HESSIAN, PK_CURV_RESIDUAL};
        for (int w = 0; w < 3; w++) {
            memset(ref, 0, sizeof(double) * D * m);
            for (long p = 0; p < D; p++)
                for (long q = 0; q < D; q++) {
                    double M = w == 0 ? G[p * D + q] : w == 1 ? H[p * D + q] : H[p * D + q] - G[p * D + q];
                    for (long c = 0; c < m; c++) ref[p * m + c] += M * V[q * m + c];
                }
            CHECK_INT_EQ(pk_curvature_matvec(&t.net, which[w], loss, n, X, y, m, V, out), PK_OK);
            CHECK_ALLCLOSE(out, ref, D * m, 1e-10, 1e-10 * (1 + max_abs(ref, D * m)));
        }
        /* jvp = J V, vjp = J^T U */
        memset(JVref, 0, sizeof(double) * n * K * m);
        for (long r = 0; r < n * K; r++)
            for (long p = 0; p < D; p++)
                for (long c = 0; c < m; c++) JVref[r * m + c] += J[r * D + p] * V[p * m + c];
        CHECK_INT_EQ(pk_jvp(&t.net, n, X, m, V, JV), PK_OK);
        CHECK_ALLCLOSE(JV, JVref, n * K * m, 1e-12, 1e-12);
        memset(ref, 0, sizeof(double) * D * m);
        for (long r = 0; r < n * K; r++)
            for (long p = 0; p < D; p++)
                for (long c = 0; c < m; c++) ref[p * m + c] += J[r * D + p] * U[r * m + c];
        CHECK_INT_EQ(pk_vjp(&t.net, n, X, m, U, out), PK_OK);
        CHECK_ALLCLOSE(out, ref, D * m, 1e-12, 1e-12);
        /* gradient = sum_n J_n^T dl_n */
        double *grad = dalloc(D), *gref = dalloc(D), lossv;
        for (long r = 0; r < n * K; r++)
            for (long p = 0; p < D; p++) gref[p] += J[r * D + p] * dl[r];
        CHECK_INT_EQ(pk_loss_grad(&t.net, loss, n, X, y, &lossv, grad), PK_OK);
        CHECK_ALLCLOSE(grad, gref, D, 1e-12, 1e-12);
        /* diag GGN = diag(G); empirical = sum_n grad_n^2 */
        double *dg = dalloc(D), *ef = dalloc(D), *efref = dalloc(D), *dref = dalloc(D), *g1 = dalloc(D);
        for (long p = 0; p < D; p++) dref[p] = G[p * D + p];
        CHECK_INT_EQ(pk_diag_curvature(&t.net, PK_FISHER_EXACT, loss, n, X, y, 0, NULL, dg, NULL), PK_OK);
        CHECK_ALLCLOSE(dg, dref, D, 1e-10, 1e-13);
        for (long i = 0; i < n; i++) {
            const void *yi = loss == PK_LOSS_CE ? (const void *)(labels + i)
                                                : (const void *)(Yf + (loss == PK_LOSS_MSE ? i * K : i));
            CHECK_INT_EQ(pk_loss_grad(&t.net, loss, 1, X + i * 4, yi, &lossv, g1), PK_OK);
            for (long p = 0; p < D; p++) efref[p] += g1[p] * g1[p];
        }
        CHECK_INT_EQ(pk_diag_curvature(&t.net, PK_FISHER_EMPIRICAL, loss, n, X, y, 0, NULL, ef, NULL), PK_OK);
        CHECK_ALLCLOSE(ef, efref, D, 1e-10, 1e-13);
        /* MC diagonal: reproducible from the seed, unbiased for the GGN diagonal */
        double *mc1 = dalloc(D), *mc2 = dalloc(D);
        pk_rng_t r1, r2;
        pk_rng_seed(&r1, 77);
        pk_rng_seed(&r2, 77);
        CHECK_INT_EQ(pk_diag_curvature(&t.net, PK_FISHER_MC, loss, n, X, y, 3, &r1, mc1, NULL), PK_OK);
        CHECK_INT_EQ(pk_diag_curvature(&t.net, PK_FISHER_MC, loss, n, X, y, 3, &r2, mc2, NULL), PK_OK);
        CHECK_ALLCLOSE(mc1, mc2, D, 0, 0);
        memset(mc1, 0, sizeof(double) * D);
        CHECK_INT_EQ(pk_diag_curvature(&t.net, PK_FISHER_MC, loss, n, X, y, 4000, &r1, mc1, NULL), PK_OK);
        double smc = 0, sref = 0;
        for (long p = 0; p < D; p++) smc += mc1[p], sref += dref[p];
        CHECK_CLOSE(smc, sref, 0.1, 0);
        free(mc1), free(mc2), free(dg), free(ef), free(efref), free(dref), free(g1), free(grad), free(gref);
        free(J), free(lam), free(S), free(dl), free(G), free(H), free(Gref), free(V), free(out), free(ref);
        free(U), free(JV), free(JVref), free(t.theta);
    }
}

/* K-FAC exactness facts (CONVENTIONS.md): N = 1 gives the exact GGN block of
 * every layer for KFLR and KFRA; a deep linear network with mse gives the
 * block-diagonal GGN for any N; N copies of a datum give N times its factors. */
static void check_kfac_blocks(const testnet_t *t, pk_fisher_t kind, pk_loss_t loss, long n,
                              const double *X, const void *y, const char *what)
{
    const int L = 3;
    const long D = t->D;
    double *A[3], *G[3];
    for (int l = 0; l < L; l++) {
        A[l] = dalloc((t->sizes[l] + 1) * (t->sizes[l] + 1));
        G[l] = dalloc(t->sizes[l + 1] * t->sizes[l + 1]);
    }
    double *GGN = dalloc(D * D);
    CHECK_INT_EQ(pk_ggn(&t->net, loss, n, X, y, GGN), PK_OK);
    CHECK_INT_EQ(pk_kfac_factors(&t->net, kind, loss, n, X, y, 1, NULL, (void *const *)A, (void *const *)G, NULL, NULL, NULL), PK_OK);
    for (int l = 0; l < L; l++) {
        long out = t->sizes[l + 1], in = t->sizes[l], p = out * (in + 1);
        double *B = dalloc(p * p), *blk = dalloc(p * p);
        kron_block_theta(out, in, G[l], A[l], 1.0 / n, B);
        sub_block(GGN, D, pk_mlp_layer_offset(&t->net, l), p, blk);
        char msg[96];
        snprintf(msg, sizeof msg, "%s: layer %d", what, l);
        pk_test_allclose(B, blk, p * p, 1e-9, 1e-11 * (1 + max_abs(blk, p * p)), __FILE__, __LINE__, msg);
        free(B), free(blk);
    }
    for (int l = 0; l < L; l++) free(A[l]), free(G[l]);
    free(GGN);
}

static void test_kfac_exactness(void)
{
    for (int l = 0; l < 3; l++) {
        pk_loss_t loss = (pk_loss_t)l;
        testnet_t t;
        testnet_init(&t, 3, 4, 3, loss == PK_LOSS_BCE ? 1 : 3, PK_ACT_TANH, 70 + l);
        double X[3] = {0.3, -1.2, 0.8}, Yf[3] = {1, -0.5, 0.25};
        int64_t label = 1;
        const void *y = loss == PK_LOSS_CE ? (const void *)&label : (const void *)Yf;
        check_kfac_blocks(&t, PK_FISHER_EXACT, loss, 1, X, y, "KFLR, N = 1");
        check_kfac_blocks(&t, PK_FISHER_KFRA, loss, 1, X, y, "KFRA, N = 1");
        free(t.theta);
    }
    /* deep linear network with mse, N = 6 */
    testnet_t t;
    testnet_init(&t, 3, 4, 3, 2, PK_ACT_IDENTITY, 80);
    double X[18], Y[12];
    fill_normal(X, 18, 81, 1.0);
    fill_normal(Y, 12, 82, 1.0);
    check_kfac_blocks(&t, PK_FISHER_EXACT, PK_LOSS_MSE, 6, X, Y, "deep linear mse, N = 6");
    free(t.theta);
}

static void test_kfac_accumulates_and_scales(void)
{
    testnet_t t;
    testnet_init(&t, 2, 3, 3, 3, PK_ACT_GELU, 90);
    const double x[2] = {0.4, -0.9};
    double X[10];
    int64_t labels[5] = {2, 2, 2, 2, 2};
    for (int i = 0; i < 5; i++) X[2 * i] = x[0], X[2 * i + 1] = x[1];
    const pk_fisher_t kinds[3] = {PK_FISHER_EXACT, PK_FISHER_EMPIRICAL, PK_FISHER_KFRA};
    for (int k = 0; k < 3; k++) {
        double A1[3][16] = {{0}}, G1[3][9] = {{0}}, A5[3][16] = {{0}}, G5[3][9] = {{0}};
        void *a1[3] = {A1[0], A1[1], A1[2]}, *g1[3] = {G1[0], G1[1], G1[2]};
        void *a5[3] = {A5[0], A5[1], A5[2]}, *g5[3] = {G5[0], G5[1], G5[2]};
        CHECK_INT_EQ(pk_kfac_factors(&t.net, kinds[k], PK_LOSS_CE, 1, X, labels, 1, NULL, a1, g1, NULL, NULL, NULL), PK_OK);
        CHECK_INT_EQ(pk_kfac_factors(&t.net, kinds[k], PK_LOSS_CE, 5, X, labels, 1, NULL, a5, g5, NULL, NULL, NULL), PK_OK);
        for (int l = 0; l < 3; l++) {
            long q = t.sizes[l] + 1, o = t.sizes[l + 1];
            double want[16];
            for (long i = 0; i < q * q; i++) want[i] = 5 * A1[l][i];
            CHECK_ALLCLOSE(A5[l], want, q * q, 1e-12, 1e-14);
            for (long i = 0; i < o * o; i++) want[i] = 5 * G1[l][i];
            CHECK_ALLCLOSE(G5[l], want, o * o, 1e-12, 1e-14);
        }
        /* batches add up: a second call with the 1-datum batch four more times */
        for (int rep = 0; rep < 4; rep++)
            CHECK_INT_EQ(pk_kfac_factors(&t.net, kinds[k], PK_LOSS_CE, 1, X, labels, 1, NULL, a1, g1, NULL, NULL, NULL), PK_OK);
        for (int l = 0; l < 3; l++) {
            long q = t.sizes[l] + 1, o = t.sizes[l + 1];
            CHECK_ALLCLOSE(A1[l], A5[l], q * q, 1e-12, 1e-14);
            CHECK_ALLCLOSE(G1[l], G5[l], o * o, 1e-12, 1e-14);
            /* symmetric output */
            int sym = 1;
            for (long i = 0; i < o; i++)
                for (long j = 0; j < o; j++) sym &= G5[l][i * o + j] == G5[l][j * o + i];
            for (long i = 0; i < q; i++)
                for (long j = 0; j < q; j++) sym &= A5[l][i * q + j] == A5[l][j * q + i];
            CHECK(sym);
        }
    }
    free(t.theta);
}

/* G[l] and the cross-layer G_cross[l] are second moments of the pre-activation
 * gradients g_l, which are also the BIAS gradients: for EXACT they are the
 * bias-bias blocks of the dense GGN, for EMPIRICAL sums of products of
 * per-sample bias gradients. A[l] and A_cross[l] are second moments of the
 * layer inputs abar_l = [a_l; 1], read off pk_features of truncated networks. */
static void test_kfac_bias_blocks_and_cross_factors(void)
{
    const long n = 5;
    for (int l = 0; l < 3; l++) {
        pk_loss_t loss = (pk_loss_t)l;
        testnet_t t;
        testnet_init(&t, 3, 4, 3, loss == PK_LOSS_BCE ? 1 : 2, PK_ACT_SIGMOID, 120 + l);
        const long D = t.D;
        const int L = 3;
        double X[15], Yf[10];
        int64_t labels[5] = {1, 0, 0, 1, 1};
        fill_normal(X, 15, 121, 1.0);
        fill_normal(Yf, 10, 122, 1.0);
        if (loss == PK_LOSS_BCE)
            for (int i = 0; i < 5; i++) Yf[i] = i % 2;
        const void *y = loss == PK_LOSS_CE ? (const void *)labels : (const void *)Yf;
        long bias[3], outw[3], q[3];
        for (int k = 0; k < L; k++) {
            outw[k] = t.sizes[k + 1];
            q[k] = t.sizes[k] + 1;
            bias[k] = pk_mlp_layer_offset(&t.net, k) + outw[k] * t.sizes[k];
        }
        /* layer inputs abar_k (n x q_k) */
        double *abar[3];
        for (int k = 0; k < L; k++) {
            abar[k] = dalloc(n * q[k]);
            double *a = dalloc(n * (q[k] - 1));
            if (k == 0) {
                memcpy(a, X, sizeof X);
            } else {
                pk_mlp_t trunc = mknet(k + 1, t.sizes, t.acts, t.theta);
                CHECK_INT_EQ(pk_features(&trunc, n, X, a), PK_OK);
            }
            for (long i = 0; i < n; i++) {
                for (long c = 0; c + 1 < q[k]; c++) abar[k][i * q[k] + c] = a[i * (q[k] - 1) + c];
                abar[k][i * q[k] + q[k] - 1] = 1;
            }
            free(a);
        }
        /* per-sample gradients (their bias parts are the g_l at the true labels) */
        double *gs = dalloc(n * D), *GGN = dalloc(D * D), lossv;
        for (long i = 0; i < n; i++) {
            const void *yi = loss == PK_LOSS_CE ? (const void *)(labels + i)
                                                : (const void *)(Yf + (loss == PK_LOSS_MSE ? i * 2 : i));
            CHECK_INT_EQ(pk_loss_grad(&t.net, loss, 1, X + 3 * i, yi, &lossv, gs + i * D), PK_OK);
        }
        CHECK_INT_EQ(pk_ggn(&t.net, loss, n, X, y, GGN), PK_OK);
        const pk_fisher_t kinds[2] = {PK_FISHER_EXACT, PK_FISHER_EMPIRICAL};
        for (int kk = 0; kk < 2; kk++) {
            double *A[3], *G[3], *Ac[2], *Gc[2];
            for (int k = 0; k < L; k++) A[k] = dalloc(q[k] * q[k]), G[k] = dalloc(outw[k] * outw[k]);
            for (int k = 0; k < L - 1; k++) Ac[k] = dalloc(q[k] * q[k + 1]), Gc[k] = dalloc(outw[k] * outw[k + 1]);
            CHECK_INT_EQ(pk_kfac_factors(&t.net, kinds[kk], loss, n, X, y, 1, NULL, (void *const *)A,
                                         (void *const *)G, (void *const *)Ac, (void *const *)Gc, NULL), PK_OK);
            for (int k = 0; k < L; k++) {
                /* A[k] = sum abar abar^T; A_cross[k] = sum abar_k abar_{k+1}^T */
                double *wantA = dalloc(q[k] * q[k]);
                for (long i = 0; i < n; i++)
                    for (long r = 0; r < q[k]; r++)
                        for (long c = 0; c < q[k]; c++) wantA[r * q[k] + c] += abar[k][i * q[k] + r] * abar[k][i * q[k] + c];
                CHECK_ALLCLOSE(A[k], wantA, q[k] * q[k], 1e-12, 1e-13);
                free(wantA);
                /* G[k], G_cross[k] */
                for (int cross = 0; cross < 2 && k + cross < L; cross++) {
                    long o1 = outw[k], o2 = outw[k + cross];
                    double *wantG = dalloc(o1 * o2);
                    for (long r = 0; r < o1; r++)
                        for (long c = 0; c < o2; c++) {
                            if (kinds[kk] == PK_FISHER_EXACT) {
                                wantG[r * o2 + c] = GGN[(bias[k] + r) * D + bias[k + cross] + c];
                            } else {
                                for (long i = 0; i < n; i++)
                                    wantG[r * o2 + c] += gs[i * D + bias[k] + r] * gs[i * D + bias[k + cross] + c];
                            }
                        }
                    char what[96];
                    snprintf(what, sizeof what, "kind %d loss %d: G%s[%d]", kinds[kk], l, cross ? "_cross" : "", k);
                    pk_test_allclose(cross ? Gc[k] : G[k], wantG, o1 * o2, 1e-10, 1e-12 * (1 + max_abs(wantG, o1 * o2)),
                                     __FILE__, __LINE__, what);
                    free(wantG);
                }
                if (k < L - 1) {
                    double *wantAc = dalloc(q[k] * q[k + 1]);
                    for (long i = 0; i < n; i++)
                        for (long r = 0; r < q[k]; r++)
                            for (long c = 0; c < q[k + 1]; c++)
                                wantAc[r * q[k + 1] + c] += abar[k][i * q[k] + r] * abar[k + 1][i * q[k + 1] + c];
                    CHECK_ALLCLOSE(Ac[k], wantAc, q[k] * q[k + 1], 1e-12, 1e-13);
                    free(wantAc);
                }
            }
            for (int k = 0; k < L; k++) free(A[k]), free(G[k]);
            for (int k = 0; k < L - 1; k++) free(Ac[k]), free(Gc[k]);
        }
        /* cross factors: both or neither, and never for KFRA */
        double *A[3], *G[3], *Ac[2], *Gc[2];
        for (int k = 0; k < L; k++) A[k] = dalloc(q[k] * q[k]), G[k] = dalloc(outw[k] * outw[k]);
        for (int k = 0; k < L - 1; k++) Ac[k] = dalloc(q[k] * q[k + 1]), Gc[k] = dalloc(outw[k] * outw[k + 1]);
        CHECK(pk_kfac_factors(&t.net, PK_FISHER_EXACT, loss, n, X, y, 1, NULL, (void *const *)A, (void *const *)G,
                              (void *const *)Ac, NULL, NULL) < 0);
        CHECK(pk_kfac_factors(&t.net, PK_FISHER_EXACT, loss, n, X, y, 1, NULL, (void *const *)A, (void *const *)G,
                              NULL, (void *const *)Gc, NULL) < 0);
        CHECK(pk_kfac_factors(&t.net, PK_FISHER_KFRA, loss, n, X, y, 1, NULL, (void *const *)A, (void *const *)G,
                              (void *const *)Ac, (void *const *)Gc, NULL) < 0);
        for (int k = 0; k < L; k++) free(A[k]), free(G[k]), free(abar[k]);
        for (int k = 0; k < L - 1; k++) free(Ac[k]), free(Gc[k]);
        free(gs), free(GGN), free(t.theta);
    }
}

static void test_float32_matches_float64(void)
{
    for (int l = 0; l < 3; l++) {
        pk_loss_t loss = (pk_loss_t)l;
        testnet_t t;
        testnet_init(&t, 3, 4, 3, loss == PK_LOSS_BCE ? 1 : 3, PK_ACT_ELU, 100 + l);
        const long D = t.D, n = 4, K = t.sizes[3];
        float *thf = malloc(sizeof(float) * D), Xf[12], Yff[12], gradf[64], Gf[64 * 64];
        double X[12], Yf[12], grad[64], G[64 * 64], lossd, lossf;
        CHECK(D <= 64);
        int64_t labels[4] = {0, 1, 2, 1};
        fill_normal(X, 12, 110, 1.0);
        fill_normal(Yf, 12, 111, 1.0);
        if (loss == PK_LOSS_BCE)
            for (int i = 0; i < 4; i++) Yf[i] = i % 2;
        /* use values exactly representable in float32 for both */
        for (long i = 0; i < D; i++) t.theta[i] = thf[i] = (float)t.theta[i];
        for (int i = 0; i < 12; i++) X[i] = Xf[i] = (float)X[i], Yf[i] = Yff[i] = (float)Yf[i];
        pk_mlp_t nf = t.net;
        nf.dtype = PK_FLOAT32;
        nf.theta = thf;
        const void *yd = loss == PK_LOSS_CE ? (const void *)labels : (const void *)Yf;
        const void *yf = loss == PK_LOSS_CE ? (const void *)labels : (const void *)Yff;
        CHECK_INT_EQ(pk_loss_grad(&t.net, loss, n, X, yd, &lossd, grad), PK_OK);
        CHECK_INT_EQ(pk_loss_grad(&nf, loss, n, Xf, yf, &lossf, gradf), PK_OK);
        CHECK_CLOSE(lossf, lossd, 1e-5, 1e-6);
        double scale = max_abs(grad, D);
        for (long i = 0; i < D; i++) CHECK_CLOSE(gradf[i], grad[i], 1e-4, 1e-5 * scale);
        CHECK_INT_EQ(pk_ggn(&t.net, loss, n, X, yd, G), PK_OK);
        CHECK_INT_EQ(pk_ggn(&nf, loss, n, Xf, yf, Gf), PK_OK);
        scale = max_abs(G, D * D);
        int ok = 1;
        for (long i = 0; i < D * D; i++) ok &= fabs(Gf[i] - G[i]) <= 1e-4 * scale;
        CHECK(ok);
        (void)K;
        free(thf);
        free(t.theta);
    }
}

#endif /* PK_TEST_HAVE_MLP */

int main(void)
{
    PK_RUN(test_strerror_every_code);
    PK_RUN(test_error_codes_are_negative_and_dense);
    PK_RUN(test_dtype_size);
    PK_RUN(test_rng_algorithm);
    PK_RUN(test_rng_reproducible);
    PK_RUN(test_rng_seeds_differ);
    PK_RUN(test_rng_uniform);
    PK_RUN(test_rng_normal);
    PK_RUN(test_rng_fill_normal);
    PK_RUN(test_check_finite);
    PK_RUN(test_blas_info);
#ifdef PK_TEST_HAVE_MLP
    PK_RUN(test_mlp_check_and_layout);
    PK_RUN(test_mlp_check_invalid);
    PK_RUN(test_linear_mse_closed_form);
    PK_RUN(test_bce_tiny);
    PK_RUN(test_empty_batch);
    PK_RUN(test_bad_arguments);
    PK_RUN(test_labels_out_of_range);
    PK_RUN(test_huge_logits);
    PK_RUN(test_gradient_and_hessian_fd);
    PK_RUN(test_products_match_dense);
    PK_RUN(test_kfac_exactness);
    PK_RUN(test_kfac_accumulates_and_scales);
    PK_RUN(test_kfac_bias_blocks_and_cross_factors);
    PK_RUN(test_float32_matches_float64);
#else
    printf("test_core: MLP kernels not in csrc/ yet; their tests were compiled out\n");
#endif
    return pk_test_summary("test_core");
}
