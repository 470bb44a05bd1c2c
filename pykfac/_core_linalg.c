/* _core_linalg.c: wrappers of framework-agnostic linear algebra for Laplace (csrc/pk_linalg.h).
 *
 * The dtype of a call is float32 when its first array argument is float32 and
 * float64 otherwise (integer input is promoted); the other arrays are cast to
 * it. Inputs are never written; outputs are fresh arrays. Every kernel runs
 * with the GIL released. pykfac/linalg.py adds the friendly Python layer. */
#include "_core.h"

#include <math.h>

/* A held (n,) float64 argument (weights, diagonals), whatever the call's dtype. */
static PyArrayObject *arg_f64_vector(pk_call_t *c, PyObject *obj, const char *name, npy_intp n)
{
    npy_intp shape[1] = {n};
    return pk_call_hold(c, pk_arg_array(obj, name, PK_ARG_REAL, NPY_FLOAT64, 1, shape, 1));
}

/* alpha: a number or a 1-D array of D values, all finite and > 0, as float64. */
static PyArrayObject *arg_alpha(PyObject *obj, npy_intp D)
{
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_OTF(obj, NPY_FLOAT64, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (!a) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "alpha: expected a number or a (D,) array, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    npy_intp size = PyArray_SIZE(a);
    if (PyArray_NDIM(a) > 1 || !(size == 1 || size == D)) {
        PyErr_Format(PyExc_ValueError, "alpha: expected a number or a (%ld,) array, got %ld values",
                     (long)D, (long)size);
        Py_DECREF(a);
        return NULL;
    }
    const double *p = PyArray_DATA(a);
    for (npy_intp i = 0; i < size; i++) {
        if (!(p[i] > 0.0) || !isfinite(p[i])) {
            PyErr_Format(PyExc_ValueError, "alpha: expected finite values > 0, got %s at index %ld",
                         pk_numstr(p[i]).s, (long)i);
            Py_DECREF(a);
            return NULL;
        }
    }
    return a;
}

/* n: a number of samples >= 0. */
static int check_samples(Py_ssize_t n)
{
    if (n >= 0) return 0;
    PyErr_Format(PyExc_ValueError, "n: expected a number of samples >= 0, got %zd", n);
    return -1;
}

/* ---- GGN from Jacobians ---------------------------------------------------------- */

static PyObject *py_ggn_from_jacobians(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"J", "Lam", NULL};
    PyObject *Jo, *Lo = Py_None;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:ggn_from_jacobians", kwlist, &Jo, &Lo)) return NULL;
    PyArrayObject *J = pk_call_first(&c, Jo, "J", PK_DTYPE_PROMOTE, 3), *L = NULL, *G;
    if (!J) return pk_call_fail(&c);
    npy_intp n = PyArray_DIM(J, 0), K = PyArray_DIM(J, 1), D = PyArray_DIM(J, 2);
    npy_intp ls[3] = {n, K, K}, gd[2] = {D, D};
    if ((Lo != Py_None && !(L = pk_call_input(&c, Lo, "Lam", 3, ls))) || !(G = pk_call_output(&c, 2, gd)))
        return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_ggn_from_jacobians(c.dtype, n, K, D, PyArray_DATA(J), L ? PyArray_DATA(L) : NULL,
                                           PyArray_DATA(G)));
    return pk_call_return(&c, rc, "ggn_from_jacobians", G);
}

static PyObject *py_ggn_linear(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"Phi", "Lam", NULL};
    PyObject *Po, *Lo;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:ggn_linear", kwlist, &Po, &Lo)) return NULL;
    PyArrayObject *P = pk_call_first(&c, Po, "Phi", PK_DTYPE_PROMOTE, 2), *L, *G;
    if (!P) return pk_call_fail(&c);
    npy_intp n = PyArray_DIM(P, 0), h = PyArray_DIM(P, 1);
    npy_intp ls[3] = {n, -1, -1};
    if (!(L = pk_call_input(&c, Lo, "Lam", 3, ls))) return pk_call_fail(&c);
    npy_intp K = PyArray_DIM(L, 1);
    if (PyArray_DIM(L, 2) != K) {
        PyErr_Format(PyExc_ValueError, "Lam: expected shape (%ld, K, K), got (%ld, %ld, %ld)", (long)n,
                     (long)n, (long)K, (long)PyArray_DIM(L, 2));
        return pk_call_fail(&c);
    }
    npy_intp gd[2] = {K * (h + 1), K * (h + 1)};
    if (!(G = pk_call_output(&c, 2, gd))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_ggn_linear(c.dtype, n, K, h, PyArray_DATA(P), PyArray_DATA(L), PyArray_DATA(G)));
    return pk_call_return(&c, rc, "ggn_linear", G);
}

static PyObject *py_ggn_factor(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"J", "S", NULL};
    PyObject *Jo, *So;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:ggn_factor", kwlist, &Jo, &So)) return NULL;
    PyArrayObject *J = pk_call_first(&c, Jo, "J", PK_DTYPE_PROMOTE, 3), *S, *U;
    if (!J) return pk_call_fail(&c);
    npy_intp n = PyArray_DIM(J, 0), K = PyArray_DIM(J, 1), D = PyArray_DIM(J, 2);
    npy_intp ss[3] = {n, K, K}, ud[2] = {D, n * K};
    if (!(S = pk_call_input(&c, So, "S", 3, ss)) || !(U = pk_call_output(&c, 2, ud))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_ggn_factor(c.dtype, n, K, D, PyArray_DATA(J), PyArray_DATA(S), PyArray_DATA(U)));
    return pk_call_return(&c, rc, "ggn_factor", U);
}

static PyObject *py_psd_sqrt(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"Lam", NULL};
    PyObject *Lo;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:psd_sqrt", kwlist, &Lo)) return NULL;
    PyArrayObject *L = pk_call_first(&c, Lo, "Lam", PK_DTYPE_PROMOTE, 3), *S;
    if (!L) return pk_call_fail(&c);
    if (PyArray_DIM(L, 1) != PyArray_DIM(L, 2)) {
        PyErr_Format(PyExc_ValueError, "Lam: expected shape (N, K, K), got (%ld, %ld, %ld)",
                     (long)PyArray_DIM(L, 0), (long)PyArray_DIM(L, 1), (long)PyArray_DIM(L, 2));
        return pk_call_fail(&c);
    }
    if (!(S = pk_call_output(&c, 3, PyArray_DIMS(L)))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_psd_sqrt_batched(c.dtype, PyArray_DIM(L, 0), PyArray_DIM(L, 1), PyArray_DATA(L),
                                         PyArray_DATA(S)));
    return pk_call_return(&c, rc, "Lam (square root of the output Hessians)", S);
}

static PyObject *py_batched_gram(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"J", "R", NULL};
    PyObject *Jo, *Ro;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:batched_gram", kwlist, &Jo, &Ro)) return NULL;
    PyArrayObject *J = pk_call_first(&c, Jo, "J", PK_DTYPE_PROMOTE, 3), *R, *O;
    if (!J) return pk_call_fail(&c);
    npy_intp n = PyArray_DIM(J, 0), K = PyArray_DIM(J, 1), D = PyArray_DIM(J, 2);
    npy_intp rs[2] = {D, n * K}, od[3] = {n, K, K};
    if (!(R = pk_call_input(&c, Ro, "R", 2, rs)) || !(O = pk_call_output(&c, 3, od))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_batched_gram(c.dtype, n, K, D, PyArray_DATA(J), PyArray_DATA(R), PyArray_DATA(O)));
    return pk_call_return(&c, rc, "batched_gram", O);
}

static PyObject *py_diag_quad(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"J", "w", NULL};
    PyObject *Jo, *wo;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:diag_quad", kwlist, &Jo, &wo)) return NULL;
    PyArrayObject *J = pk_call_first(&c, Jo, "J", PK_DTYPE_PROMOTE, 3), *w, *O;
    if (!J) return pk_call_fail(&c);
    npy_intp n = PyArray_DIM(J, 0), K = PyArray_DIM(J, 1), D = PyArray_DIM(J, 2);
    npy_intp od[3] = {n, K, K};
    if (!(w = arg_f64_vector(&c, wo, "w", D)) || !(O = pk_call_output(&c, 3, od))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_diag_quad(c.dtype, n, K, D, PyArray_DATA(J), PyArray_DATA(w), PyArray_DATA(O)));
    return pk_call_return(&c, rc, "diag_quad", O);
}

/* ---- Woodbury -------------------------------------------------------------------- */

static const char *WB_CTX = "woodbury: capacitance alpha I + Gmat^T Gmat";

/* Start a Woodbury call from (alpha, Gmat): the dtype follows Gmat. */
static int wb_args(pk_call_t *c, PyObject *alphao, PyObject *Uo, PyArrayObject **alpha, PyArrayObject **U)
{
    if (!(*U = pk_call_first(c, Uo, "Gmat", PK_DTYPE_PROMOTE, 2))) return -1;
    if (!(*alpha = pk_call_hold(c, arg_alpha(alphao, PyArray_DIM(*U, 0))))) return -1;
    return 0;
}

#define WB_ALPHA(a) PyArray_SIZE(a), (const double *)PyArray_DATA(a)

static PyObject *py_woodbury_logdet(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"alpha", "Gmat", NULL};
    PyObject *ao, *Uo;
    PyArrayObject *alpha, *U;
    double logdet = 0.0;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:woodbury_logdet", kwlist, &ao, &Uo)) return NULL;
    if (wb_args(&c, ao, Uo, &alpha, &U)) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_woodbury_logdet(c.dtype, PyArray_DIM(U, 0), PyArray_DIM(U, 1), WB_ALPHA(alpha),
                                        PyArray_DATA(U), &logdet));
    if (rc) return pk_call_raise(&c, rc, WB_CTX);
    return pk_call_release(&c, PyFloat_FromDouble(logdet));
}

static PyObject *py_woodbury_solve(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"alpha", "Gmat", "V", NULL};
    PyObject *ao, *Uo, *Vo;
    PyArrayObject *alpha, *U, *V, *R;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:woodbury_solve", kwlist, &ao, &Uo, &Vo)) return NULL;
    if (wb_args(&c, ao, Uo, &alpha, &U)) return pk_call_fail(&c);
    npy_intp D = PyArray_DIM(U, 0);
    npy_intp vs[2] = {D, -1};
    if (!(V = pk_call_input(&c, Vo, "V", 2, vs)) || !(R = pk_call_output(&c, 2, PyArray_DIMS(V))))
        return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_woodbury_solve(c.dtype, D, PyArray_DIM(U, 1), WB_ALPHA(alpha), PyArray_DATA(U),
                                       PyArray_DIM(V, 1), PyArray_DATA(V), PyArray_DATA(R)));
    return pk_call_return(&c, rc, WB_CTX, R);
}

static PyObject *py_woodbury_matrix(PyObject *args, PyObject *kwds, int diag_only)
{
    static char *kwlist[] = {"alpha", "Gmat", NULL};
    PyObject *ao, *Uo;
    PyArrayObject *alpha, *U, *R;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kwlist, &ao, &Uo)) return NULL;
    if (wb_args(&c, ao, Uo, &alpha, &U)) return pk_call_fail(&c);
    npy_intp D = PyArray_DIM(U, 0), M = PyArray_DIM(U, 1);
    npy_intp dims[2] = {D, D};
    if (!(R = pk_call_output(&c, diag_only ? 1 : 2, dims))) return pk_call_fail(&c);
    int rc;
    if (diag_only)
        PK_RUN_NOGIL(rc, pk_woodbury_diag_inverse(c.dtype, D, M, WB_ALPHA(alpha), PyArray_DATA(U), PyArray_DATA(R)));
    else
        PK_RUN_NOGIL(rc, pk_woodbury_inverse(c.dtype, D, M, WB_ALPHA(alpha), PyArray_DATA(U), PyArray_DATA(R)));
    return pk_call_return(&c, rc, WB_CTX, R);
}

static PyObject *py_woodbury_inverse(PyObject *self, PyObject *args, PyObject *kwds)
{
    return py_woodbury_matrix(args, kwds, 0);
}

static PyObject *py_woodbury_diag_inverse(PyObject *self, PyObject *args, PyObject *kwds)
{
    return py_woodbury_matrix(args, kwds, 1);
}

static PyObject *py_woodbury_sample(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"alpha", "Gmat", "n", "seed", NULL};
    PyObject *ao, *Uo, *seed;
    Py_ssize_t n;
    PyArrayObject *alpha, *U, *R;
    pk_rng_t rng;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOnO:woodbury_sample", kwlist, &ao, &Uo, &n, &seed))
        return NULL;
    if (check_samples(n) || pk_parse_seed(seed, &rng) < 0) return NULL;
    if (wb_args(&c, ao, Uo, &alpha, &U)) return pk_call_fail(&c);
    npy_intp D = PyArray_DIM(U, 0);
    npy_intp dims[2] = {(npy_intp)n, D};
    if (!(R = pk_call_output(&c, 2, dims))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_woodbury_sample(c.dtype, D, PyArray_DIM(U, 1), WB_ALPHA(alpha), PyArray_DATA(U), n, &rng,
                                        PyArray_DATA(R)));
    return pk_call_return(&c, rc, WB_CTX, R);
}

/* ---- low-rank eigendecomposition ------------------------------------------------- */

static PyObject *py_lowrank_eigh(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"Gmat", NULL};
    PyObject *Uo;
    int64_t rank = 0;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:lowrank_eigh", kwlist, &Uo)) return NULL;
    PyArrayObject *U = pk_call_first(&c, Uo, "Gmat", PK_DTYPE_PROMOTE, 2), *s, *Q;
    if (!U) return pk_call_fail(&c);
    npy_intp D = PyArray_DIM(U, 0), M = PyArray_DIM(U, 1);
    npy_intp sd[1] = {M}, qd[2] = {D, M};
    if (!(s = pk_call_output(&c, 1, sd)) || !(Q = pk_call_output(&c, 2, qd))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_lowrank_eigh(c.dtype, D, M, PyArray_DATA(U), PyArray_DATA(s), PyArray_DATA(Q), &rank));
    if (rc) return pk_call_raise(&c, rc, "lowrank_eigh");
    return pk_call_release(&c, Py_BuildValue("(OOL)", s, Q, (long long)rank));
}

/* ---- low rank from layer factors ------------------------------------------------ */

/* The Gmat factors U[l] (N, Kp, out_l) and A[l] (N, in_l), in_{l+1} = out_l,
 * into U and A; the widths into sizes, *N and *Kp. 0, or -1 with the exception. */
static int lr_gmat_factors(PyObject *Uo, PyObject *Ao, int typenum, pk_arrlist_t *U, pk_arrlist_t *A,
                           int64_t *sizes, npy_intp *N, npy_intp *Kp)
{
    Py_ssize_t L = pk_seq_len(Uo, "U", -1);
    if (L < 0 || pk_seq_len(Ao, "A", L) < 0) return -1;
    *N = -1;
    *Kp = -1;
    for (Py_ssize_t l = 0; l < L; l++) {
        npy_intp ushape[3] = {*N, *Kp, -1};
        if (pk_arrlist_push(U, pk_seq_item(Uo, "U", l, typenum, 3, ushape))) return -1;
        PyArrayObject *u = U->a[l];
        npy_intp ashape[2] = {PyArray_DIM(u, 0), l > 0 ? (npy_intp)sizes[l] : -1};
        if (pk_arrlist_push(A, pk_seq_item(Ao, "A", l, typenum, 2, ashape))) return -1;
        *N = PyArray_DIM(u, 0);
        *Kp = PyArray_DIM(u, 1);
        sizes[l] = PyArray_DIM(A->a[l], 1);
        sizes[l + 1] = PyArray_DIM(u, 2);
    }
    return 0;
}

static PyObject *py_lowrank_eigh_layers(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"U", "A", "max_rank", NULL};
    PyObject *Uo, *Ao, *result = NULL;
    Py_ssize_t max_rank;
    pk_arrlist_t U = {0}, A = {0};
    int64_t sizes[PK_MAX_LIST + 1], rank = 0;
    npy_intp N, Kp;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOn:lowrank_eigh_layers", kwlist, &Uo, &Ao, &max_rank))
        return NULL;
    pk_call_init(&c, pk_seq_typenum(Uo));
    if (max_rank < 1) {
        PyErr_Format(PyExc_ValueError, "max_rank: expected an int >= 1, got %zd", max_rank);
        goto out;
    }
    if (lr_gmat_factors(Uo, Ao, c.typenum, &U, &A, sizes, &N, &Kp) < 0) goto out;
    double D = 0, M = (double)N * (double)Kp;
    for (int l = 0; l < U.n; l++) D += (double)sizes[l + 1] * (double)(sizes[l] + 1);
    const double rcap = (double)max_rank < M ? (double)max_rank : M;
    const double item = c.typenum == NPY_FLOAT32 ? 4.0 : 8.0;
    if (pk_check_memory(item * ((D + M) * rcap + (M > D ? D * M + 2 * D * D : 3 * M * M + (double)N * N)),
                        "lowrank_eigh_layers"))
        goto out;
    npy_intp sd[1] = {(npy_intp)M}, qd[2] = {(npy_intp)D, (npy_intp)rcap}, cd[2] = {(npy_intp)M, (npy_intp)rcap};
    PyArrayObject *s, *Q, *C;
    if (!(s = pk_call_output(&c, 1, sd)) || !(Q = pk_call_output(&c, 2, qd)) || !(C = pk_call_output(&c, 2, cd)))
        goto out;
    int rc;
    PK_RUN_NOGIL(rc, pk_lowrank_eigh_layers(c.dtype, U.n, sizes, N, Kp, pk_arrlist_data(&U), pk_arrlist_data(&A),
                                            max_rank, PyArray_DATA(s), PyArray_DATA(Q), PyArray_DATA(C), &rank));
    if (rc) pk_raise(rc, "lowrank_eigh_layers");
    else result = Py_BuildValue("(OOOL)", s, Q, C, (long long)rank);
out:
    pk_arrlist_release(&U);
    pk_arrlist_release(&A);
    return pk_call_release(&c, result);
}

static PyObject *py_lowrank_jq_layers(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"Gx", "Axb", "U", "A", "w", "C", NULL};
    PyObject *Gxo, *Axo, *Uo, *Ao, *wo, *Co, *result = NULL;
    pk_arrlist_t U = {0}, A = {0}, Gx = {0}, Axb = {0};
    int64_t sizes[PK_MAX_LIST + 1];
    npy_intp N, Kp, Nx = -1, K = -1;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO:lowrank_jq_layers", kwlist, &Gxo, &Axo, &Uo, &Ao, &wo,
                                     &Co))
        return NULL;
    pk_call_init(&c, pk_seq_typenum(Uo));
    if (lr_gmat_factors(Uo, Ao, c.typenum, &U, &A, sizes, &N, &Kp) < 0) goto out;
    const int L = U.n;
    if (pk_seq_len(Gxo, "Gx", L) < 0 || pk_seq_len(Axo, "Axb", L) < 0) goto out;
    for (int l = 0; l < L; l++) {
        npy_intp gshape[3] = {Nx, K, (npy_intp)sizes[l + 1]};
        if (pk_arrlist_push(&Gx, pk_seq_item(Gxo, "Gx", l, c.typenum, 3, gshape))) goto out;
        Nx = PyArray_DIM(Gx.a[l], 0);
        K = PyArray_DIM(Gx.a[l], 1);
        npy_intp xshape[2] = {Nx, (npy_intp)sizes[l] + 1};
        if (pk_arrlist_push(&Axb, pk_seq_item(Axo, "Axb", l, c.typenum, 2, xshape))) goto out;
    }
    PyArrayObject *w = NULL, *C, *R;
    if (wo != Py_None) {
        npy_intp wshape[1] = {L};
        w = pk_call_hold(&c, pk_arg_array(wo, "w", PK_ARG_REAL, NPY_FLOAT64, 1, wshape, 1));
        if (!w) goto out;
    }
    npy_intp cshape[2] = {N * Kp, -1};
    if (!(C = pk_call_input(&c, Co, "C", 2, cshape))) goto out;
    npy_intp rd[3] = {Nx, K, PyArray_DIM(C, 1)};
    if (!(R = pk_call_output(&c, 3, rd))) goto out;
    int rc;
    PK_RUN_NOGIL(rc, pk_lowrank_jq_layers(c.dtype, L, sizes, Nx, K, pk_arrlist_data(&Gx), pk_arrlist_data(&Axb), N,
                                          Kp, pk_arrlist_data(&U), pk_arrlist_data(&A),
                                          w ? (const double *)PyArray_DATA(w) : NULL, rd[2], PyArray_DATA(C),
                                          PyArray_DATA(R)));
    if (rc) pk_raise(rc, "lowrank_jq_layers");
    else result = Py_BuildValue("O", R);
out:
    pk_arrlist_release(&U);
    pk_arrlist_release(&A);
    pk_arrlist_release(&Gx);
    pk_arrlist_release(&Axb);
    return pk_call_release(&c, result);
}

static PyObject *py_lowrank_apply(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"Q", "a0", "d", "V", NULL};
    PyObject *Qo, *do_, *Vo;
    double a0;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OdOO:lowrank_apply", kwlist, &Qo, &a0, &do_, &Vo)) return NULL;
    PyArrayObject *Q = pk_call_first(&c, Qo, "Q", PK_DTYPE_PROMOTE, 2), *d, *V, *R;
    if (!Q) return pk_call_fail(&c);
    npy_intp D = PyArray_DIM(Q, 0), r = PyArray_DIM(Q, 1);
    npy_intp vs[2] = {D, -1};
    if (!(d = arg_f64_vector(&c, do_, "d", r)) || !(V = pk_call_input(&c, Vo, "V", 2, vs))) return pk_call_fail(&c);
    if (!isfinite(a0)) {
        PyErr_SetString(PyExc_ValueError, "a0: expected a finite number");
        return pk_call_fail(&c);
    }
    if (!(R = pk_call_output(&c, 2, PyArray_DIMS(V)))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_lowrank_apply(c.dtype, D, r, PyArray_DATA(Q), a0, PyArray_DATA(d), PyArray_DIM(V, 1),
                                      PyArray_DATA(V), PyArray_DATA(R)));
    return pk_call_return(&c, rc, "lowrank_apply", R);
}

static PyObject *py_lowrank_quad(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"J", "Q", "a0", "d", NULL};
    PyObject *Jo, *Qo, *do_;
    double a0;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOdO:lowrank_quad", kwlist, &Jo, &Qo, &a0, &do_)) return NULL;
    PyArrayObject *J = pk_call_first(&c, Jo, "J", PK_DTYPE_PROMOTE, 3), *Q, *d, *O;
    if (!J) return pk_call_fail(&c);
    npy_intp N = PyArray_DIM(J, 0), K = PyArray_DIM(J, 1), D = PyArray_DIM(J, 2);
    npy_intp qs[2] = {D, -1}, od[3] = {N, K, K};
    if (!(Q = pk_call_input(&c, Qo, "Q", 2, qs)) || !(d = arg_f64_vector(&c, do_, "d", PyArray_DIM(Q, 1))))
        return pk_call_fail(&c);
    if (!isfinite(a0)) {
        PyErr_SetString(PyExc_ValueError, "a0: expected a finite number");
        return pk_call_fail(&c);
    }
    if (!(O = pk_call_output(&c, 3, od))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_lowrank_quad(c.dtype, N, K, D, PyArray_DIM(Q, 1), PyArray_DATA(J), PyArray_DATA(Q), a0,
                                     PyArray_DATA(d), PyArray_DATA(O)));
    return pk_call_return(&c, rc, "lowrank_quad", O);
}

static PyObject *py_sym_eigvals(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"M", NULL};
    PyObject *Mo;
    npy_intp n;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:sym_eigvals", kwlist, &Mo)) return NULL;
    PyArrayObject *M = pk_call_first_square(&c, Mo, "M", PK_DTYPE_PROMOTE, &n), *w;
    if (!M || !(w = pk_call_output(&c, 1, &n))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_sym_eigvals(c.dtype, n, PyArray_DATA(M), PyArray_DATA(w)));
    return pk_call_return(&c, rc, "sym_eigvals", w);
}

/* ---- Cholesky ---------------------------------------------------------------------- */

static PyObject *py_chol(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"A", "name", NULL};
    PyObject *Ao;
    const char *name = "A";
    npy_intp n;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|s:chol", kwlist, &Ao, &name)) return NULL;
    PyArrayObject *A = pk_call_first_square(&c, Ao, name, PK_DTYPE_PROMOTE, &n), *L;
    if (!A || !(L = pk_call_output(&c, 2, PyArray_DIMS(A)))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_chol(c.dtype, n, PyArray_DATA(A), PyArray_DATA(L)));
    return pk_call_return(&c, rc, name, L);
}

/* The Cholesky factor argument of chol_solve / chol_sample. check_L=False skips
 * the O(n^2) NaN/Inf scan for a factor from chol() (finite by construction:
 * |L_ij| <= sqrt(A_ii)) that pk.linalg.DensePrecision reuses for every solve and
 * draw; on a 2570-wide float32 factor the scan took a third of a 100-draw sample. */
static PyArrayObject *chol_factor_arg(pk_call_t *c, PyObject *Lo, int check_L, npy_intp *n)
{
    if (pk_call_start(c, Lo, "L", PK_DTYPE_PROMOTE)) return NULL;
    const npy_intp any[2] = {-1, -1};
    PyArrayObject *L = pk_call_hold(c, pk_arg_array(Lo, "L", PK_ARG_REAL, c->typenum, 2, any, check_L));
    if (!L) return NULL;
    if (PyArray_DIM(L, 0) != PyArray_DIM(L, 1)) {
        PyErr_Format(PyExc_ValueError, "L: expected a square matrix, got shape (%ld, %ld)",
                     (long)PyArray_DIM(L, 0), (long)PyArray_DIM(L, 1));
        return NULL;
    }
    *n = PyArray_DIM(L, 0);
    return L;
}

static PyObject *py_chol_solve(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"L", "B", "check_L", NULL};
    PyObject *Lo, *Bo;
    int check_L = 1;
    npy_intp n;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|p:chol_solve", kwlist, &Lo, &Bo, &check_L)) return NULL;
    PyArrayObject *L = chol_factor_arg(&c, Lo, check_L, &n), *B, *X;
    if (!L) return pk_call_fail(&c);
    npy_intp bs[2] = {n, -1};
    if (!(B = pk_call_input(&c, Bo, "B", 2, bs)) || !(X = pk_call_output(&c, 2, PyArray_DIMS(B))))
        return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_chol_solve(c.dtype, n, PyArray_DATA(L), PyArray_DIM(B, 1), PyArray_DATA(B), PyArray_DATA(X)));
    return pk_call_return(&c, rc, "chol_solve", X);
}

static PyObject *py_chol_inverse(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"L", NULL};
    PyObject *Lo;
    npy_intp n;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:chol_inverse", kwlist, &Lo)) return NULL;
    PyArrayObject *L = pk_call_first_square(&c, Lo, "L", PK_DTYPE_PROMOTE, &n), *X;
    if (!L || !(X = pk_call_output(&c, 2, PyArray_DIMS(L)))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_chol_inverse(c.dtype, n, PyArray_DATA(L), PyArray_DATA(X)));
    return pk_call_return(&c, rc, "chol_inverse", X);
}

static PyObject *py_chol_logdet(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"L", NULL};
    PyObject *Lo;
    npy_intp n;
    double logdet = 0.0;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:chol_logdet", kwlist, &Lo)) return NULL;
    PyArrayObject *L = pk_call_first_square(&c, Lo, "L", PK_DTYPE_PROMOTE, &n);
    if (!L) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_chol_logdet(c.dtype, n, PyArray_DATA(L), &logdet));
    if (rc) return pk_call_raise(&c, rc, "chol_logdet");
    return pk_call_release(&c, PyFloat_FromDouble(logdet));
}

static PyObject *py_chol_sample(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"L", "Z", "check_L", NULL};
    PyObject *Lo, *Zo;
    int check_L = 1;
    npy_intp n;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|p:chol_sample", kwlist, &Lo, &Zo, &check_L)) return NULL;
    PyArrayObject *L = chol_factor_arg(&c, Lo, check_L, &n), *Z, *X;
    if (!L) return pk_call_fail(&c);
    npy_intp zs[2] = {-1, n};
    if (!(Z = pk_call_input(&c, Zo, "Z", 2, zs)) || !(X = pk_call_output(&c, 2, PyArray_DIMS(Z))))
        return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_chol_sample(c.dtype, n, PyArray_DATA(L), PyArray_DIM(Z, 0), PyArray_DATA(Z), PyArray_DATA(X)));
    return pk_call_return(&c, rc, "chol_sample", X);
}

/* ---- Kronecker ----------------------------------------------------------------------- */

/* The factors' eigendecompositions (wG, QG, wA, QA) of a call whose dtype
 * follows QG: square QG (nG, nG), QA (nA, nA), vectors wG (nG,), wA (nA,). */
typedef struct {
    PyArrayObject *wG, *QG, *wA, *QA;
    npy_intp nG, nA;
} kron_eig_t;

static int kron_eig_args(pk_call_t *c, PyObject *wGo, PyObject *QGo, PyObject *wAo, PyObject *QAo, kron_eig_t *e)
{
    e->nA = -1;
    if (!(e->QG = pk_call_first_square(c, QGo, "QG", PK_DTYPE_PROMOTE, &e->nG)) ||
        !(e->QA = pk_call_square(c, QAo, "QA", &e->nA)))
        return -1;
    npy_intp sg[1] = {e->nG}, sa[1] = {e->nA};
    if (!(e->wG = pk_call_input(c, wGo, "wG", 1, sg)) || !(e->wA = pk_call_input(c, wAo, "wA", 1, sa))) return -1;
    return 0;
}

/* The kernels' (nG, nA, wG, QG, wA, QA) arguments. */
#define KRON_EIG(e) \
    (e).nG, (e).nA, PyArray_DATA((e).wG), PyArray_DATA((e).QG), PyArray_DATA((e).wA), PyArray_DATA((e).QA)

static PyObject *py_kron_eigh(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"A", "G", NULL};
    PyObject *Ao, *Go;
    npy_intp nA, nG = -1;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:kron_eigh", kwlist, &Ao, &Go)) return NULL;
    PyArrayObject *A = pk_call_first_square(&c, Ao, "A", PK_DTYPE_PROMOTE, &nA), *G, *wA, *QA, *wG, *QG;
    if (!A || !(G = pk_call_square(&c, Go, "G", &nG))) return pk_call_fail(&c);
    npy_intp da[2] = {nA, nA}, dg[2] = {nG, nG};
    if (!(wA = pk_call_output(&c, 1, da)) || !(QA = pk_call_output(&c, 2, da)) || !(wG = pk_call_output(&c, 1, dg)) ||
        !(QG = pk_call_output(&c, 2, dg)))
        return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_kron_eigh(c.dtype, nG, nA, PyArray_DATA(G), PyArray_DATA(A), PyArray_DATA(wG),
                                  PyArray_DATA(QG), PyArray_DATA(wA), PyArray_DATA(QA)));
    if (rc) return pk_call_raise(&c, rc, "kron_eigh");
    return pk_call_release(&c, Py_BuildValue("(OOOO)", wG, QG, wA, QA));
}

static PyObject *py_kron_spectral_apply(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wG", "QG", "wA", "QA", "X", "scale", "damping", "power", NULL};
    PyObject *wGo, *QGo, *wAo, *QAo, *Xo;
    double scale = 1.0, damping = 0.0, power = -1.0;
    PyArrayObject *X, *R;
    kron_eig_t e;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|$ddd:kron_spectral_apply", kwlist, &wGo, &QGo,
                                     &wAo, &QAo, &Xo, &scale, &damping, &power))
        return NULL;
    if (kron_eig_args(&c, wGo, QGo, wAo, QAo, &e)) return pk_call_fail(&c);
    npy_intp xs[3] = {-1, e.nG, e.nA};
    if (!(X = pk_call_input(&c, Xo, "X", 3, xs))) return pk_call_fail(&c);
    if (!(power == 1.0 || power == -1.0 || power == 0.5 || power == -0.5)) {
        PyErr_SetString(PyExc_ValueError, "power: expected 1, -1, 0.5 or -0.5");
        return pk_call_fail(&c);
    }
    if (!isfinite(scale) || !isfinite(damping)) {
        PyErr_SetString(PyExc_ValueError, "scale, damping: expected finite numbers");
        return pk_call_fail(&c);
    }
    if (!(R = pk_call_output(&c, 3, PyArray_DIMS(X)))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_kron_spectral_apply(c.dtype, KRON_EIG(e), scale, damping, power, PyArray_DIM(X, 0),
                                            PyArray_DATA(X), PyArray_DATA(R)));
    return pk_call_return(&c, rc, "kron_solve", R);
}

/* scale and damping of a Kronecker covariance (damping >= 0 when factored). */
static int check_scale_damping(double scale, double damping, int factored)
{
    if (isfinite(scale) && isfinite(damping) && !(factored && damping < 0)) return 0;
    PyErr_SetString(PyExc_ValueError, "scale, damping: expected finite numbers (damping >= 0 when factored)");
    return -1;
}

/* kron_sample(wG, QG, wA, QA, out, seed, ...): out (n, nG nA) is a writeable
 * array with contiguous rows (a column block of the (n, D) samples, ld = its
 * row stride); the draws are ADDED in theta order. */
static PyObject *py_kron_sample(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wG", "QG", "wA", "QA", "out", "seed", "scale", "damping", "factored", NULL};
    PyObject *wGo, *QGo, *wAo, *QAo, *outo, *seed;
    double scale = 1.0, damping = 0.0;
    int factored = 0;
    pk_rng_t rng;
    kron_eig_t e;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO|$ddp:kron_sample", kwlist, &wGo, &QGo, &wAo,
                                     &QAo, &outo, &seed, &scale, &damping, &factored))
        return NULL;
    if (pk_parse_seed(seed, &rng) < 0) return NULL;
    if (kron_eig_args(&c, wGo, QGo, wAo, QAo, &e) || check_scale_damping(scale, damping, factored))
        return pk_call_fail(&c);
    PyArrayObject *o = (PyArrayObject *)outo;
    const int t = c.typenum;
    const npy_intp isz = t == NPY_FLOAT32 ? (npy_intp)sizeof(float) : (npy_intp)sizeof(double);
    const npy_intp p = e.nG * e.nA;
    /* strides only matter when there are rows: an empty view may carry any */
    if (!PyArray_Check(outo) || PyArray_TYPE(o) != t || PyArray_NDIM(o) != 2 || PyArray_DIM(o, 1) != p ||
        !PyArray_ISWRITEABLE(o) || !PyArray_ISALIGNED(o) ||
        (PyArray_DIM(o, 0) > 0 && ((p > 1 && PyArray_STRIDE(o, 1) != isz) || PyArray_STRIDE(o, 0) % isz)) ||
        (PyArray_DIM(o, 0) > 1 && PyArray_STRIDE(o, 0) / isz < p)) {
        PyErr_Format(PyExc_ValueError, "out: expected a writeable (n, %ld) %s array with contiguous rows",
                     (long)p, t == NPY_FLOAT32 ? "float32" : "float64");
        return pk_call_fail(&c);
    }
    const int64_t ld = PyArray_DIM(o, 0) > 1 ? (int64_t)(PyArray_STRIDE(o, 0) / isz) : p;
    int rc;
    PK_RUN_NOGIL(rc, pk_kron_sample(c.dtype, KRON_EIG(e), scale, damping, factored, PyArray_DIM(o, 0), &rng, ld,
                                    PyArray_DATA(o)));
    return pk_call_return(&c, rc, "kron_sample", NULL);
}

static PyObject *py_kron_inv_quad(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wG", "QG", "wA", "QA", "Gv", "Av", "scale", "damping", "factored", NULL};
    PyObject *wGo, *QGo, *wAo, *QAo, *Gvo, *Avo;
    double scale = 1.0, damping = 0.0;
    int factored = 0;
    PyArrayObject *Gv, *Av, *O;
    kron_eig_t e;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO|$ddp:kron_inv_quad", kwlist, &wGo, &QGo, &wAo,
                                     &QAo, &Gvo, &Avo, &scale, &damping, &factored))
        return NULL;
    if (kron_eig_args(&c, wGo, QGo, wAo, QAo, &e)) return pk_call_fail(&c);
    npy_intp gs[3] = {-1, -1, e.nG};
    if (!(Gv = pk_call_input(&c, Gvo, "Gv", 3, gs))) return pk_call_fail(&c);
    npy_intp N = PyArray_DIM(Gv, 0), K = PyArray_DIM(Gv, 1);
    npy_intp as[2] = {N, e.nA}, od[3] = {N, K, K};
    if (!(Av = pk_call_input(&c, Avo, "Av", 2, as)) || check_scale_damping(scale, damping, factored) ||
        !(O = pk_call_zeros(&c, 3, od)))
        return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_kron_inv_quad(c.dtype, KRON_EIG(e), scale, damping, factored, N, K, PyArray_DATA(Gv),
                                      PyArray_DATA(Av), PyArray_DATA(O)));
    return pk_call_return(&c, rc, "kron_inv_quad", O);
}

static PyObject *py_diag_inv_quad(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"F", "Gv", "Av", NULL};
    PyObject *Fo, *Gvo, *Avo;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:diag_inv_quad", kwlist, &Fo, &Gvo, &Avo))
        return NULL;
    PyArrayObject *F = pk_call_first(&c, Fo, "F", PK_DTYPE_PROMOTE, 2), *Gv, *Av, *O;
    if (!F) return pk_call_fail(&c);
    npy_intp nG = PyArray_DIM(F, 0), nA = PyArray_DIM(F, 1);
    npy_intp gs[3] = {-1, -1, nG};
    if (!(Gv = pk_call_input(&c, Gvo, "Gv", 3, gs))) return pk_call_fail(&c);
    npy_intp N = PyArray_DIM(Gv, 0), K = PyArray_DIM(Gv, 1);
    npy_intp as[2] = {N, nA}, od[3] = {N, K, K};
    if (!(Av = pk_call_input(&c, Avo, "Av", 2, as)) || !(O = pk_call_zeros(&c, 3, od))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_diag_inv_quad(c.dtype, nG, nA, PyArray_DATA(F), N, K, PyArray_DATA(Gv), PyArray_DATA(Av),
                                      PyArray_DATA(O)));
    return pk_call_return(&c, rc, "diag_inv_quad", O);
}

static PyObject *py_linear_cov_quad(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"S", "Av", "n_outputs", NULL};
    PyObject *So, *Avo;
    Py_ssize_t nG;
    npy_intp p;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOn:linear_cov_quad", kwlist, &So, &Avo, &nG)) return NULL;
    PyArrayObject *S = pk_call_first_square(&c, So, "S", PK_DTYPE_PROMOTE, &p), *Av, *O;
    npy_intp as[2] = {-1, -1};
    if (!S || !(Av = pk_call_input(&c, Avo, "Av", 2, as))) return pk_call_fail(&c);
    npy_intp N = PyArray_DIM(Av, 0), nA = PyArray_DIM(Av, 1);
    if (nG < 1 || nG * nA != p) {
        PyErr_Format(PyExc_ValueError, "S: expected shape (n_outputs * %ld, n_outputs * %ld) with n_outputs = %ld, got (%ld, %ld)",
                     (long)nA, (long)nA, (long)nG, (long)p, (long)p);
        return pk_call_fail(&c);
    }
    npy_intp od[3] = {N, (npy_intp)nG, (npy_intp)nG};
    if (!(O = pk_call_zeros(&c, 3, od))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_linear_cov_quad(c.dtype, nG, nA, PyArray_DATA(S), N, PyArray_DATA(Av), PyArray_DATA(O)));
    return pk_call_return(&c, rc, "linear_cov_quad", O);
}

static PyObject *py_matrix_normal_sample(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"M", "U", "V", "n", "seed", NULL};
    PyObject *Mo, *Uo, *Vo, *seed;
    Py_ssize_t n;
    pk_rng_t rng;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOnO:matrix_normal_sample", kwlist, &Mo, &Uo, &Vo, &n, &seed))
        return NULL;
    if (check_samples(n) || pk_parse_seed(seed, &rng) < 0) return NULL;
    PyArrayObject *M = pk_call_first(&c, Mo, "M", PK_DTYPE_PROMOTE, 2), *U, *V, *LU, *LV, *X;
    if (!M) return pk_call_fail(&c);
    npy_intp r = PyArray_DIM(M, 0), cols = PyArray_DIM(M, 1);
    npy_intp us[2] = {r, r}, vs[2] = {cols, cols}, xd[3] = {(npy_intp)n, r, cols};
    if (!(U = pk_call_input(&c, Uo, "U", 2, us)) || !(V = pk_call_input(&c, Vo, "V", 2, vs)) ||
        !(LU = pk_call_output(&c, 2, us)) || !(LV = pk_call_output(&c, 2, vs)) || !(X = pk_call_output(&c, 3, xd)))
        return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_chol(c.dtype, r, PyArray_DATA(U), PyArray_DATA(LU)));
    if (rc) return pk_call_raise(&c, rc, "U (row covariance)");
    PK_RUN_NOGIL(rc, pk_chol(c.dtype, cols, PyArray_DATA(V), PyArray_DATA(LV)));
    if (rc) return pk_call_raise(&c, rc, "V (column covariance)");
    PK_RUN_NOGIL(rc, pk_matrix_normal_sample(c.dtype, r, cols, PyArray_DATA(M), PyArray_DATA(LU), PyArray_DATA(LV),
                                             n, &rng, PyArray_DATA(X)));
    return pk_call_return(&c, rc, "matrix_normal_sample", X);
}

/* standard_normal(n, d, float32, seed, mean=None, scale=None) -> (n, d) draws
 * mean + scale * z from the C core's RNG, mean and scale (d,) of the dtype. */
static PyObject *py_standard_normal(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"n", "d", "float32", "seed", "mean", "scale", NULL};
    Py_ssize_t n, d;
    int f32;
    PyObject *seed, *mean_obj = Py_None, *scale_obj = Py_None;
    PyArrayObject *mean = NULL, *scale = NULL, *Z;
    pk_rng_t rng;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nnpO|OO:standard_normal", kwlist, &n, &d, &f32, &seed,
                                     &mean_obj, &scale_obj))
        return NULL;
    if (n < 0 || d < 0) {
        PyErr_SetString(PyExc_ValueError, "n, d: expected sizes >= 0");
        return NULL;
    }
    if (pk_parse_seed(seed, &rng) < 0) return NULL;
    pk_call_init(&c, f32 ? NPY_FLOAT32 : NPY_FLOAT64);
    npy_intp dd = (npy_intp)d, dims[2] = {(npy_intp)n, (npy_intp)d};
    if ((mean_obj != Py_None && !(mean = pk_call_input(&c, mean_obj, "mean", 1, &dd))) ||
        (scale_obj != Py_None && !(scale = pk_call_input(&c, scale_obj, "scale", 1, &dd))) ||
        !(Z = pk_call_output(&c, 2, dims)))
        return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_rng_fill_normal_affine(&rng, c.dtype, (int64_t)n, (int64_t)d, mean ? PyArray_DATA(mean) : NULL,
                                               scale ? PyArray_DATA(scale) : NULL, (int64_t)d, PyArray_DATA(Z)));
    return pk_call_return(&c, rc, "standard_normal", Z);
}

PyMethodDef pk_linalg_methods[] = {
    PK_KW_METHOD("ggn_from_jacobians", py_ggn_from_jacobians,
                 "ggn_from_jacobians(J, Lam=None) -> G\n\nG (D, D) = sum_n J_n^T Lam_n J_n for J (N, K, D), Lam (N, K, K) "
                 "(identity when None)."),
    PK_KW_METHOD("ggn_linear", py_ggn_linear,
                 "ggn_linear(Phi, Lam) -> G\n\nExact GGN (theta order: W row-major, then b) of a linear layer "
                 "f = W phi + b on features Phi (N, h) with output Hessians Lam (N, K, K)."),
    PK_KW_METHOD("ggn_factor", py_ggn_factor,
                 "ggn_factor(J, S) -> U\n\nU (D, N K) with column n K + j = J_n^T S_n[:, j] (U U^T = sum J^T S S^T J)."),
    PK_KW_METHOD("psd_sqrt", py_psd_sqrt,
                 "psd_sqrt(Lam) -> S\n\nSymmetric square roots of N PSD (K, K) matrices."),
    PK_KW_METHOD("batched_gram", py_batched_gram,
                 "batched_gram(J, R) -> out\n\nout[n] = J[n] @ R[:, n K:(n+1) K] for J (N, K, D), R (D, N K)."),
    PK_KW_METHOD("diag_quad", py_diag_quad,
                 "diag_quad(J, w) -> out\n\nout[n] = J[n] diag(w) J[n]^T."),
    PK_KW_METHOD("woodbury_logdet", py_woodbury_logdet,
                 "woodbury_logdet(alpha, Gmat) -> float\n\nlog det(diag(alpha) + Gmat Gmat^T)."),
    PK_KW_METHOD("woodbury_solve", py_woodbury_solve,
                 "woodbury_solve(alpha, Gmat, V) -> R\n\n(diag(alpha) + Gmat Gmat^T)^-1 V for V (D, m)."),
    PK_KW_METHOD("woodbury_inverse", py_woodbury_inverse,
                 "woodbury_inverse(alpha, Gmat) -> (D, D)\n\n(diag(alpha) + Gmat Gmat^T)^-1, dense."),
    PK_KW_METHOD("woodbury_diag_inverse", py_woodbury_diag_inverse,
                 "woodbury_diag_inverse(alpha, Gmat) -> (D,)\n\nDiagonal of (diag(alpha) + Gmat Gmat^T)^-1."),
    PK_KW_METHOD("woodbury_sample", py_woodbury_sample,
                 "woodbury_sample(alpha, Gmat, n, seed) -> (n, D)\n\nDraws of N(0, (diag(alpha) + Gmat Gmat^T)^-1)."),
    PK_KW_METHOD("lowrank_eigh", py_lowrank_eigh,
                 "lowrank_eigh(Gmat) -> (s, Q, rank)\n\nGmat Gmat^T = Q diag(s) Q^T, s descending, first `rank` used."),
    PK_KW_METHOD("lowrank_eigh_layers", py_lowrank_eigh_layers,
                 "lowrank_eigh_layers(U, A, max_rank) -> (s, Q, C, rank)\n\nlowrank_eigh of the Gmat whose column "
                 "n Kp + j is U[l][n, j] (x) [A[l][n]; 1] per layer, never formed; at most max_rank eigenpairs; "
                 "Q = Gmat C."),
    PK_KW_METHOD("lowrank_jq_layers", py_lowrank_jq_layers,
                 "lowrank_jq_layers(Gx, Axb, U, A, w, C) -> (Nx, K, r)\n\nJ(x) diag(w) Gmat C from the layer "
                 "factors of J(x) (Gx, Axb) and of Gmat (U, A), through their kernel; w per layer or None."),
    PK_KW_METHOD("lowrank_apply", py_lowrank_apply,
                 "lowrank_apply(Q, a0, d, V) -> R\n\nR = a0 V + Q diag(d) Q^T V."),
    PK_KW_METHOD("lowrank_quad", py_lowrank_quad,
                 "lowrank_quad(J, Q, a0, d) -> (N, K, K)\n\nout[n] = J[n] (a0 I + Q diag(d) Q^T) J[n]^T."),
    PK_KW_METHOD("sym_eigvals", py_sym_eigvals,
                 "sym_eigvals(M) -> w\n\nEigenvalues (ascending) of a symmetric matrix."),
    PK_KW_METHOD("chol", py_chol,
                 "chol(A, name='A') -> L\n\nLower Cholesky factor of a symmetric PD matrix."),
    PK_KW_METHOD("chol_solve", py_chol_solve,
                 "chol_solve(L, B, check_L=True) -> (L L^T)^-1 B for B (n, m). check_L=False: L came from chol(), skip its NaN/Inf scan."),
    PK_KW_METHOD("chol_inverse", py_chol_inverse,
                 "chol_inverse(L) -> (L L^T)^-1."),
    PK_KW_METHOD("chol_logdet", py_chol_logdet,
                 "chol_logdet(L) -> log det(L L^T)."),
    PK_KW_METHOD("chol_sample", py_chol_sample,
                 "chol_sample(L, Z, check_L=True) -> X\n\nRows x = L^-T z: N(0, (L L^T)^-1) draws from standard normal rows Z (m, n). check_L=False: L came from chol(), skip its NaN/Inf scan."),
    PK_KW_METHOD("kron_eigh", py_kron_eigh,
                 "kron_eigh(A, G) -> (wG, QG, wA, QA)\n\nEigendecompositions of both factors."),
    PK_KW_METHOD("kron_spectral_apply", py_kron_spectral_apply,
                 "kron_spectral_apply(wG, QG, wA, QA, X, *, scale=1, damping=0, power=-1) -> R\n\n"
                 "R[j] = (scale G (x) A + damping I)^power vec(X[j]) as (nG, nA) matrices (np.kron order)."),
    PK_KW_METHOD("kron_sample", py_kron_sample,
                 "kron_sample(wG, QG, wA, QA, out, seed, *, scale=1, damping=0, factored=False) -> None\n\n"
                 "out[j] += a draw of N(0, (scale G (x) A + damping I)^-1) in theta order (W row-major, then b),\n"
                 "as QG (F o Z) QA^T with F = damped eigenvalues^-1/2; out (n, nG nA) with contiguous rows."),
    PK_KW_METHOD("kron_inv_quad", py_kron_inv_quad,
                 "kron_inv_quad(wG, QG, wA, QA, Gv, Av, *, scale=1, damping=0, factored=False) -> (N, K, K)\n\n"
                 "out[n, k, k'] = (g_nk (x) a_n)^T (scale G (x) A + damping I)^-1 (g_nk' (x) a_n) for Gv (N, K, nG), Av (N, nA)."),
    PK_KW_METHOD("diag_inv_quad", py_diag_inv_quad,
                 "diag_inv_quad(F, Gv, Av) -> (N, K, K)\n\n"
                 "out[n, k, k'] = sum_ij Gv[n,k,i] Gv[n,k',i] Av[n,j]^2 F[i,j]: rank-one Jacobian rows against a diagonal covariance."),
    PK_KW_METHOD("linear_cov_quad", py_linear_cov_quad,
                 "linear_cov_quad(S, Av, n_outputs) -> (N, K, K)\n\n"
                 "out[n] = J_n S J_n^T for a linear layer's rows J_n = I_K (x) Av[n] (S in theta order: W row-major, then b)."),
    PK_KW_METHOD("matrix_normal_sample", py_matrix_normal_sample,
                 "matrix_normal_sample(M, U, V, n, seed) -> (n, r, c)\n\nX = M + chol(U) Z chol(V)^T, Cov(vec X) = U (x) V."),
    PK_KW_METHOD("standard_normal", py_standard_normal,
                 "standard_normal(n, d, float32, seed, mean=None, scale=None) -> (n, d) values mean + scale * z, z "
                 "standard normals from the C core's RNG; mean and scale (d,) of the dtype."),
    {NULL, NULL, 0, NULL},
};
