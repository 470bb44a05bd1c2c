/* util.c: allocation and layout helpers (see util.h). */
#include "util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "pk_common.h"

void *pk_alloc_elems(int64_t count, size_t size)
{
    if (count < 0 || size == 0) return NULL;
    if ((uint64_t)count > SIZE_MAX / size) return NULL;
    size_t bytes = (size_t)count * size;
    return malloc(bytes ? bytes : 1);
}

/* Blocked so both the reads and the writes stay in cache. */
#define PK_TBLOCK 32
#define TRANSPOSE_BODY(T)                                                              \
    do {                                                                               \
        const T *s = src;                                                              \
        T *d = dst;                                                                    \
        for (int64_t i0 = 0; i0 < rows; i0 += PK_TBLOCK)                               \
            for (int64_t j0 = 0; j0 < cols; j0 += PK_TBLOCK) {                         \
                int64_t i1 = i0 + PK_TBLOCK < rows ? i0 + PK_TBLOCK : rows;            \
                int64_t j1 = j0 + PK_TBLOCK < cols ? j0 + PK_TBLOCK : cols;            \
                for (int64_t i = i0; i < i1; i++)                                      \
                    for (int64_t j = j0; j < j1; j++) d[j * rows + i] = s[i * cols + j]; \
            }                                                                          \
    } while (0)

void pk_transpose(size_t elem, int64_t rows, int64_t cols, const void *src, void *dst)
{
    if (rows == 1 || cols == 1) {
        memcpy(dst, src, (size_t)(rows * cols) * elem);
        return;
    }
    if (elem == sizeof(double)) TRANSPOSE_BODY(double);
    else TRANSPOSE_BODY(float);
}

#define SYMMETRIZE_BODY(T)                                                             \
    do {                                                                               \
        T *a = A;                                                                      \
        for (int64_t i = 0; i < n; i++)                                                \
            for (int64_t j = i + 1; j < n; j++) a[i * lda + j] = a[j * lda + i];       \
    } while (0)

void pk_symmetrize(size_t elem, int64_t n, void *A, int64_t lda)
{
    if (elem == sizeof(double)) SYMMETRIZE_BODY(double);
    else SYMMETRIZE_BODY(float);
}

/* ---- fork-join over task ranges ------------------------------------------- */
#define PK_MAX_THREADS 64

typedef struct {
    void (*fn)(void *, int64_t, int64_t);
    void *ctx;
    int64_t begin, end;
} pk_range_t;

static void *run_range(void *arg)
{
    const pk_range_t *r = arg;
    r->fn(r->ctx, r->begin, r->end);
    return NULL;
}

void pk_parallel_for(int64_t ntasks, int64_t grain, void (*fn)(void *ctx, int64_t begin, int64_t end),
                     void *ctx)
{
    if (ntasks <= 0) return;
    if (grain < 1) grain = 1;
    int64_t nt = pk_blas_num_threads();
    if (nt > PK_MAX_THREADS) nt = PK_MAX_THREADS;
    if (nt > ntasks / grain) nt = ntasks / grain;
    if (nt <= 1) {
        fn(ctx, 0, ntasks);
        return;
    }
    pk_range_t range[PK_MAX_THREADS];
    pthread_t tid[PK_MAX_THREADS];
    int started[PK_MAX_THREADS] = {0};
    for (int64_t t = 0; t < nt; t++) {
        range[t] = (pk_range_t){fn, ctx, ntasks * t / nt, ntasks * (t + 1) / nt};
        if (t > 0) started[t] = pthread_create(&tid[t], NULL, run_range, &range[t]) == 0;
    }
    run_range(&range[0]);
    for (int64_t t = 1; t < nt; t++) {
        if (started[t]) pthread_join(tid[t], NULL);
        else run_range(&range[t]);
    }
}
