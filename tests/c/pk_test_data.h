/* pk_test_data.h: test data helpers shared by the C tests that link the whole
 * core (header only): seeded normal fills from the core's own generator, and
 * zeroed allocations that end the test binary when memory runs out. */
#ifndef PK_TEST_DATA_H
#define PK_TEST_DATA_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "pykfac.h"

static inline void fill_normal(double *x, long n, uint64_t seed, double scale)
{
    pk_rng_t r;
    pk_rng_seed(&r, seed);
    for (long i = 0; i < n; i++) x[i] = scale * pk_rng_normal(&r);
}

static inline void *test_calloc(long n, size_t size)
{
    void *p = calloc((size_t)(n > 0 ? n : 1), size);
    if (!p) {
        fprintf(stderr, "out of memory in test\n");
        exit(2);
    }
    return p;
}

static inline double *dalloc(long n) { return test_calloc(n, sizeof(double)); }
static inline float *falloc(long n) { return test_calloc(n, sizeof(float)); }

#endif
