/* act.c: activation functions with exact first and second derivatives, in
 * branch-free form so the compiler vectorises them (scalar libm calls cost as
 * much as the layer's GEMM at benchmark sizes). exp/expm1/log1p are evaluated
 * here by range reduction and polynomials accurate to a few ulp in double;
 * float inputs go through the double kernels in small blocks. GELU keeps
 * libm's erfc (no portable vectorised erfc). */
#include "act.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* One AVX2 clone picked at load time, plus the baseline SSE2 version. */
#define PK_VECTOR_CLONES __attribute__((target_clones("default", "avx2")))
#else
#define PK_VECTOR_CLONES
#endif

static inline uint64_t as_bits(double x)
{
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline double from_bits(uint64_t u)
{
    double x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* e^r - 1 for |r| <= ln2/2 (Taylor to r^13: truncation < 1e-17 relative). */
static inline double expm1_poly(double r)
{
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    return (p * r + 1.0) * r;
}

/* e^x: k = round(x / ln2) by the 1.5 * 2^52 shifter, Cody-Waite reduction,
 * and 2^k applied as two factors 2^k1 2^k2 so subnormal and overflowing
 * results round like libm's. */
static inline double vexp(double x)
{
    const double shifter = 0x1.8p52, log2e = 0x1.71547652b82fep0;
    const double ln2_hi = 0x1.62e42fee00000p-1, ln2_lo = 0x1.a39ef35793c76p-33;
    double xc = x < -746.0 ? -746.0 : x;
    xc = xc > 710.0 ? 710.0 : xc;
    double kd = xc * log2e + shifter;
    /* k + 2048 > 0, so a logical shift halves it (SSE2 has no 64-bit arithmetic shift) */
    uint64_t kb = as_bits(kd) - as_bits(shifter) + 2048u;
    kd -= shifter;
    double r = (xc - kd * ln2_hi) - kd * ln2_lo;
    uint64_t k1b = kb >> 1, k2b = kb - k1b; /* each = k_i + 1024 */
    double s1 = from_bits((k1b - 1024u + 1023u) << 52), s2 = from_bits((k2b - 1024u + 1023u) << 52);
    double y = (expm1_poly(r) + 1.0) * s1 * s2;
    return x != x ? x : y;
}

/* e^x - 1 given e = vexp(x): the polynomial near 0 (no cancellation), e - 1
 * elsewhere (at most one bit lost). Taking e from the caller saves an exp. */
static inline double vexpm1_from(double x, double e)
{
    return (x > -0.34657359027997264 && x < 0.34657359027997264) ? expm1_poly(x) : e - 1.0;
}

/* log(1 + u) for u in [0, 1]: 2 atanh(s), s = u / (2 + u) <= 1/3, series to
 * s^39 (truncation < 1e-19), written out so it vectorises. */
static inline double vlog1p_unit(double u)
{
    double s = u / (2.0 + u), z = s * s;
    double p = 1.0 / 39;
    p = p * z + 1.0 / 37; p = p * z + 1.0 / 35; p = p * z + 1.0 / 33; p = p * z + 1.0 / 31;
    p = p * z + 1.0 / 29; p = p * z + 1.0 / 27; p = p * z + 1.0 / 25; p = p * z + 1.0 / 23;
    p = p * z + 1.0 / 21; p = p * z + 1.0 / 19; p = p * z + 1.0 / 17; p = p * z + 1.0 / 15;
    p = p * z + 1.0 / 13; p = p * z + 1.0 / 11; p = p * z + 1.0 / 9; p = p * z + 1.0 / 7;
    p = p * z + 1.0 / 5; p = p * z + 1.0 / 3; p = p * z + 1.0;
    return 2.0 * s * p;
}

PK_VECTOR_CLONES
static void act_eval_block(pk_act_t act, int64_t n, const double *s, double *a, double *d1, double *d2)
{
    switch (act) {
    case PK_ACT_RELU:
        for (int64_t i = 0; i < n; i++) {
            double x = s[i];
            a[i] = x > 0 ? x : 0;
            d1[i] = x > 0 ? 1 : 0;
            d2[i] = 0;
        }
        break;
    case PK_ACT_LEAKY_RELU:
        for (int64_t i = 0; i < n; i++) {
            double x = s[i];
            a[i] = x > 0 ? x : 0.01 * x;
            d1[i] = x > 0 ? 1 : 0.01;
            d2[i] = 0;
        }
        break;
    case PK_ACT_ELU:
        for (int64_t i = 0; i < n; i++) {
            double x = s[i], xn = x < 0 ? x : 0;
            double e = vexp(xn), em = vexpm1_from(xn, e);
            a[i] = x > 0 ? x : em;
            d1[i] = x > 0 ? 1 : e;
            d2[i] = x > 0 ? 0 : e;
        }
        break;
    case PK_ACT_TANH:
        for (int64_t i = 0; i < n; i++) {
            /* with u = -2|x|: tanh|x| = -expm1(u) / (2 + expm1(u)) and
             * tanh' = 4 e^u / (1 + e^u)^2, both free of cancellation */
            double x = s[i], u = -2.0 * fabs(x);
            double e = vexp(u), em = vexpm1_from(u, e), inv = 1.0 / (1.0 + e);
            double t = -em / (2.0 + em);
            t = x < 0 ? -t : t;
            double g1 = 4.0 * e * inv * inv;
            a[i] = t;
            d1[i] = g1;
            d2[i] = -2.0 * t * g1;
        }
        break;
    case PK_ACT_SIGMOID:
        for (int64_t i = 0; i < n; i++) {
            /* with u = -|x|, e = e^u: sigma(|x|) = 1/(1+e), sigma' = e/(1+e)^2, and
             * 1 - 2 sigma(x) = -sign(x) (1 - e)/(1 + e) = sign(x) expm1(u)/(1 + e) */
            double x = s[i], u = -fabs(x);
            double e = vexp(u), em = vexpm1_from(u, e), inv = 1.0 / (1.0 + e);
            double y = x >= 0 ? inv : e * inv;
            double g1 = e * inv * inv;
            double one_minus_2y = x >= 0 ? em * inv : -em * inv;
            a[i] = y;
            d1[i] = g1;
            d2[i] = g1 * one_minus_2y;
        }
        break;
    case PK_ACT_SOFTPLUS:
        for (int64_t i = 0; i < n; i++) {
            double x = s[i], e = vexp(-fabs(x)), inv = 1.0 / (1.0 + e);
            double sg = x >= 0 ? inv : e * inv;
            a[i] = (x > 0 ? x : 0) + vlog1p_unit(e);
            d1[i] = sg;
            d2[i] = e * inv * inv;
        }
        break;
    case PK_ACT_GELU:
        for (int64_t i = 0; i < n; i++) {
            double x = s[i];
            double pdf = 0.3989422804014327 * vexp(-0.5 * x * x);
            double cdf = 0.5 * erfc(-x * 0.7071067811865476);
            a[i] = x * cdf;
            d1[i] = cdf + x * pdf;
            d2[i] = pdf * (2.0 - x * x);
        }
        break;
    default: /* identity */
        for (int64_t i = 0; i < n; i++) {
            a[i] = s[i];
            d1[i] = 1;
            d2[i] = 0;
        }
        break;
    }
}

#define PK_ACT_BLOCK 512

void pk_act_eval_d(pk_act_t act, int64_t n, const double *s, double *a, double *d1, double *d2)
{
    double ta[PK_ACT_BLOCK], t1[PK_ACT_BLOCK], t2[PK_ACT_BLOCK];
    for (int64_t i0 = 0; i0 < n; i0 += PK_ACT_BLOCK) {
        int64_t m = n - i0 < PK_ACT_BLOCK ? n - i0 : PK_ACT_BLOCK;
        /* outputs not wanted go to scratch, so the kernel has no NULL branches */
        act_eval_block(act, m, s + i0, a ? a + i0 : ta, d1 ? d1 + i0 : t1, d2 ? d2 + i0 : t2);
    }
}

void pk_act_eval_f(pk_act_t act, int64_t n, const float *s, float *a, float *d1, float *d2)
{
    double ts[PK_ACT_BLOCK], ta[PK_ACT_BLOCK], t1[PK_ACT_BLOCK], t2[PK_ACT_BLOCK];
    for (int64_t i0 = 0; i0 < n; i0 += PK_ACT_BLOCK) {
        int64_t m = n - i0 < PK_ACT_BLOCK ? n - i0 : PK_ACT_BLOCK;
        for (int64_t i = 0; i < m; i++) ts[i] = s[i0 + i];
        act_eval_block(act, m, ts, ta, t1, t2);
        if (a)
            for (int64_t i = 0; i < m; i++) a[i0 + i] = (float)ta[i];
        if (d1)
            for (int64_t i = 0; i < m; i++) d1[i0 + i] = (float)t1[i];
        if (d2)
            for (int64_t i = 0; i < m; i++) d2[i0 + i] = (float)t2[i];
    }
}
