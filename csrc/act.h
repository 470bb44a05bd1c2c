/* act.h (internal): vectorised activation functions (see act.c). */
#ifndef PK_ACT_H
#define PK_ACT_H

#include "pk_mlp.h"

/* Marks a loop kernel for one AVX2 clone picked at load time, plus the
 * baseline SSE2 version (the build targets plain x86-64). Neither uses FMA, so
 * both give the same bits. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PK_VECTOR_CLONES __attribute__((target_clones("default", "avx2")))
#else
#define PK_VECTOR_CLONES
#endif

/* a = phi(s), d1 = phi'(s), d2 = phi''(s) elementwise; any output may be NULL.
 * Outputs must not alias s. */
void pk_act_eval_d(pk_act_t act, int64_t n, const double *s, double *a, double *d1, double *d2);
void pk_act_eval_f(pk_act_t act, int64_t n, const float *s, float *a, float *d1, float *d2);

#endif
