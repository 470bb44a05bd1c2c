/* pykfac.h: the public header of pykfac's C core.
 *
 * A plain C11 library over OpenBLAS (CBLAS + Fortran LAPACK) for the
 * curvature of dense neural networks. No Python here: pykfac/_core.c is a
 * thin CPython wrapper over exactly these functions.
 *
 * Overview
 *   pk_common.h  status codes (pk_strerror), dtypes, the explicit RNG state
 *   pk_mlp.h     networks, losses, gradients, Jacobians, J/H/GGN products,
 *                dense Hessian and GGN, diagonal GGN/Fisher, K-FAC factors
 *   pk_kron.h    one layer's Kronecker block G (x) A: products, damped
 *                solves and powers through eigendecompositions, log-det
 *   pk_linalg.h  framework-agnostic Laplace algebra: GGN from Jacobians,
 *                Woodbury, Cholesky, Kronecker eigen-solves, matrix normals
 *   pk_optim.h   K-FAC's damped block-diagonal / block-tridiagonal inverse,
 *                SGD and Adam updates
 *
 * House rules: every fallible function returns PK_OK or a negative PK_ERR_*
 * code; outputs are allocated by the caller; matrices are row-major and
 * C-contiguous; float (PK_FLOAT32) and double (PK_FLOAT64) share one source.
 *
 * Example: the GGN-vector product of a 2-layer tanh network with softmax
 * cross-entropy on n samples.
 *
 *     int64_t sizes[3] = {784, 512, 10};
 *     pk_act_t acts[1] = {PK_ACT_TANH};
 *     pk_mlp_t net = {PK_FLOAT64, 2, sizes, acts, theta};
 *     int64_t D = pk_mlp_num_params(&net);
 *     int rc = pk_curvature_matvec(&net, PK_CURV_GGN, PK_LOSS_CE, n, X, labels,
 *                                  1, v, gv);   // v, gv: D doubles
 *     if (rc) fprintf(stderr, "%s\n", pk_strerror(rc));
 */
#ifndef PYKFAC_H
#define PYKFAC_H

#include "pk_common.h"
#include "pk_kron.h"
#include "pk_linalg.h"
#include "pk_mlp.h"
#include "pk_optim.h"

#endif
