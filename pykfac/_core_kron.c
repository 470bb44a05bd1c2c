/* _core_kron.c: wrappers of csrc/kron.c (Kronecker-factored layer blocks).
 *
 * The dtype of every call is the dtype of its first array argument, which
 * must be float32 or float64 (TypeError otherwise); the other arrays are cast
 * to it. Outputs are fresh arrays (or the caller's `out` for kron_to_dense);
 * inputs are never written. */
#include "_core.h"

#include <math.h>
#include <stdio.h>

#define KRON_CALL(expr)                                                                       \
    do {                                                                                      \
        Py_BEGIN_ALLOW_THREADS rc = (expr);                                                   \
        Py_END_ALLOW_THREADS                                                                  \
    } while (0)

static void format_dims(char *buf, size_t len, int ndim, const npy_intp *dims)
{
    size_t pos = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < ndim && pos < len; i++)
        pos += (size_t)snprintf(buf + pos, len - pos, "%s%ld", i ? ", " : "", (long)dims[i]);
    if (pos < len) snprintf(buf + pos, len - pos, ndim == 1 ? ",)" : ")");
}

/* The call's dtype, from its first array argument. */
static int first_typenum(PyObject *obj, const char *name, int *typenum)
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
    int t = PyArray_TYPE(a);
    if (t != NPY_FLOAT32 && t != NPY_FLOAT64) {
        PyErr_Format(PyExc_TypeError, "%s: expected a float32 or float64 array, got dtype %S", name,
                     (PyObject *)PyArray_DESCR(a));
        Py_DECREF(a);
        return -1;
    }
    Py_DECREF(a);
    *typenum = t;
    return 0;
}

static pk_dtype_t to_pk_dtype(int typenum) { return typenum == NPY_FLOAT32 ? PK_FLOAT32 : PK_FLOAT64; }

/* A square matrix argument; *n receives its order, or it must equal *n >= 0. */
static PyArrayObject *arg_square(PyObject *obj, const char *name, int typenum, npy_intp *n)
{
    npy_intp shape[2] = {*n, *n};
    PyArrayObject *arr = pk_arg_array(obj, name, PK_ARG_REAL, typenum, 2, shape, 1);
    if (!arr) return NULL;
    if (PyArray_DIM(arr, 0) != PyArray_DIM(arr, 1)) {
        PyErr_Format(PyExc_ValueError, "%s: expected a square matrix, got shape (%ld, %ld)", name,
                     (long)PyArray_DIM(arr, 0), (long)PyArray_DIM(arr, 1));
        Py_DECREF(arr);
        return NULL;
    }
    *n = PyArray_DIM(arr, 0);
    return arr;
}

/* A vector argument of length *n (or any length if *n < 0, then set). */
static PyArrayObject *arg_vector(PyObject *obj, const char *name, int typenum, npy_intp *n)
{
    npy_intp shape[1] = {*n};
    PyArrayObject *arr = pk_arg_array(obj, name, PK_ARG_REAL, typenum, 1, shape, 1);
    if (arr) *n = PyArray_DIM(arr, 0);
    return arr;
}

/* V of shape (p,) or (p, m); *m = 1 for a vector. */
static PyArrayObject *arg_rhs(PyObject *obj, const char *name, int typenum, npy_intp p, npy_intp *m)
{
    if (obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: expected an array, got None", name);
        return NULL;
    }
    PyArrayObject *raw = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!raw) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected a numeric array, got %s", name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    int nd = PyArray_NDIM(raw);
    if ((nd != 1 && nd != 2) || PyArray_DIM(raw, 0) != p) {
        char got[128];
        format_dims(got, sizeof got, nd, PyArray_DIMS(raw));
        PyErr_Format(PyExc_ValueError, "%s: expected shape (p,) or (p, m) with p = %ld, got %s", name,
                     (long)p, got);
        Py_DECREF(raw);
        return NULL;
    }
    Py_DECREF(raw);
    npy_intp shape[2] = {p, -1};
    PyArrayObject *arr = pk_arg_array(obj, name, PK_ARG_REAL, typenum, nd, shape, 1);
    if (arr) *m = nd == 2 ? PyArray_DIM(arr, 1) : 1;
    return arr;
}

/* Order q = in + 1 of A must be at least 1 (the bias). */
static int check_q(npy_intp q, const char *name)
{
    if (q >= 1) return 0;
    PyErr_Format(PyExc_ValueError, "%s: expected order in + 1 >= 1 (the bias row), got 0", name);
    return -1;
}

/* PyErr_Format has no %g. */
typedef struct {
    char s[32];
} num_str_t;

static num_str_t num_str(double x)
{
    num_str_t r;
    snprintf(r.s, sizeof r.s, "%g", x);
    return r;
}

/* The scalars of the damped eigenvalues; the C core would only say BAD_ARG. */
static int check_damping(double scale, double damping, int factored, double pi)
{
    if (!isfinite(scale)) {
        PyErr_Format(PyExc_ValueError, "scale: expected a finite number, got %s", num_str(scale).s);
        return -1;
    }
    if (!isfinite(damping) || (factored && damping < 0.0)) {
        PyErr_Format(PyExc_ValueError, "damping: expected a finite number%s, got %s",
                     factored ? " >= 0 (factored damping takes its square root)" : "", num_str(damping).s);
        return -1;
    }
    if (factored && !(pi > 0.0 && isfinite(pi))) {
        PyErr_Format(PyExc_ValueError, "pi: expected a finite number > 0, got %s", num_str(pi).s);
        return -1;
    }
    return 0;
}

static PyObject *py_sym_eigh(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"M", NULL};
    PyObject *Mo, *result = NULL;
    PyArrayObject *M = NULL, *w = NULL, *Q = NULL;
    int typenum, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:sym_eigh", kwlist, &Mo)) return NULL;
    if (first_typenum(Mo, "M", &typenum)) return NULL;
    npy_intp n = -1;
    if (!(M = arg_square(Mo, "M", typenum, &n))) goto out;
    npy_intp dims[2] = {n, n};
    w = (PyArrayObject *)PyArray_SimpleNew(1, dims, typenum);
    Q = (PyArrayObject *)PyArray_SimpleNew(2, dims, typenum);
    if (!w || !Q) goto out;
    KRON_CALL(pk_sym_eigh(to_pk_dtype(typenum), n, PyArray_DATA(M), PyArray_DATA(w), PyArray_DATA(Q)));
    if (rc != PK_OK) {
        pk_raise(rc, "sym_eigh");
        goto out;
    }
    result = Py_BuildValue("(OO)", w, Q);
out:
    Py_XDECREF(M);
    Py_XDECREF(w);
    Py_XDECREF(Q);
    return result;
}

static PyObject *py_kron_matvec(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"G", "A", "V", NULL};
    PyObject *Go, *Ao, *Vo;
    PyArrayObject *G = NULL, *A = NULL, *V = NULL, *R = NULL;
    int typenum, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:kron_matvec", kwlist, &Go, &Ao, &Vo)) return NULL;
    if (first_typenum(Go, "G", &typenum)) return NULL;
    npy_intp out = -1, q = -1, m = 1;
    if (!(G = arg_square(Go, "G", typenum, &out))) goto fail;
    if (!(A = arg_square(Ao, "A", typenum, &q))) goto fail;
    if (check_q(q, "A")) goto fail;
    if (!(V = arg_rhs(Vo, "V", typenum, out * q, &m))) goto fail;
    R = (PyArrayObject *)PyArray_SimpleNew(PyArray_NDIM(V), PyArray_DIMS(V), typenum);
    if (!R) goto fail;
    KRON_CALL(pk_kron_matvec(to_pk_dtype(typenum), out, q - 1, PyArray_DATA(G), PyArray_DATA(A), m,
                             PyArray_DATA(V), PyArray_DATA(R)));
    if (rc != PK_OK) {
        pk_raise(rc, "kron_matvec");
        goto fail;
    }
    Py_DECREF(G);
    Py_DECREF(A);
    Py_DECREF(V);
    return (PyObject *)R;
fail:
    Py_XDECREF(G);
    Py_XDECREF(A);
    Py_XDECREF(V);
    Py_XDECREF(R);
    return NULL;
}

static PyObject *py_kron_eig_apply(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wG", "QG", "wA", "QA", "V", "scale", "damping", "factored", "pi", "power", NULL};
    PyObject *wGo, *QGo, *wAo, *QAo, *Vo;
    double scale = 1.0, damping = 0.0, pi = 1.0, power = -1.0;
    int factored = 0, typenum, rc;
    PyArrayObject *wG = NULL, *QG = NULL, *wA = NULL, *QA = NULL, *V = NULL, *R = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|$ddpdd:kron_eig_apply", kwlist, &wGo, &QGo,
                                     &wAo, &QAo, &Vo, &scale, &damping, &factored, &pi, &power))
        return NULL;
    if (first_typenum(wGo, "wG", &typenum)) return NULL;
    npy_intp out = -1, q = -1, m = 1;
    if (!(wG = arg_vector(wGo, "wG", typenum, &out))) goto fail;
    if (!(QG = arg_square(QGo, "QG", typenum, &out))) goto fail;
    if (!(wA = arg_vector(wAo, "wA", typenum, &q))) goto fail;
    if (check_q(q, "wA")) goto fail;
    if (!(QA = arg_square(QAo, "QA", typenum, &q))) goto fail;
    if (!(V = arg_rhs(Vo, "V", typenum, out * q, &m))) goto fail;
    if (!(power == 1.0 || power == -1.0 || power == 0.5 || power == -0.5)) {
        PyErr_Format(PyExc_ValueError, "power: expected 1, -1, 0.5 or -0.5, got %s", num_str(power).s);
        goto fail;
    }
    if (check_damping(scale, damping, factored, pi)) goto fail;
    R = (PyArrayObject *)PyArray_SimpleNew(PyArray_NDIM(V), PyArray_DIMS(V), typenum);
    if (!R) goto fail;
    KRON_CALL(pk_kron_eig_apply(to_pk_dtype(typenum), out, q - 1, PyArray_DATA(wG), PyArray_DATA(QG),
                                PyArray_DATA(wA), PyArray_DATA(QA), scale, damping,
                                factored ? PK_DAMP_FACTORED : PK_DAMP_EXACT, pi, power, m,
                                PyArray_DATA(V), PyArray_DATA(R)));
    if (rc != PK_OK) {
        pk_raise(rc, "kron_eig_apply");
        goto fail;
    }
    Py_DECREF(wG);
    Py_DECREF(QG);
    Py_DECREF(wA);
    Py_DECREF(QA);
    Py_DECREF(V);
    return (PyObject *)R;
fail:
    Py_XDECREF(wG);
    Py_XDECREF(QG);
    Py_XDECREF(wA);
    Py_XDECREF(QA);
    Py_XDECREF(V);
    Py_XDECREF(R);
    return NULL;
}

static PyObject *py_kron_logdet(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wG", "wA", "scale", "damping", "factored", "pi", NULL};
    PyObject *wGo, *wAo, *result = NULL;
    double scale = 1.0, damping = 0.0, pi = 1.0, logdet = 0.0;
    int factored = 0, typenum, rc;
    PyArrayObject *wG = NULL, *wA = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|$ddpd:kron_logdet", kwlist, &wGo, &wAo, &scale,
                                     &damping, &factored, &pi))
        return NULL;
    if (first_typenum(wGo, "wG", &typenum)) return NULL;
    npy_intp out = -1, q = -1;
    if (!(wG = arg_vector(wGo, "wG", typenum, &out))) goto out;
    if (!(wA = arg_vector(wAo, "wA", typenum, &q))) goto out;
    if (check_q(q, "wA")) goto out;
    if (check_damping(scale, damping, factored, pi)) goto out;
    KRON_CALL(pk_kron_logdet(to_pk_dtype(typenum), out, q - 1, PyArray_DATA(wG), PyArray_DATA(wA),
                             scale, damping, factored ? PK_DAMP_FACTORED : PK_DAMP_EXACT, pi, &logdet));
    if (rc != PK_OK) {
        pk_raise(rc, "kron_logdet");
        goto out;
    }
    result = PyFloat_FromDouble(logdet);
out:
    Py_XDECREF(wG);
    Py_XDECREF(wA);
    return result;
}

/* `out` must be a writeable (p, p) array of the call's dtype with unit-stride
 * rows, e.g. a diagonal block view of a larger matrix (ldb = row stride). */
static int check_out(PyObject *obj, int typenum, npy_intp p, int64_t *ldb)
{
    PyArrayObject *a = (PyArrayObject *)obj;
    const npy_intp isz = typenum == NPY_FLOAT32 ? (npy_intp)sizeof(float) : (npy_intp)sizeof(double);
    if (!PyArray_Check(obj) || PyArray_TYPE(a) != typenum || PyArray_NDIM(a) != 2 ||
        PyArray_DIM(a, 0) != p || PyArray_DIM(a, 1) != p || !PyArray_ISWRITEABLE(a) ||
        !PyArray_ISALIGNED(a) || (p > 1 && PyArray_STRIDE(a, 1) != isz) || PyArray_STRIDE(a, 0) % isz ||
        (p > 1 && PyArray_STRIDE(a, 0) / isz < p)) {
        PyErr_Format(PyExc_ValueError,
                     "out: expected a writeable (%ld, %ld) %s array with contiguous rows", (long)p,
                     (long)p, typenum == NPY_FLOAT32 ? "float32" : "float64");
        return -1;
    }
    *ldb = p > 1 ? (int64_t)(PyArray_STRIDE(a, 0) / isz) : p;
    return 0;
}

static PyObject *py_kron_to_dense(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"G", "A", "out", NULL};
    PyObject *Go, *Ao, *Bo = Py_None;
    PyArrayObject *G = NULL, *A = NULL, *B = NULL;
    int typenum, rc;
    int64_t ldb = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O:kron_to_dense", kwlist, &Go, &Ao, &Bo)) return NULL;
    if (first_typenum(Go, "G", &typenum)) return NULL;
    npy_intp out = -1, q = -1;
    if (!(G = arg_square(Go, "G", typenum, &out))) goto fail;
    if (!(A = arg_square(Ao, "A", typenum, &q))) goto fail;
    if (check_q(q, "A")) goto fail;
    const npy_intp p = out * q;
    if (Bo == Py_None) {
        npy_intp dims[2] = {p, p};
        B = (PyArrayObject *)PyArray_SimpleNew(2, dims, typenum);
        if (!B) goto fail;
        ldb = p;
    } else {
        if (check_out(Bo, typenum, p, &ldb)) goto fail;
        Py_INCREF(Bo);
        B = (PyArrayObject *)Bo;
    }
    KRON_CALL(pk_kron_to_dense(to_pk_dtype(typenum), out, q - 1, PyArray_DATA(G), PyArray_DATA(A),
                               PyArray_DATA(B), ldb));
    if (rc != PK_OK) {
        pk_raise(rc, "kron_to_dense");
        goto fail;
    }
    Py_DECREF(G);
    Py_DECREF(A);
    return (PyObject *)B;
fail:
    Py_XDECREF(G);
    Py_XDECREF(A);
    Py_XDECREF(B);
    return NULL;
}

#define KW (METH_VARARGS | METH_KEYWORDS)
#define FN(f) ((PyCFunction)(void (*)(void))(f))

PyMethodDef pk_kron_methods[] = {
    {"sym_eigh", FN(py_sym_eigh), KW,
     "sym_eigh(M) -> (w, Q)\n\nM = Q diag(w) Q^T for symmetric M (n, n) (lower triangle read); "
     "w (n,) ascending, Q (n, n) with the eigenvectors as columns. LAPACK syevd."},
    {"kron_matvec", FN(py_kron_matvec), KW,
     "kron_matvec(G, A, V) -> R\n\nR = (G (x) A) V for one layer, G (out, out), A (q, q), "
     "V (p,) or (p, m), p = out * q, in theta order (W row-major, then b)."},
    {"kron_eig_apply", FN(py_kron_eig_apply), KW,
     "kron_eig_apply(wG, QG, wA, QA, V, *, scale=1.0, damping=0.0, factored=False, pi=1.0, "
     "power=-1.0) -> R\n\nR = (damped G (x) A)^power V from the eigendecompositions of G and A; "
     "power in {1, -1, 0.5, -0.5}. Damped eigenvalues: scale*lg*la + damping, or "
     "(scale*lg + sqrt(damping)/pi)(la + sqrt(damping)*pi) when factored."},
    {"kron_logdet", FN(py_kron_logdet), KW,
     "kron_logdet(wG, wA, *, scale=1.0, damping=0.0, factored=False, pi=1.0) -> float\n\n"
     "Sum of the logs of the damped eigenvalues (see kron_eig_apply)."},
    {"kron_to_dense", FN(py_kron_to_dense), KW,
     "kron_to_dense(G, A, out=None) -> B\n\nB (p, p) = G (x) A in theta order. `out` may be a "
     "writeable block view of a larger matrix with contiguous rows; it is filled and returned."},
    {NULL, NULL, 0, NULL},
};
