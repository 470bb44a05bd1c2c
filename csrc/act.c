/* act.c: activation functions with exact first and second derivatives, in
 * branch-free form so the compiler vectorises them (scalar libm calls cost as
 * much as the layer's GEMM at benchmark sizes). exp/expm1/log1p are evaluated
 * here by range reduction and polynomials accurate to a few ulp in double;
 * float data is computed in double too (converted in the loop), with
 * polynomials truncated far below float's rounding (the rounded results match
 * the full ones except ~1 in 10^6 ties, off by 1 ulp). GELU keeps libm's erfc
 * (no portable vectorised erfc). */
#include "act.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

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

/* e^r - 1 for |r| <= ln2/2: Taylor to r^13 by Horner's rule (truncation
 * < 1e-17 relative), or for float results (fl) to r^10 (< 1e-12, far below
 * float's 6e-8) by Estrin's scheme, whose short dependency chains the
 * out-of-order core overlaps. */
static inline double expm1_poly(double r, int fl)
{
    if (fl) {
        double r2 = r * r, r4 = r2 * r2;
        double q01 = 1.0 + 0.5 * r, q23 = 1.0 / 6.0 + (1.0 / 24.0) * r;
        double q45 = 1.0 / 120.0 + (1.0 / 720.0) * r, q67 = 1.0 / 5040.0 + (1.0 / 40320.0) * r;
        double q89 = 1.0 / 362880.0 + (1.0 / 3628800.0) * r;
        double q = (q01 + r2 * q23) + r4 * ((q45 + r2 * q67) + r4 * q89);
        return q * r;
    }
    /* terms r^4/5! .. r^12/13! by Estrin's scheme (their rounding errors are
     * damped by r^4 <= 0.015), the leading ones by Horner's rule as before */
    double r2 = r * r, r4 = r2 * r2;
    double h = ((1.0 / 120.0 + (1.0 / 720.0) * r) + r2 * (1.0 / 5040.0 + (1.0 / 40320.0) * r)) +
               r4 * (((1.0 / 362880.0 + (1.0 / 3628800.0) * r) + r2 * (1.0 / 39916800.0 + (1.0 / 479001600.0) * r)) +
                     r4 * (1.0 / 6227020800.0));
    double p = h * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    return (p * r + 1.0) * r;
}

/* e = e^x and em = e^x - 1 from one polynomial: k = round(x / ln2) by the
 * 1.5 * 2^52 shifter, Cody-Waite reduction x = k ln2 + r, e = (expm1(r) + 1) 2^k
 * with 2^k applied as two factors 2^k1 2^k2 so subnormal and overflowing
 * results round like libm's; em = expm1(r) when k = 0 (|x| <~ ln2/2, no
 * cancellation), e - 1 otherwise (at most one bit lost). */
static inline double vexp_em(double x, double *em, int fl)
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
    double p = expm1_poly(r, fl);
    double y = (p + 1.0) * s1 * s2;
    y = x != x ? x : y;
    *em = kd == 0.0 ? p : y - 1.0;
    return y;
}

static inline double vexp(double x, int fl)
{
    double em;
    return vexp_em(x, &em, fl);
}

/* log(1 + u) for u in [0, 1]: 2 atanh(s), s = u / (2 + u) <= 1/3, series to
 * s^39 (truncation < 1e-19), or for float results (fl) to s^25 (< 1e-14),
 * written out so it vectorises. */
static inline double vlog1p_unit(double u, int fl)
{
    double s = u / (2.0 + u), z = s * s;
    double p;
    if (fl) {
        p = 1.0 / 25;
    } else {
        p = 1.0 / 39;
        p = p * z + 1.0 / 37; p = p * z + 1.0 / 35; p = p * z + 1.0 / 33; p = p * z + 1.0 / 31;
        p = p * z + 1.0 / 29; p = p * z + 1.0 / 27; p = p * z + 1.0 / 25;
    }
    p = p * z + 1.0 / 23;
    p = p * z + 1.0 / 21; p = p * z + 1.0 / 19; p = p * z + 1.0 / 17; p = p * z + 1.0 / 15;
    p = p * z + 1.0 / 13; p = p * z + 1.0 / 11; p = p * z + 1.0 / 9; p = p * z + 1.0 / 7;
    p = p * z + 1.0 / 5; p = p * z + 1.0 / 3; p = p * z + 1.0;
    return 2.0 * s * p;
}

#if defined(__GNUC__)
#define PK_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define PK_ALWAYS_INLINE inline
#endif

/* The kernel for float (fl = 1) or double data, computed in double either way,
 * writing phi'' only when w2; inlined into the clones below with fl and w2
 * constant. */
static PK_ALWAYS_INLINE void act_block(pk_act_t act, int64_t n, const void *sv, void *av, void *d1v,
                                       void *d2v, int fl, int w2)
{
    const float *sf = sv;
    const double *sd = sv;
    float *af = av, *d1f = d1v, *d2f = d2v;
    double *ad = av, *d1d = d1v, *d2d = d2v;
#define LD(i) (fl ? (double)sf[i] : sd[i])
#define ST(p, i, val)                     \
    do {                                  \
        double v_ = (val);                \
        if (fl) p##f[i] = (float)v_;      \
        else p##d[i] = v_;                \
    } while (0)
    switch (act) {
    case PK_ACT_RELU:
        for (int64_t i = 0; i < n; i++) {
            double x = LD(i);
            ST(a, i, x > 0 ? x : 0);
            ST(d1, i, x > 0 ? 1 : 0);
            if (w2) ST(d2, i, 0);
        }
        break;
    case PK_ACT_LEAKY_RELU:
        for (int64_t i = 0; i < n; i++) {
            double x = LD(i);
            ST(a, i, x > 0 ? x : 0.01 * x);
            ST(d1, i, x > 0 ? 1 : 0.01);
            if (w2) ST(d2, i, 0);
        }
        break;
    case PK_ACT_ELU:
        for (int64_t i = 0; i < n; i++) {
            double x = LD(i), xn = x < 0 ? x : 0;
            double em, e = vexp_em(xn, &em, fl);
            ST(a, i, x > 0 ? x : em);
            ST(d1, i, x > 0 ? 1 : e);
            if (w2) ST(d2, i, x > 0 ? 0 : e);
        }
        break;
    case PK_ACT_TANH:
        for (int64_t i = 0; i < n; i++) {
            /* with u = -2|x|: tanh|x| = -expm1(u) / (2 + expm1(u)) and
             * tanh' = 4 e^u / (1 + e^u)^2, both free of cancellation */
            double x = LD(i), u = -2.0 * fabs(x);
            double em, e = vexp_em(u, &em, fl), inv = 1.0 / (1.0 + e);
            /* 2 + expm1(u) = 1 + e^u up to rounding, which float results do not see */
            double t = fl ? -em * inv : -em / (2.0 + em);
            t = x < 0 ? -t : t;
            double g1 = 4.0 * e * inv * inv;
            ST(a, i, t);
            ST(d1, i, g1);
            if (w2) ST(d2, i, -2.0 * t * g1);
        }
        break;
    case PK_ACT_SIGMOID:
        for (int64_t i = 0; i < n; i++) {
            /* with u = -|x|, e = e^u: sigma(|x|) = 1/(1+e), sigma' = e/(1+e)^2, and
             * 1 - 2 sigma(x) = -sign(x) (1 - e)/(1 + e) = sign(x) expm1(u)/(1 + e) */
            double x = LD(i), u = -fabs(x);
            double em, e = vexp_em(u, &em, fl), inv = 1.0 / (1.0 + e);
            double y = x >= 0 ? inv : e * inv;
            double g1 = e * inv * inv;
            double one_minus_2y = x >= 0 ? em * inv : -em * inv;
            ST(a, i, y);
            ST(d1, i, g1);
            if (w2) ST(d2, i, g1 * one_minus_2y);
        }
        break;
    case PK_ACT_SOFTPLUS:
        for (int64_t i = 0; i < n; i++) {
            double x = LD(i), e = vexp(-fabs(x), fl), inv = 1.0 / (1.0 + e);
            double sg = x >= 0 ? inv : e * inv;
            ST(a, i, (x > 0 ? x : 0) + vlog1p_unit(e, fl));
            ST(d1, i, sg);
            if (w2) ST(d2, i, e * inv * inv);
        }
        break;
    case PK_ACT_GELU:
        for (int64_t i = 0; i < n; i++) {
            double x = LD(i);
            double pdf = 0.3989422804014327 * vexp(-0.5 * x * x, fl);
            double cdf = 0.5 * erfc(-x * 0.7071067811865476);
            ST(a, i, x * cdf);
            ST(d1, i, cdf + x * pdf);
            if (w2) ST(d2, i, pdf * (2.0 - x * x));
        }
        break;
    default: /* identity */
        for (int64_t i = 0; i < n; i++) {
            ST(a, i, LD(i));
            ST(d1, i, 1);
            if (w2) ST(d2, i, 0);
        }
        break;
    }
}
#undef LD
#undef ST

#define PK_ACT_BLOCK 512

/* pk_act_eval_d/_f: per data type T, one pair of clones (act.h) of the kernel
 * with and without phi'' (only Hessian products want it), run in blocks;
 * outputs not wanted go to scratch, so the kernel has no NULL branches. */
#define PK_DEFINE_ACT_EVAL(name, T, fl)                                                         \
    PK_VECTOR_CLONES                                                                            \
    static void name##_with_d2(pk_act_t act, int64_t n, const T *s, T *a, T *d1, T *d2)        \
    {                                                                                           \
        act_block(act, n, s, a, d1, d2, fl, 1);                                                 \
    }                                                                                           \
    PK_VECTOR_CLONES                                                                            \
    static void name##_no_d2(pk_act_t act, int64_t n, const T *s, T *a, T *d1)                 \
    {                                                                                           \
        act_block(act, n, s, a, d1, NULL, fl, 0);                                               \
    }                                                                                           \
    void name(pk_act_t act, int64_t n, const T *s, T *a, T *d1, T *d2)                          \
    {                                                                                           \
        T ta[PK_ACT_BLOCK], t1[PK_ACT_BLOCK];                                                   \
        for (int64_t i0 = 0; i0 < n; i0 += PK_ACT_BLOCK) {                                      \
            int64_t m = n - i0 < PK_ACT_BLOCK ? n - i0 : PK_ACT_BLOCK;                          \
            if (d2) name##_with_d2(act, m, s + i0, a ? a + i0 : ta, d1 ? d1 + i0 : t1, d2 + i0); \
            else name##_no_d2(act, m, s + i0, a ? a + i0 : ta, d1 ? d1 + i0 : t1);              \
        }                                                                                       \
    }

PK_DEFINE_ACT_EVAL(pk_act_eval_d, double, 0)
PK_DEFINE_ACT_EVAL(pk_act_eval_f, float, 1)
