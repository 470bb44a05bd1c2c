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

#endif
