/* pk_test.h: a minimal test runner for the C tests of csrc/ (header only).
 *
 * A test is a `static void test_x(void)` that calls CHECK* macros; a failed
 * check prints file:line and the expression, and marks the running test as
 * failed (the test keeps going, so one run shows every failure). main() calls
 * PK_RUN(test_x) for each test and returns pk_test_summary("name"), which
 * prints the closing line `name: N passed, M failed` and returns the exit
 * status (0 only if nothing failed). */
#ifndef PK_TEST_H
#define PK_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int pk_test_passed, pk_test_failed, pk_test_current_failed;
static const char *pk_test_current = "";

static void pk_test_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "%s:%d: in %s: %s\n", file, line, pk_test_current, what);
    fflush(stderr);
    pk_test_current_failed = 1;
}

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) pk_test_fail(__FILE__, __LINE__, "CHECK(" #cond ") failed");             \
    } while (0)

#define CHECK_INT_EQ(got, want)                                                               \
    do {                                                                                      \
        long long pk_g_ = (long long)(got), pk_w_ = (long long)(want);                        \
        if (pk_g_ != pk_w_) {                                                                 \
            char pk_msg_[256];                                                                \
            snprintf(pk_msg_, sizeof pk_msg_, "%s == %lld, expected %s == %lld", #got, pk_g_, \
                     #want, pk_w_);                                                           \
            pk_test_fail(__FILE__, __LINE__, pk_msg_);                                        \
        }                                                                                     \
    } while (0)

/* |got - want| <= atol + rtol * |want|, and both finite. */
#define CHECK_CLOSE(got, want, rtol, atol)                                                    \
    do {                                                                                      \
        double pk_g_ = (double)(got), pk_w_ = (double)(want);                                 \
        if (!(isfinite(pk_g_) && fabs(pk_g_ - pk_w_) <= (atol) + (rtol)*fabs(pk_w_))) {       \
            char pk_msg_[256];                                                                \
            snprintf(pk_msg_, sizeof pk_msg_, "%s = %.17g, expected %s = %.17g", #got, pk_g_,  \
                     #want, pk_w_);                                                           \
            pk_test_fail(__FILE__, __LINE__, pk_msg_);                                        \
        }                                                                                     \
    } while (0)

/* Element-wise CHECK_CLOSE over n doubles; reports the first mismatch only. */
static int pk_test_allclose(const double *got, const double *want, long n, double rtol,
                            double atol, const char *file, int line, const char *what)
{
    for (long i = 0; i < n; i++) {
        if (!(isfinite(got[i]) && fabs(got[i] - want[i]) <= atol + rtol * fabs(want[i]))) {
            char msg[320];
            snprintf(msg, sizeof msg, "%s: element %ld is %.17g, expected %.17g", what, i, got[i],
                     want[i]);
            pk_test_fail(file, line, msg);
            return 0;
        }
    }
    return 1;
}
#define CHECK_ALLCLOSE(got, want, n, rtol, atol)                                              \
    pk_test_allclose((got), (want), (long)(n), (rtol), (atol), __FILE__, __LINE__,            \
                     #got " vs " #want)

#define PK_RUN(fn)                                                                            \
    do {                                                                                      \
        pk_test_current = #fn;                                                                \
        pk_test_current_failed = 0;                                                           \
        fn();                                                                                 \
        if (pk_test_current_failed) pk_test_failed++;                                         \
        else pk_test_passed++;                                                                \
    } while (0)

static int pk_test_summary(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, pk_test_passed, pk_test_failed);
    fflush(stdout);
    return pk_test_failed ? 1 : 0;
}

#endif
