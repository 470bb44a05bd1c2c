/* _core_linalg.c: wrappers of framework-agnostic linear algebra for Laplace (csrc/pk_linalg.h).
 *
 * The dtype of a call is float32 when its first array argument is float32 and
 * float64 otherwise (integer input is promoted); the other arrays are cast to
 * it. Inputs are never written; outputs are fresh arrays. Every kernel runs
 * with the GIL released. pykfac/linalg.py adds the friendly Python layer. */
#include "_core.h"

#include <math.h>
#include <stdio.h>

#define LA_CALL(expr)                                                                         \
    do {                                                                                      \
        Py_BEGIN_ALLOW_THREADS rc = (expr);                                                   \
        Py_END_ALLOW_THREADS                                                                  \
    } while (0)

#define KW (METH_VARARGS | METH_KEYWORDS)
#define FN(f) ((PyCFunction)(void (*)(void))(f))

static pk_dtype_t pkdt(int typenum) { return typenum == NPY_FLOAT32 ? PK_FLOAT32 : PK_FLOAT64; }

/* The call's dtype from its first array argument. */
static int call_typenum(PyObject *obj, const char *name, int *typenum)
{
    if (obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: expected an array, got None", name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!a) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected a numeric array, got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    *typenum = PyArray_TYPE(a) == NPY_FLOAT32 ? NPY_FLOAT32 : NPY_FLOAT64;
    Py_DECREF(a);
    return 0;
}

static PyArrayObject *arr(PyObject *obj, const char *name, int typenum, int ndim, npy_intp *shape)
{
    return pk_arg_array(obj, name, PK_ARG_REAL, typenum, ndim, shape, 1);
}

static PyArrayObject *new_arr(int nd, npy_intp *dims, int typenum)
{
    return (PyArrayObject *)PyArray_SimpleNew(nd, dims, typenum);
}

static PyObject *raise_ctx(int rc, const char *ctx) { return pk_raise(rc, ctx); }

/* Square (n, n) matrix; *n = its order. */
static PyArrayObject *arr_square(PyObject *obj, const char *name, int typenum, npy_intp *n)
{
    npy_intp shape[2] = {*n, *n};
    PyArrayObject *a = arr(obj, name, typenum, 2, shape);
    if (!a) return NULL;
    if (PyArray_DIM(a, 0) != PyArray_DIM(a, 1)) {
        PyErr_Format(PyExc_ValueError, "%s: expected a square matrix, got shape (%ld, %ld)", name,
                     (long)PyArray_DIM(a, 0), (long)PyArray_DIM(a, 1));
        Py_DECREF(a);
        return NULL;
    }
    *n = PyArray_DIM(a, 0);
    return a;
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
            char buf[32];
            snprintf(buf, sizeof buf, "%g", p[i]);
            PyErr_Format(PyExc_ValueError, "alpha: expected finite values > 0, got %s at index %ld", buf, (long)i);
            Py_DECREF(a);
            return NULL;
        }
    }
    return a;
}

/* ---- GGN from Jacobians ---------------------------------------------------------- */

static PyObject *py_ggn_from_jacobians(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"J", "Lam", NULL};
    PyObject *Jo, *Lo = Py_None, *result = NULL;
    PyArrayObject *J = NULL, *L = NULL, *G = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:ggn_from_jacobians", kwlist, &Jo, &Lo)) return NULL;
    if (call_typenum(Jo, "J", &t)) return NULL;
    npy_intp js[3] = {-1, -1, -1};
    if (!(J = arr(Jo, "J", t, 3, js))) goto out;
    npy_intp n = PyArray_DIM(J, 0), K = PyArray_DIM(J, 1), D = PyArray_DIM(J, 2);
    if (Lo != Py_None) {
        npy_intp ls[3] = {n, K, K};
        if (!(L = arr(Lo, "Lam", t, 3, ls))) goto out;
    }
    npy_intp gd[2] = {D, D};
    if (!(G = new_arr(2, gd, t))) goto out;
    LA_CALL(pk_ggn_from_jacobians(pkdt(t), n, K, D, PyArray_DATA(J), L ? PyArray_DATA(L) : NULL,
                                  PyArray_DATA(G)));
    if (rc) {
        raise_ctx(rc, "ggn_from_jacobians");
        goto out;
    }
    result = (PyObject *)G;
    G = NULL;
out:
    Py_XDECREF(J);
    Py_XDECREF(L);
    Py_XDECREF(G);
    return result;
}

static PyObject *py_ggn_linear(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"Phi", "Lam", NULL};
    PyObject *Po, *Lo, *result = NULL;
    PyArrayObject *P = NULL, *L = NULL, *G = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:ggn_linear", kwlist, &Po, &Lo)) return NULL;
    if (call_typenum(Po, "Phi", &t)) return NULL;
    npy_intp ps[2] = {-1, -1};
    if (!(P = arr(Po, "Phi", t, 2, ps))) goto out;
    npy_intp n = PyArray_DIM(P, 0), h = PyArray_DIM(P, 1);
    npy_intp ls[3] = {n, -1, -1};
    if (!(L = arr(Lo, "Lam", t, 3, ls))) goto out;
    npy_intp K = PyArray_DIM(L, 1);
    if (PyArray_DIM(L, 2) != K) {
        PyErr_Format(PyExc_ValueError, "Lam: expected shape (%ld, K, K), got (%ld, %ld, %ld)", (long)n,
                     (long)n, (long)K, (long)PyArray_DIM(L, 2));
        goto out;
    }
    npy_intp gd[2] = {K * (h + 1), K * (h + 1)};
    if (!(G = new_arr(2, gd, t))) goto out;
    LA_CALL(pk_ggn_linear(pkdt(t), n, K, h, PyArray_DATA(P), PyArray_DATA(L), PyArray_DATA(G)));
    if (rc) {
        raise_ctx(rc, "ggn_linear");
        goto out;
    }
    result = (PyObject *)G;
    G = NULL;
out:
    Py_XDECREF(P);
    Py_XDECREF(L);
    Py_XDECREF(G);
    return result;
}

static PyObject *py_ggn_factor(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"J", "S", NULL};
    PyObject *Jo, *So, *result = NULL;
    PyArrayObject *J = NULL, *S = NULL, *U = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:ggn_factor", kwlist, &Jo, &So)) return NULL;
    if (call_typenum(Jo, "J", &t)) return NULL;
    npy_intp js[3] = {-1, -1, -1};
    if (!(J = arr(Jo, "J", t, 3, js))) goto out;
    npy_intp n = PyArray_DIM(J, 0), K = PyArray_DIM(J, 1), D = PyArray_DIM(J, 2);
    npy_intp ss[3] = {n, K, K};
    if (!(S = arr(So, "S", t, 3, ss))) goto out;
    npy_intp ud[2] = {D, n * K};
    if (!(U = new_arr(2, ud, t))) goto out;
    LA_CALL(pk_ggn_factor(pkdt(t), n, K, D, PyArray_DATA(J), PyArray_DATA(S), PyArray_DATA(U)));
    if (rc) {
        raise_ctx(rc, "ggn_factor");
        goto out;
    }
    result = (PyObject *)U;
    U = NULL;
out:
    Py_XDECREF(J);
    Py_XDECREF(S);
    Py_XDECREF(U);
    return result;
}

static PyObject *py_psd_sqrt(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"Lam", NULL};
    PyObject *Lo, *result = NULL;
    PyArrayObject *L = NULL, *S = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:psd_sqrt", kwlist, &Lo)) return NULL;
    if (call_typenum(Lo, "Lam", &t)) return NULL;
    npy_intp ls[3] = {-1, -1, -1};
    if (!(L = arr(Lo, "Lam", t, 3, ls))) goto out;
    if (PyArray_DIM(L, 1) != PyArray_DIM(L, 2)) {
        PyErr_Format(PyExc_ValueError, "Lam: expected shape (N, K, K), got (%ld, %ld, %ld)",
                     (long)PyArray_DIM(L, 0), (long)PyArray_DIM(L, 1), (long)PyArray_DIM(L, 2));
        goto out;
    }
    if (!(S = new_arr(3, PyArray_DIMS(L), t))) goto out;
    LA_CALL(pk_psd_sqrt_batched(pkdt(t), PyArray_DIM(L, 0), PyArray_DIM(L, 1), PyArray_DATA(L),
                                PyArray_DATA(S)));
    if (rc) {
        raise_ctx(rc, "Lam (square root of the output Hessians)");
        goto out;
    }
    result = (PyObject *)S;
    S = NULL;
out:
    Py_XDECREF(L);
    Py_XDECREF(S);
    return result;
}

static PyObject *py_batched_gram(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"J", "R", NULL};
    PyObject *Jo, *Ro, *result = NULL;
    PyArrayObject *J = NULL, *R = NULL, *O = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:batched_gram", kwlist, &Jo, &Ro)) return NULL;
    if (call_typenum(Jo, "J", &t)) return NULL;
    npy_intp js[3] = {-1, -1, -1};
    if (!(J = arr(Jo, "J", t, 3, js))) goto out;
    npy_intp n = PyArray_DIM(J, 0), K = PyArray_DIM(J, 1), D = PyArray_DIM(J, 2);
    npy_intp rs[2] = {D, n * K};
    if (!(R = arr(Ro, "R", t, 2, rs))) goto out;
    npy_intp od[3] = {n, K, K};
    if (!(O = new_arr(3, od, t))) goto out;
    LA_CALL(pk_batched_gram(pkdt(t), n, K, D, PyArray_DATA(J), PyArray_DATA(R), PyArray_DATA(O)));
    if (rc) {
        raise_ctx(rc, "batched_gram");
        goto out;
    }
    result = (PyObject *)O;
    O = NULL;
out:
    Py_XDECREF(J);
    Py_XDECREF(R);
    Py_XDECREF(O);
    return result;
}

static PyObject *py_diag_quad(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"J", "w", NULL};
    PyObject *Jo, *wo, *result = NULL;
    PyArrayObject *J = NULL, *w = NULL, *O = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:diag_quad", kwlist, &Jo, &wo)) return NULL;
    if (call_typenum(Jo, "J", &t)) return NULL;
    npy_intp js[3] = {-1, -1, -1};
    if (!(J = arr(Jo, "J", t, 3, js))) goto out;
    npy_intp n = PyArray_DIM(J, 0), K = PyArray_DIM(J, 1), D = PyArray_DIM(J, 2);
    npy_intp ws[1] = {D};
    if (!(w = arr(wo, "w", NPY_FLOAT64, 1, ws))) goto out;
    npy_intp od[3] = {n, K, K};
    if (!(O = new_arr(3, od, t))) goto out;
    LA_CALL(pk_diag_quad(pkdt(t), n, K, D, PyArray_DATA(J), PyArray_DATA(w), PyArray_DATA(O)));
    if (rc) {
        raise_ctx(rc, "diag_quad");
        goto out;
    }
    result = (PyObject *)O;
    O = NULL;
out:
    Py_XDECREF(J);
    Py_XDECREF(w);
    Py_XDECREF(O);
    return result;
}

/* ---- Woodbury -------------------------------------------------------------------- */

static const char *WB_CTX = "woodbury: capacitance alpha I + Gmat^T Gmat";

/* Parse (alpha, Gmat): the dtype follows Gmat. */
static int wb_args(PyObject *alphao, PyObject *Uo, int *t, PyArrayObject **alpha, PyArrayObject **U)
{
    if (call_typenum(Uo, "Gmat", t)) return -1;
    npy_intp us[2] = {-1, -1};
    if (!(*U = arr(Uo, "Gmat", *t, 2, us))) return -1;
    if (!(*alpha = arg_alpha(alphao, PyArray_DIM(*U, 0)))) {
        Py_CLEAR(*U);
        return -1;
    }
    return 0;
}

#define WB_ALPHA(a) PyArray_SIZE(a), (const double *)PyArray_DATA(a)

static PyObject *py_woodbury_logdet(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"alpha", "Gmat", NULL};
    PyObject *ao, *Uo;
    PyArrayObject *alpha = NULL, *U = NULL;
    int t, rc;
    double logdet = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:woodbury_logdet", kwlist, &ao, &Uo)) return NULL;
    if (wb_args(ao, Uo, &t, &alpha, &U)) return NULL;
    LA_CALL(pk_woodbury_logdet(pkdt(t), PyArray_DIM(U, 0), PyArray_DIM(U, 1), WB_ALPHA(alpha),
                               PyArray_DATA(U), &logdet));
    Py_DECREF(alpha);
    Py_DECREF(U);
    if (rc) return raise_ctx(rc, WB_CTX);
    return PyFloat_FromDouble(logdet);
}

static PyObject *py_woodbury_solve(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"alpha", "Gmat", "V", NULL};
    PyObject *ao, *Uo, *Vo, *result = NULL;
    PyArrayObject *alpha = NULL, *U = NULL, *V = NULL, *R = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:woodbury_solve", kwlist, &ao, &Uo, &Vo)) return NULL;
    if (wb_args(ao, Uo, &t, &alpha, &U)) return NULL;
    npy_intp D = PyArray_DIM(U, 0);
    npy_intp vs[2] = {D, -1};
    if (!(V = arr(Vo, "V", t, 2, vs))) goto out;
    if (!(R = new_arr(2, PyArray_DIMS(V), t))) goto out;
    LA_CALL(pk_woodbury_solve(pkdt(t), D, PyArray_DIM(U, 1), WB_ALPHA(alpha), PyArray_DATA(U),
                              PyArray_DIM(V, 1), PyArray_DATA(V), PyArray_DATA(R)));
    if (rc) {
        raise_ctx(rc, WB_CTX);
        goto out;
    }
    result = (PyObject *)R;
    R = NULL;
out:
    Py_XDECREF(alpha);
    Py_XDECREF(U);
    Py_XDECREF(V);
    Py_XDECREF(R);
    return result;
}

static PyObject *py_woodbury_matrix(PyObject *args, PyObject *kwds, int diag_only)
{
    static char *kwlist[] = {"alpha", "Gmat", NULL};
    PyObject *ao, *Uo, *result = NULL;
    PyArrayObject *alpha = NULL, *U = NULL, *R = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kwlist, &ao, &Uo)) return NULL;
    if (wb_args(ao, Uo, &t, &alpha, &U)) return NULL;
    npy_intp D = PyArray_DIM(U, 0), M = PyArray_DIM(U, 1);
    npy_intp dims[2] = {D, D};
    if (!(R = new_arr(diag_only ? 1 : 2, dims, t))) goto out;
    if (diag_only)
        LA_CALL(pk_woodbury_diag_inverse(pkdt(t), D, M, WB_ALPHA(alpha), PyArray_DATA(U), PyArray_DATA(R)));
    else
        LA_CALL(pk_woodbury_inverse(pkdt(t), D, M, WB_ALPHA(alpha), PyArray_DATA(U), PyArray_DATA(R)));
    if (rc) {
        raise_ctx(rc, WB_CTX);
        goto out;
    }
    result = (PyObject *)R;
    R = NULL;
out:
    Py_XDECREF(alpha);
    Py_XDECREF(U);
    Py_XDECREF(R);
    return result;
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
    PyObject *ao, *Uo, *seed, *result = NULL;
    Py_ssize_t n;
    PyArrayObject *alpha = NULL, *U = NULL, *R = NULL;
    int t, rc;
    pk_rng_t rng;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOnO:woodbury_sample", kwlist, &ao, &Uo, &n, &seed))
        return NULL;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "n: expected a number of samples >= 0, got %zd", n);
        return NULL;
    }
    if (pk_parse_seed(seed, &rng) < 0) return NULL;
    if (wb_args(ao, Uo, &t, &alpha, &U)) return NULL;
    npy_intp D = PyArray_DIM(U, 0);
    npy_intp dims[2] = {(npy_intp)n, D};
    if (!(R = new_arr(2, dims, t))) goto out;
    LA_CALL(pk_woodbury_sample(pkdt(t), D, PyArray_DIM(U, 1), WB_ALPHA(alpha), PyArray_DATA(U), n, &rng,
                               PyArray_DATA(R)));
    if (rc) {
        raise_ctx(rc, WB_CTX);
        goto out;
    }
    result = (PyObject *)R;
    R = NULL;
out:
    Py_XDECREF(alpha);
    Py_XDECREF(U);
    Py_XDECREF(R);
    return result;
}

/* ---- low-rank eigendecomposition ------------------------------------------------- */

static PyObject *py_lowrank_eigh(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"Gmat", NULL};
    PyObject *Uo, *result = NULL;
    PyArrayObject *U = NULL, *s = NULL, *Q = NULL;
    int t, rc;
    int64_t rank = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:lowrank_eigh", kwlist, &Uo)) return NULL;
    if (call_typenum(Uo, "Gmat", &t)) return NULL;
    npy_intp us[2] = {-1, -1};
    if (!(U = arr(Uo, "Gmat", t, 2, us))) goto out;
    npy_intp D = PyArray_DIM(U, 0), M = PyArray_DIM(U, 1);
    npy_intp sd[1] = {M}, qd[2] = {D, M};
    if (!(s = new_arr(1, sd, t)) || !(Q = new_arr(2, qd, t))) goto out;
    LA_CALL(pk_lowrank_eigh(pkdt(t), D, M, PyArray_DATA(U), PyArray_DATA(s), PyArray_DATA(Q), &rank));
    if (rc) {
        raise_ctx(rc, "lowrank_eigh");
        goto out;
    }
    result = Py_BuildValue("(OOL)", s, Q, (long long)rank);
out:
    Py_XDECREF(U);
    Py_XDECREF(s);
    Py_XDECREF(Q);
    return result;
}

static PyObject *py_lowrank_apply(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"Q", "a0", "d", "V", NULL};
    PyObject *Qo, *do_, *Vo, *result = NULL;
    double a0;
    PyArrayObject *Q = NULL, *d = NULL, *V = NULL, *R = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OdOO:lowrank_apply", kwlist, &Qo, &a0, &do_, &Vo)) return NULL;
    if (call_typenum(Qo, "Q", &t)) return NULL;
    npy_intp qs[2] = {-1, -1};
    if (!(Q = arr(Qo, "Q", t, 2, qs))) goto out;
    npy_intp D = PyArray_DIM(Q, 0), r = PyArray_DIM(Q, 1);
    npy_intp ds[1] = {r}, vs[2] = {D, -1};
    if (!(d = arr(do_, "d", NPY_FLOAT64, 1, ds))) goto out;
    if (!(V = arr(Vo, "V", t, 2, vs))) goto out;
    if (!isfinite(a0)) {
        PyErr_SetString(PyExc_ValueError, "a0: expected a finite number");
        goto out;
    }
    if (!(R = new_arr(2, PyArray_DIMS(V), t))) goto out;
    LA_CALL(pk_lowrank_apply(pkdt(t), D, r, PyArray_DATA(Q), a0, PyArray_DATA(d), PyArray_DIM(V, 1),
                             PyArray_DATA(V), PyArray_DATA(R)));
    if (rc) {
        raise_ctx(rc, "lowrank_apply");
        goto out;
    }
    result = (PyObject *)R;
    R = NULL;
out:
    Py_XDECREF(Q);
    Py_XDECREF(d);
    Py_XDECREF(V);
    Py_XDECREF(R);
    return result;
}

static PyObject *py_lowrank_quad(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"J", "Q", "a0", "d", NULL};
    PyObject *Jo, *Qo, *do_, *result = NULL;
    double a0;
    PyArrayObject *J = NULL, *Q = NULL, *d = NULL, *O = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOdO:lowrank_quad", kwlist, &Jo, &Qo, &a0, &do_)) return NULL;
    if (call_typenum(Jo, "J", &t)) return NULL;
    npy_intp js[3] = {-1, -1, -1};
    if (!(J = arr(Jo, "J", t, 3, js))) goto out;
    npy_intp N = PyArray_DIM(J, 0), K = PyArray_DIM(J, 1), D = PyArray_DIM(J, 2);
    npy_intp qs[2] = {D, -1};
    if (!(Q = arr(Qo, "Q", t, 2, qs))) goto out;
    npy_intp ds[1] = {PyArray_DIM(Q, 1)};
    if (!(d = arr(do_, "d", NPY_FLOAT64, 1, ds))) goto out;
    if (!isfinite(a0)) {
        PyErr_SetString(PyExc_ValueError, "a0: expected a finite number");
        goto out;
    }
    npy_intp od[3] = {N, K, K};
    if (!(O = new_arr(3, od, t))) goto out;
    LA_CALL(pk_lowrank_quad(pkdt(t), N, K, D, PyArray_DIM(Q, 1), PyArray_DATA(J), PyArray_DATA(Q), a0,
                            PyArray_DATA(d), PyArray_DATA(O)));
    if (rc) {
        raise_ctx(rc, "lowrank_quad");
        goto out;
    }
    result = (PyObject *)O;
    O = NULL;
out:
    Py_XDECREF(J);
    Py_XDECREF(Q);
    Py_XDECREF(d);
    Py_XDECREF(O);
    return result;
}

static PyObject *py_sym_eigvals(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"M", NULL};
    PyObject *Mo, *result = NULL;
    PyArrayObject *M = NULL, *w = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:sym_eigvals", kwlist, &Mo)) return NULL;
    if (call_typenum(Mo, "M", &t)) return NULL;
    npy_intp n = -1;
    if (!(M = arr_square(Mo, "M", t, &n))) goto out;
    npy_intp wd[1] = {n};
    if (!(w = new_arr(1, wd, t))) goto out;
    LA_CALL(pk_sym_eigvals(pkdt(t), n, PyArray_DATA(M), PyArray_DATA(w)));
    if (rc) {
        raise_ctx(rc, "sym_eigvals");
        goto out;
    }
    result = (PyObject *)w;
    w = NULL;
out:
    Py_XDECREF(M);
    Py_XDECREF(w);
    return result;
}

/* ---- Cholesky ---------------------------------------------------------------------- */

static PyObject *py_chol(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"A", "name", NULL};
    PyObject *Ao, *result = NULL;
    const char *name = "A";
    PyArrayObject *A = NULL, *L = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|s:chol", kwlist, &Ao, &name)) return NULL;
    if (call_typenum(Ao, name, &t)) return NULL;
    npy_intp n = -1;
    if (!(A = arr_square(Ao, name, t, &n))) goto out;
    npy_intp dims[2] = {n, n};
    if (!(L = new_arr(2, dims, t))) goto out;
    LA_CALL(pk_chol(pkdt(t), n, PyArray_DATA(A), PyArray_DATA(L)));
    if (rc) {
        raise_ctx(rc, name);
        goto out;
    }
    result = (PyObject *)L;
    L = NULL;
out:
    Py_XDECREF(A);
    Py_XDECREF(L);
    return result;
}

static PyObject *py_chol_solve(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"L", "B", NULL};
    PyObject *Lo, *Bo, *result = NULL;
    PyArrayObject *L = NULL, *B = NULL, *X = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:chol_solve", kwlist, &Lo, &Bo)) return NULL;
    if (call_typenum(Lo, "L", &t)) return NULL;
    npy_intp n = -1;
    if (!(L = arr_square(Lo, "L", t, &n))) goto out;
    npy_intp bs[2] = {n, -1};
    if (!(B = arr(Bo, "B", t, 2, bs))) goto out;
    if (!(X = new_arr(2, PyArray_DIMS(B), t))) goto out;
    LA_CALL(pk_chol_solve(pkdt(t), n, PyArray_DATA(L), PyArray_DIM(B, 1), PyArray_DATA(B), PyArray_DATA(X)));
    if (rc) {
        raise_ctx(rc, "chol_solve");
        goto out;
    }
    result = (PyObject *)X;
    X = NULL;
out:
    Py_XDECREF(L);
    Py_XDECREF(B);
    Py_XDECREF(X);
    return result;
}

static PyObject *py_chol_inverse(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"L", NULL};
    PyObject *Lo, *result = NULL;
    PyArrayObject *L = NULL, *X = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:chol_inverse", kwlist, &Lo)) return NULL;
    if (call_typenum(Lo, "L", &t)) return NULL;
    npy_intp n = -1;
    if (!(L = arr_square(Lo, "L", t, &n))) goto out;
    if (!(X = new_arr(2, PyArray_DIMS(L), t))) goto out;
    LA_CALL(pk_chol_inverse(pkdt(t), n, PyArray_DATA(L), PyArray_DATA(X)));
    if (rc) {
        raise_ctx(rc, "chol_inverse");
        goto out;
    }
    result = (PyObject *)X;
    X = NULL;
out:
    Py_XDECREF(L);
    Py_XDECREF(X);
    return result;
}

static PyObject *py_chol_logdet(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"L", NULL};
    PyObject *Lo;
    PyArrayObject *L = NULL;
    int t, rc;
    double logdet = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:chol_logdet", kwlist, &Lo)) return NULL;
    if (call_typenum(Lo, "L", &t)) return NULL;
    npy_intp n = -1;
    if (!(L = arr_square(Lo, "L", t, &n))) return NULL;
    LA_CALL(pk_chol_logdet(pkdt(t), n, PyArray_DATA(L), &logdet));
    Py_DECREF(L);
    if (rc) return raise_ctx(rc, "chol_logdet");
    return PyFloat_FromDouble(logdet);
}

static PyObject *py_chol_sample(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"L", "Z", NULL};
    PyObject *Lo, *Zo, *result = NULL;
    PyArrayObject *L = NULL, *Z = NULL, *X = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:chol_sample", kwlist, &Lo, &Zo)) return NULL;
    if (call_typenum(Lo, "L", &t)) return NULL;
    npy_intp n = -1;
    if (!(L = arr_square(Lo, "L", t, &n))) goto out;
    npy_intp zs[2] = {-1, n};
    if (!(Z = arr(Zo, "Z", t, 2, zs))) goto out;
    if (!(X = new_arr(2, PyArray_DIMS(Z), t))) goto out;
    LA_CALL(pk_chol_sample(pkdt(t), n, PyArray_DATA(L), PyArray_DIM(Z, 0), PyArray_DATA(Z), PyArray_DATA(X)));
    if (rc) {
        raise_ctx(rc, "chol_sample");
        goto out;
    }
    result = (PyObject *)X;
    X = NULL;
out:
    Py_XDECREF(L);
    Py_XDECREF(Z);
    Py_XDECREF(X);
    return result;
}

/* ---- Kronecker ----------------------------------------------------------------------- */

static PyObject *py_kron_eigh(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"A", "G", NULL};
    PyObject *Ao, *Go, *result = NULL;
    PyArrayObject *A = NULL, *G = NULL, *wA = NULL, *QA = NULL, *wG = NULL, *QG = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:kron_eigh", kwlist, &Ao, &Go)) return NULL;
    if (call_typenum(Ao, "A", &t)) return NULL;
    npy_intp nA = -1, nG = -1;
    if (!(A = arr_square(Ao, "A", t, &nA)) || !(G = arr_square(Go, "G", t, &nG))) goto out;
    npy_intp da[2] = {nA, nA}, dg[2] = {nG, nG};
    if (!(wA = new_arr(1, da, t)) || !(QA = new_arr(2, da, t)) || !(wG = new_arr(1, dg, t)) ||
        !(QG = new_arr(2, dg, t)))
        goto out;
    LA_CALL(pk_kron_eigh(pkdt(t), nG, nA, PyArray_DATA(G), PyArray_DATA(A), PyArray_DATA(wG),
                         PyArray_DATA(QG), PyArray_DATA(wA), PyArray_DATA(QA)));
    if (rc) {
        raise_ctx(rc, "kron_eigh");
        goto out;
    }
    result = Py_BuildValue("(OOOO)", wG, QG, wA, QA);
out:
    Py_XDECREF(A);
    Py_XDECREF(G);
    Py_XDECREF(wA);
    Py_XDECREF(QA);
    Py_XDECREF(wG);
    Py_XDECREF(QG);
    return result;
}

static PyObject *py_kron_spectral_apply(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wG", "QG", "wA", "QA", "X", "scale", "damping", "power", NULL};
    PyObject *wGo, *QGo, *wAo, *QAo, *Xo, *result = NULL;
    double scale = 1.0, damping = 0.0, power = -1.0;
    PyArrayObject *wG = NULL, *QG = NULL, *wA = NULL, *QA = NULL, *X = NULL, *R = NULL;
    int t, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|$ddd:kron_spectral_apply", kwlist, &wGo, &QGo,
                                     &wAo, &QAo, &Xo, &scale, &damping, &power))
        return NULL;
    if (call_typenum(QGo, "QG", &t)) return NULL;
    npy_intp nG = -1, nA = -1;
    if (!(QG = arr_square(QGo, "QG", t, &nG)) || !(QA = arr_square(QAo, "QA", t, &nA))) goto out;
    npy_intp sg[1] = {nG}, sa[1] = {nA}, xs[3] = {-1, nG, nA};
    if (!(wG = arr(wGo, "wG", t, 1, sg)) || !(wA = arr(wAo, "wA", t, 1, sa))) goto out;
    if (!(X = arr(Xo, "X", t, 3, xs))) goto out;
    if (!(power == 1.0 || power == -1.0 || power == 0.5 || power == -0.5)) {
        PyErr_SetString(PyExc_ValueError, "power: expected 1, -1, 0.5 or -0.5");
        goto out;
    }
    if (!isfinite(scale) || !isfinite(damping)) {
        PyErr_SetString(PyExc_ValueError, "scale, damping: expected finite numbers");
        goto out;
    }
    if (!(R = new_arr(3, PyArray_DIMS(X), t))) goto out;
    LA_CALL(pk_kron_spectral_apply(pkdt(t), nG, nA, PyArray_DATA(wG), PyArray_DATA(QG), PyArray_DATA(wA),
                                   PyArray_DATA(QA), scale, damping, power, PyArray_DIM(X, 0),
                                   PyArray_DATA(X), PyArray_DATA(R)));
    if (rc) {
        raise_ctx(rc, "kron_solve");
        goto out;
    }
    result = (PyObject *)R;
    R = NULL;
out:
    Py_XDECREF(wG);
    Py_XDECREF(QG);
    Py_XDECREF(wA);
    Py_XDECREF(QA);
    Py_XDECREF(X);
    Py_XDECREF(R);
    return result;
}

/* kron_sample(wG, QG, wA, QA, out, seed, ...): out (n, nG nA) is a writeable
 * array with contiguous rows (a column block of the (n, D) samples, ld = its
 * row stride); the draws are ADDED in theta order. */
static PyObject *py_kron_sample(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wG", "QG", "wA", "QA", "out", "seed", "scale", "damping", "factored", NULL};
    PyObject *wGo, *QGo, *wAo, *QAo, *outo, *seed;
    double scale = 1.0, damping = 0.0;
    int factored = 0, t, rc;
    PyArrayObject *wG = NULL, *QG = NULL, *wA = NULL, *QA = NULL;
    pk_rng_t rng;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO|$ddp:kron_sample", kwlist, &wGo, &QGo, &wAo,
                                     &QAo, &outo, &seed, &scale, &damping, &factored))
        return NULL;
    if (pk_parse_seed(seed, &rng) < 0) return NULL;
    if (call_typenum(QGo, "QG", &t)) return NULL;
    npy_intp nG = -1, nA = -1;
    if (!(QG = arr_square(QGo, "QG", t, &nG)) || !(QA = arr_square(QAo, "QA", t, &nA))) goto fail;
    npy_intp sg[1] = {nG}, sa[1] = {nA};
    if (!(wG = arr(wGo, "wG", t, 1, sg)) || !(wA = arr(wAo, "wA", t, 1, sa))) goto fail;
    if (!isfinite(scale) || !isfinite(damping) || (factored && damping < 0)) {
        PyErr_SetString(PyExc_ValueError, "scale, damping: expected finite numbers (damping >= 0 when factored)");
        goto fail;
    }
    PyArrayObject *o = (PyArrayObject *)outo;
    const npy_intp isz = t == NPY_FLOAT32 ? (npy_intp)sizeof(float) : (npy_intp)sizeof(double);
    const npy_intp p = nG * nA;
    /* strides only matter when there are rows: an empty view may carry any */
    if (!PyArray_Check(outo) || PyArray_TYPE(o) != t || PyArray_NDIM(o) != 2 || PyArray_DIM(o, 1) != p ||
        !PyArray_ISWRITEABLE(o) || !PyArray_ISALIGNED(o) ||
        (PyArray_DIM(o, 0) > 0 && ((p > 1 && PyArray_STRIDE(o, 1) != isz) || PyArray_STRIDE(o, 0) % isz)) ||
        (PyArray_DIM(o, 0) > 1 && PyArray_STRIDE(o, 0) / isz < p)) {
        PyErr_Format(PyExc_ValueError, "out: expected a writeable (n, %ld) %s array with contiguous rows",
                     (long)p, t == NPY_FLOAT32 ? "float32" : "float64");
        goto fail;
    }
    const int64_t ld = PyArray_DIM(o, 0) > 1 ? (int64_t)(PyArray_STRIDE(o, 0) / isz) : p;
    LA_CALL(pk_kron_sample(pkdt(t), nG, nA, PyArray_DATA(wG), PyArray_DATA(QG), PyArray_DATA(wA),
                           PyArray_DATA(QA), scale, damping, factored, PyArray_DIM(o, 0), &rng, ld,
                           PyArray_DATA(o)));
    Py_DECREF(wG);
    Py_DECREF(QG);
    Py_DECREF(wA);
    Py_DECREF(QA);
    if (rc) return raise_ctx(rc, "kron_sample");
    Py_RETURN_NONE;
fail:
    Py_XDECREF(wG);
    Py_XDECREF(QG);
    Py_XDECREF(wA);
    Py_XDECREF(QA);
    return NULL;
}

static PyObject *py_kron_inv_quad(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wG", "QG", "wA", "QA", "Gv", "Av", "scale", "damping", "factored", NULL};
    PyObject *wGo, *QGo, *wAo, *QAo, *Gvo, *Avo, *result = NULL;
    double scale = 1.0, damping = 0.0;
    int factored = 0, t, rc;
    PyArrayObject *wG = NULL, *QG = NULL, *wA = NULL, *QA = NULL, *Gv = NULL, *Av = NULL, *O = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO|$ddp:kron_inv_quad", kwlist, &wGo, &QGo, &wAo,
                                     &QAo, &Gvo, &Avo, &scale, &damping, &factored))
        return NULL;
    if (call_typenum(QGo, "QG", &t)) return NULL;
    npy_intp nG = -1, nA = -1;
    if (!(QG = arr_square(QGo, "QG", t, &nG)) || !(QA = arr_square(QAo, "QA", t, &nA))) goto out;
    npy_intp sg[1] = {nG}, sa[1] = {nA}, gs[3] = {-1, -1, nG};
    if (!(wG = arr(wGo, "wG", t, 1, sg)) || !(wA = arr(wAo, "wA", t, 1, sa))) goto out;
    if (!(Gv = arr(Gvo, "Gv", t, 3, gs))) goto out;
    npy_intp N = PyArray_DIM(Gv, 0), K = PyArray_DIM(Gv, 1);
    npy_intp as[2] = {N, nA};
    if (!(Av = arr(Avo, "Av", t, 2, as))) goto out;
    if (!isfinite(scale) || !isfinite(damping) || (factored && damping < 0)) {
        PyErr_SetString(PyExc_ValueError, "scale, damping: expected finite numbers (damping >= 0 when factored)");
        goto out;
    }
    npy_intp od[3] = {N, K, K};
    if (!(O = (PyArrayObject *)PyArray_ZEROS(3, od, t, 0))) goto out;
    LA_CALL(pk_kron_inv_quad(pkdt(t), nG, nA, PyArray_DATA(wG), PyArray_DATA(QG), PyArray_DATA(wA),
                             PyArray_DATA(QA), scale, damping, factored, N, K, PyArray_DATA(Gv),
                             PyArray_DATA(Av), PyArray_DATA(O)));
    if (rc) {
        raise_ctx(rc, "kron_inv_quad");
        goto out;
    }
    result = (PyObject *)O;
    O = NULL;
out:
    Py_XDECREF(wG);
    Py_XDECREF(QG);
    Py_XDECREF(wA);
    Py_XDECREF(QA);
    Py_XDECREF(Gv);
    Py_XDECREF(Av);
    Py_XDECREF(O);
    return result;
}

static PyObject *py_diag_inv_quad(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"F", "Gv", "Av", NULL};
    PyObject *Fo, *Gvo, *Avo, *result = NULL;
    int t, rc;
    PyArrayObject *F = NULL, *Gv = NULL, *Av = NULL, *O = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:diag_inv_quad", kwlist, &Fo, &Gvo, &Avo))
        return NULL;
    if (call_typenum(Fo, "F", &t)) return NULL;
    npy_intp fs[2] = {-1, -1};
    if (!(F = arr(Fo, "F", t, 2, fs))) goto out;
    npy_intp nG = PyArray_DIM(F, 0), nA = PyArray_DIM(F, 1);
    npy_intp gs[3] = {-1, -1, nG};
    if (!(Gv = arr(Gvo, "Gv", t, 3, gs))) goto out;
    npy_intp N = PyArray_DIM(Gv, 0), K = PyArray_DIM(Gv, 1);
    npy_intp as[2] = {N, nA};
    if (!(Av = arr(Avo, "Av", t, 2, as))) goto out;
    npy_intp od[3] = {N, K, K};
    if (!(O = (PyArrayObject *)PyArray_ZEROS(3, od, t, 0))) goto out;
    LA_CALL(pk_diag_inv_quad(pkdt(t), nG, nA, PyArray_DATA(F), N, K, PyArray_DATA(Gv), PyArray_DATA(Av),
                             PyArray_DATA(O)));
    if (rc) {
        raise_ctx(rc, "diag_inv_quad");
        goto out;
    }
    result = (PyObject *)O;
    O = NULL;
out:
    Py_XDECREF(F);
    Py_XDECREF(Gv);
    Py_XDECREF(Av);
    Py_XDECREF(O);
    return result;
}

static PyObject *py_linear_cov_quad(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"S", "Av", "n_outputs", NULL};
    PyObject *So, *Avo, *result = NULL;
    Py_ssize_t nG;
    int t, rc;
    PyArrayObject *S = NULL, *Av = NULL, *O = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOn:linear_cov_quad", kwlist, &So, &Avo, &nG)) return NULL;
    if (call_typenum(So, "S", &t)) return NULL;
    npy_intp p = -1;
    if (!(S = arr_square(So, "S", t, &p))) goto out;
    npy_intp as[2] = {-1, -1};
    if (!(Av = arr(Avo, "Av", t, 2, as))) goto out;
    npy_intp N = PyArray_DIM(Av, 0), nA = PyArray_DIM(Av, 1);
    if (nG < 1 || nG * nA != p) {
        PyErr_Format(PyExc_ValueError, "S: expected shape (n_outputs * %ld, n_outputs * %ld) with n_outputs = %ld, got (%ld, %ld)",
                     (long)nA, (long)nA, (long)nG, (long)p, (long)p);
        goto out;
    }
    npy_intp od[3] = {N, (npy_intp)nG, (npy_intp)nG};
    if (!(O = (PyArrayObject *)PyArray_ZEROS(3, od, t, 0))) goto out;
    LA_CALL(pk_linear_cov_quad(pkdt(t), nG, nA, PyArray_DATA(S), N, PyArray_DATA(Av), PyArray_DATA(O)));
    if (rc) {
        raise_ctx(rc, "linear_cov_quad");
        goto out;
    }
    result = (PyObject *)O;
    O = NULL;
out:
    Py_XDECREF(S);
    Py_XDECREF(Av);
    Py_XDECREF(O);
    return result;
}

static PyObject *py_matrix_normal_sample(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"M", "U", "V", "n", "seed", NULL};
    PyObject *Mo, *Uo, *Vo, *seed, *result = NULL;
    Py_ssize_t n;
    PyArrayObject *M = NULL, *U = NULL, *V = NULL, *LU = NULL, *LV = NULL, *X = NULL;
    int t, rc;
    pk_rng_t rng;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOnO:matrix_normal_sample", kwlist, &Mo, &Uo, &Vo, &n, &seed))
        return NULL;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "n: expected a number of samples >= 0, got %zd", n);
        return NULL;
    }
    if (pk_parse_seed(seed, &rng) < 0) return NULL;
    if (call_typenum(Mo, "M", &t)) return NULL;
    npy_intp ms[2] = {-1, -1};
    if (!(M = arr(Mo, "M", t, 2, ms))) goto out;
    npy_intp r = PyArray_DIM(M, 0), c = PyArray_DIM(M, 1);
    npy_intp us[2] = {r, r}, vs[2] = {c, c};
    if (!(U = arr(Uo, "U", t, 2, us)) || !(V = arr(Vo, "V", t, 2, vs))) goto out;
    if (!(LU = new_arr(2, us, t)) || !(LV = new_arr(2, vs, t))) goto out;
    npy_intp xd[3] = {(npy_intp)n, r, c};
    if (!(X = new_arr(3, xd, t))) goto out;
    LA_CALL(pk_chol(pkdt(t), r, PyArray_DATA(U), PyArray_DATA(LU)));
    if (rc) {
        raise_ctx(rc, "U (row covariance)");
        goto out;
    }
    LA_CALL(pk_chol(pkdt(t), c, PyArray_DATA(V), PyArray_DATA(LV)));
    if (rc) {
        raise_ctx(rc, "V (column covariance)");
        goto out;
    }
    LA_CALL(pk_matrix_normal_sample(pkdt(t), r, c, PyArray_DATA(M), PyArray_DATA(LU), PyArray_DATA(LV), n,
                                    &rng, PyArray_DATA(X)));
    if (rc) {
        raise_ctx(rc, "matrix_normal_sample");
        goto out;
    }
    result = (PyObject *)X;
    X = NULL;
out:
    Py_XDECREF(M);
    Py_XDECREF(U);
    Py_XDECREF(V);
    Py_XDECREF(LU);
    Py_XDECREF(LV);
    Py_XDECREF(X);
    return result;
}

/* standard_normal(n, d, float32, seed, mean=None, scale=None) -> (n, d) draws
 * mean + scale * z from the C core's RNG, mean and scale (d,) of the dtype. */
static PyObject *py_standard_normal(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"n", "d", "float32", "seed", "mean", "scale", NULL};
    Py_ssize_t n, d;
    int f32, rc;
    PyObject *seed, *mean_obj = Py_None, *scale_obj = Py_None, *result = NULL;
    PyArrayObject *mean = NULL, *scale = NULL, *Z = NULL;
    pk_rng_t rng;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nnpO|OO:standard_normal", kwlist, &n, &d, &f32, &seed,
                                     &mean_obj, &scale_obj))
        return NULL;
    if (n < 0 || d < 0) {
        PyErr_SetString(PyExc_ValueError, "n, d: expected sizes >= 0");
        return NULL;
    }
    if (pk_parse_seed(seed, &rng) < 0) return NULL;
    int t = f32 ? NPY_FLOAT32 : NPY_FLOAT64;
    npy_intp dd = (npy_intp)d;
    if (mean_obj != Py_None && !(mean = arr(mean_obj, "mean", t, 1, &dd))) goto out;
    if (scale_obj != Py_None && !(scale = arr(scale_obj, "scale", t, 1, &dd))) goto out;
    npy_intp dims[2] = {(npy_intp)n, dd};
    if (!(Z = new_arr(2, dims, t))) goto out;
    LA_CALL(pk_rng_fill_normal_affine(&rng, pkdt(t), (int64_t)n, (int64_t)d, mean ? PyArray_DATA(mean) : NULL,
                                      scale ? PyArray_DATA(scale) : NULL, (int64_t)d, PyArray_DATA(Z)));
    if (rc) {
        raise_ctx(rc, "standard_normal");
        goto out;
    }
    result = (PyObject *)Z;
    Z = NULL;
out:
    Py_XDECREF(mean);
    Py_XDECREF(scale);
    Py_XDECREF(Z);
    return result;
}

PyMethodDef pk_linalg_methods[] = {
    {"ggn_from_jacobians", FN(py_ggn_from_jacobians), KW,
     "ggn_from_jacobians(J, Lam=None) -> G\n\nG (D, D) = sum_n J_n^T Lam_n J_n for J (N, K, D), Lam (N, K, K) "
     "(identity when None)."},
    {"ggn_linear", FN(py_ggn_linear), KW,
     "ggn_linear(Phi, Lam) -> G\n\nExact GGN (theta order: W row-major, then b) of a linear layer "
     "f = W phi + b on features Phi (N, h) with output Hessians Lam (N, K, K)."},
    {"ggn_factor", FN(py_ggn_factor), KW,
     "ggn_factor(J, S) -> U\n\nU (D, N K) with column n K + j = J_n^T S_n[:, j] (U U^T = sum J^T S S^T J)."},
    {"psd_sqrt", FN(py_psd_sqrt), KW, "psd_sqrt(Lam) -> S\n\nSymmetric square roots of N PSD (K, K) matrices."},
    {"batched_gram", FN(py_batched_gram), KW,
     "batched_gram(J, R) -> out\n\nout[n] = J[n] @ R[:, n K:(n+1) K] for J (N, K, D), R (D, N K)."},
    {"diag_quad", FN(py_diag_quad), KW, "diag_quad(J, w) -> out\n\nout[n] = J[n] diag(w) J[n]^T."},
    {"woodbury_logdet", FN(py_woodbury_logdet), KW,
     "woodbury_logdet(alpha, Gmat) -> float\n\nlog det(diag(alpha) + Gmat Gmat^T)."},
    {"woodbury_solve", FN(py_woodbury_solve), KW,
     "woodbury_solve(alpha, Gmat, V) -> R\n\n(diag(alpha) + Gmat Gmat^T)^-1 V for V (D, m)."},
    {"woodbury_inverse", FN(py_woodbury_inverse), KW,
     "woodbury_inverse(alpha, Gmat) -> (D, D)\n\n(diag(alpha) + Gmat Gmat^T)^-1, dense."},
    {"woodbury_diag_inverse", FN(py_woodbury_diag_inverse), KW,
     "woodbury_diag_inverse(alpha, Gmat) -> (D,)\n\nDiagonal of (diag(alpha) + Gmat Gmat^T)^-1."},
    {"woodbury_sample", FN(py_woodbury_sample), KW,
     "woodbury_sample(alpha, Gmat, n, seed) -> (n, D)\n\nDraws of N(0, (diag(alpha) + Gmat Gmat^T)^-1)."},
    {"lowrank_eigh", FN(py_lowrank_eigh), KW,
     "lowrank_eigh(Gmat) -> (s, Q, rank)\n\nGmat Gmat^T = Q diag(s) Q^T, s descending, first `rank` used."},
    {"lowrank_apply", FN(py_lowrank_apply), KW,
     "lowrank_apply(Q, a0, d, V) -> R\n\nR = a0 V + Q diag(d) Q^T V."},
    {"lowrank_quad", FN(py_lowrank_quad), KW,
     "lowrank_quad(J, Q, a0, d) -> (N, K, K)\n\nout[n] = J[n] (a0 I + Q diag(d) Q^T) J[n]^T."},
    {"sym_eigvals", FN(py_sym_eigvals), KW, "sym_eigvals(M) -> w\n\nEigenvalues (ascending) of a symmetric matrix."},
    {"chol", FN(py_chol), KW, "chol(A, name='A') -> L\n\nLower Cholesky factor of a symmetric PD matrix."},
    {"chol_solve", FN(py_chol_solve), KW, "chol_solve(L, B) -> (L L^T)^-1 B for B (n, m)."},
    {"chol_inverse", FN(py_chol_inverse), KW, "chol_inverse(L) -> (L L^T)^-1."},
    {"chol_logdet", FN(py_chol_logdet), KW, "chol_logdet(L) -> log det(L L^T)."},
    {"chol_sample", FN(py_chol_sample), KW,
     "chol_sample(L, Z) -> X\n\nRows x = L^-T z: N(0, (L L^T)^-1) draws from standard normal rows Z (m, n)."},
    {"kron_eigh", FN(py_kron_eigh), KW, "kron_eigh(A, G) -> (wG, QG, wA, QA)\n\nEigendecompositions of both factors."},
    {"kron_spectral_apply", FN(py_kron_spectral_apply), KW,
     "kron_spectral_apply(wG, QG, wA, QA, X, *, scale=1, damping=0, power=-1) -> R\n\n"
     "R[j] = (scale G (x) A + damping I)^power vec(X[j]) as (nG, nA) matrices (np.kron order)."},
    {"kron_sample", FN(py_kron_sample), KW,
     "kron_sample(wG, QG, wA, QA, out, seed, *, scale=1, damping=0, factored=False) -> None\n\n"
     "out[j] += a draw of N(0, (scale G (x) A + damping I)^-1) in theta order (W row-major, then b),\n"
     "as QG (F o Z) QA^T with F = damped eigenvalues^-1/2; out (n, nG nA) with contiguous rows."},
    {"kron_inv_quad", FN(py_kron_inv_quad), KW,
     "kron_inv_quad(wG, QG, wA, QA, Gv, Av, *, scale=1, damping=0, factored=False) -> (N, K, K)\n\n"
     "out[n, k, k'] = (g_nk (x) a_n)^T (scale G (x) A + damping I)^-1 (g_nk' (x) a_n) for Gv (N, K, nG), Av (N, nA)."},
    {"diag_inv_quad", FN(py_diag_inv_quad), KW,
     "diag_inv_quad(F, Gv, Av) -> (N, K, K)\n\n"
     "out[n, k, k'] = sum_ij Gv[n,k,i] Gv[n,k',i] Av[n,j]^2 F[i,j]: rank-one Jacobian rows against a diagonal covariance."},
    {"linear_cov_quad", FN(py_linear_cov_quad), KW,
     "linear_cov_quad(S, Av, n_outputs) -> (N, K, K)\n\n"
     "out[n] = J_n S J_n^T for a linear layer's rows J_n = I_K (x) Av[n] (S in theta order: W row-major, then b)."},
    {"matrix_normal_sample", FN(py_matrix_normal_sample), KW,
     "matrix_normal_sample(M, U, V, n, seed) -> (n, r, c)\n\nX = M + chol(U) Z chol(V)^T, Cov(vec X) = U (x) V."},
    {"standard_normal", FN(py_standard_normal), KW,
     "standard_normal(n, d, float32, seed, mean=None, scale=None) -> (n, d) values mean + scale * z, z "
     "standard normals from the C core's RNG; mean and scale (d,) of the dtype."},
    {NULL, NULL, 0, NULL},
};
