/* act.h (internal): vectorised activation functions (see act.c). */
#ifndef PK_ACT_H
#define PK_ACT_H

#include "pk_mlp.h"

/* a = phi(s), d1 = phi'(s), d2 = phi''(s) elementwise; any output may be NULL.
 * Outputs must not alias s. */
void pk_act_eval_d(pk_act_t act, int64_t n, const double *s, double *a, double *d1, double *d2);
void pk_act_eval_f(pk_act_t act, int64_t n, const float *s, float *a, float *d1, float *d2);

#endif
