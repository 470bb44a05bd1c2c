/* blas.h (internal): the CBLAS and Fortran LAPACK symbols pykfac uses.
 *
 * Declared here rather than taken from a cblas.h so the same source builds
 * against a system OpenBLAS (plain names) and scipy-openblas32 (names with a
 * `scipy_` prefix): PK_BLAS_PREFIX is set by setup.py. Both use 32-bit
 * integers (LP64), so every dimension is checked against INT_MAX first. */
#ifndef PK_BLAS_H
#define PK_BLAS_H

#include <limits.h>
#include <stdint.h>

#define PK_EMPTY
#define PK_CAT_(a, b) a##b
#define PK_CAT(a, b) PK_CAT_(a, b)
#define PK_BLAS(name) PK_CAT(PK_BLAS_PREFIX, name)

typedef int pk_blasint;

enum pk_cblas_order { PkRowMajor = 101, PkColMajor = 102 };
enum pk_cblas_trans { PkNoTrans = 111, PkTrans = 112 };
enum pk_cblas_uplo { PkUpper = 121, PkLower = 122 };

#define PK_BLAS_DECL(T, p)                                                                    \
    void PK_BLAS(cblas_##p##gemm)(int order, int ta, int tb, pk_blasint m, pk_blasint n,      \
                                  pk_blasint k, T alpha, const T *a, pk_blasint lda,           \
                                  const T *b, pk_blasint ldb, T beta, T *c, pk_blasint ldc);   \
    void PK_BLAS(cblas_##p##syrk)(int order, int uplo, int trans, pk_blasint n, pk_blasint k,  \
                                  T alpha, const T *a, pk_blasint lda, T beta, T *c,           \
                                  pk_blasint ldc);                                             \
    void PK_BLAS(cblas_##p##gemv)(int order, int trans, pk_blasint m, pk_blasint n, T alpha,   \
                                  const T *a, pk_blasint lda, const T *x, pk_blasint incx,     \
                                  T beta, T *y, pk_blasint incy);                              \
    void PK_BLAS(cblas_##p##axpy)(pk_blasint n, T alpha, const T *x, pk_blasint incx, T *y,    \
                                  pk_blasint incy);                                            \
    T PK_BLAS(cblas_##p##dot)(pk_blasint n, const T *x, pk_blasint incx, const T *y,           \
                              pk_blasint incy);                                                \
    void PK_BLAS(cblas_##p##scal)(pk_blasint n, T alpha, T *x, pk_blasint incx);               \
    void PK_BLAS(p##syevd_)(const char *jobz, const char *uplo, const pk_blasint *n, T *a,     \
                            const pk_blasint *lda, T *w, T *work, const pk_blasint *lwork,     \
                            pk_blasint *iwork, const pk_blasint *liwork, pk_blasint *info);    \
    void PK_BLAS(p##potrf_)(const char *uplo, const pk_blasint *n, T *a,                       \
                            const pk_blasint *lda, pk_blasint *info);                          \
    void PK_BLAS(p##potrs_)(const char *uplo, const pk_blasint *n, const pk_blasint *nrhs,     \
                            const T *a, const pk_blasint *lda, T *b, const pk_blasint *ldb,    \
                            pk_blasint *info);                                                 \
    void PK_BLAS(p##potri_)(const char *uplo, const pk_blasint *n, T *a,                       \
                            const pk_blasint *lda, pk_blasint *info);                          \
    void PK_BLAS(p##trtrs_)(const char *uplo, const char *trans, const char *diag,            \
                            const pk_blasint *n, const pk_blasint *nrhs, const T *a,           \
                            const pk_blasint *lda, T *b, const pk_blasint *ldb,                \
                            pk_blasint *info);

PK_BLAS_DECL(double, d)
PK_BLAS_DECL(float, s)

int PK_BLAS(openblas_get_num_threads)(void);
void PK_BLAS(openblas_set_num_threads)(int num_threads);
char *PK_BLAS(openblas_get_config)(void);
char *PK_BLAS(openblas_get_corename)(void);

/* 1 if every value fits a BLAS integer. */
static inline int pk_fits_blasint(int64_t v) { return v >= 0 && v <= (int64_t)INT_MAX; }

#endif
