/* util.h (internal): allocation and layout helpers shared by the C core. */
#ifndef PK_UTIL_H
#define PK_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* malloc(count * size) with overflow and negative-count checks; NULL on failure
 * (callers map it to PK_ERR_NOMEM). count 0 returns a valid 1-byte block. */
void *pk_alloc_elems(int64_t count, size_t size);

/* dst (cols x rows) = src (rows x cols)^T for elements of size 4 or 8. */
void pk_transpose(size_t elem, int64_t rows, int64_t cols, const void *src, void *dst);

/* Copy the lower triangle of the n x n matrix A (leading dim lda) to the upper. */
void pk_symmetrize(size_t elem, int64_t n, void *A, int64_t lda);

/* fn(ctx, begin, end) over [0, ntasks) cut into contiguous ranges of at least
 * grain tasks, on up to pk_blas_num_threads() threads (the caller's included).
 * fn must be safe to run concurrently on disjoint ranges. If a thread cannot
 * be started its range runs on the caller's, so this cannot fail. */
void pk_parallel_for(int64_t ntasks, int64_t grain, void (*fn)(void *ctx, int64_t begin, int64_t end),
                     void *ctx);

#endif
