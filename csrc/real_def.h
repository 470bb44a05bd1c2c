/* real_def.h (internal): type-generic names for a template (*.inc) file.
 * Define PK_REAL as 64 or 32, then include this at the top of the template
 * and real_undef.h at its end; the template is included once per type, so
 * float and double share one source. */
#if PK_REAL == 64
#define REAL double
#define PK_DT PK_FLOAT64
#define SUF(name) name##_d
#define XGEMM PK_BLAS(cblas_dgemm)
#define XSYRK PK_BLAS(cblas_dsyrk)
#define XGEMV PK_BLAS(cblas_dgemv)
#define XAXPY PK_BLAS(cblas_daxpy)
#define XDOT PK_BLAS(cblas_ddot)
#define XSCAL PK_BLAS(cblas_dscal)
#define XSYEVD PK_BLAS(dsyevd_)
#define XPOTRF PK_BLAS(dpotrf_)
#define XPOTRS PK_BLAS(dpotrs_)
#define XPOTRI PK_BLAS(dpotri_)
#define XTRTRS PK_BLAS(dtrtrs_)
#define RSQRT sqrt
#define REXP exp
#define RLOG log
#elif PK_REAL == 32
#define REAL float
#define PK_DT PK_FLOAT32
#define SUF(name) name##_f
#define XGEMM PK_BLAS(cblas_sgemm)
#define XSYRK PK_BLAS(cblas_ssyrk)
#define XGEMV PK_BLAS(cblas_sgemv)
#define XAXPY PK_BLAS(cblas_saxpy)
#define XDOT PK_BLAS(cblas_sdot)
#define XSCAL PK_BLAS(cblas_sscal)
#define XSYEVD PK_BLAS(ssyevd_)
#define XPOTRF PK_BLAS(spotrf_)
#define XPOTRS PK_BLAS(spotrs_)
#define XPOTRI PK_BLAS(spotri_)
#define XTRTRS PK_BLAS(strtrs_)
#define RSQRT sqrtf
#define REXP expf
#define RLOG logf
#else
#error "define PK_REAL as 32 or 64 before including real_def.h"
#endif
