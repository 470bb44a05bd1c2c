/* _core_kron.c: wrappers of csrc/kron.c (Kronecker-factored layer blocks).
 *
 * The dtype of every call is the dtype of its first array argument, which
 * must be float32 or float64 (TypeError otherwise); the other arrays are cast
 * to it. Outputs are fresh arrays (or the caller's `out` for kron_to_dense);
 * inputs are never written. */
#include "_core.h"

#include <math.h>

/* A vector argument of length *n (or any length if *n < 0, then set). */
static PyArrayObject *arg_vector(pk_call_t *c, PyObject *obj, const char *name, npy_intp *n)
{
    npy_intp shape[1] = {*n};
    PyArrayObject *arr = pk_call_input(c, obj, name, 1, shape);
    if (arr) *n = PyArray_DIM(arr, 0);
    return arr;
}

/* V of shape (p,) or (p, m); *m = 1 for a vector. */
static PyArrayObject *arg_rhs(pk_call_t *c, PyObject *obj, const char *name, npy_intp p, npy_intp *m)
{
    PyArrayObject *raw = pk_arg_any(obj, name);
    if (!raw) return NULL;
    int nd = PyArray_NDIM(raw);
    if ((nd != 1 && nd != 2) || PyArray_DIM(raw, 0) != p) {
        char got[128];
        pk_format_shape(got, sizeof got, nd, PyArray_DIMS(raw), 0);
        PyErr_Format(PyExc_ValueError, "%s: expected shape (p,) or (p, m) with p = %ld, got %s", name,
                     (long)p, got);
        Py_DECREF(raw);
        return NULL;
    }
    Py_DECREF(raw);
    npy_intp shape[2] = {p, -1};
    PyArrayObject *arr = pk_call_input(c, obj, name, nd, shape);
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

/* The scalars of the damped eigenvalues; the C core would only say BAD_ARG. */
static int check_damping(double scale, double damping, int factored, double pi)
{
    if (!isfinite(scale)) {
        PyErr_Format(PyExc_ValueError, "scale: expected a finite number, got %s", pk_numstr(scale).s);
        return -1;
    }
    if (!isfinite(damping) || (factored && damping < 0.0)) {
        PyErr_Format(PyExc_ValueError, "damping: expected a finite number%s, got %s",
                     factored ? " >= 0 (factored damping takes its square root)" : "", pk_numstr(damping).s);
        return -1;
    }
    if (factored && !(pi > 0.0 && isfinite(pi))) {
        PyErr_Format(PyExc_ValueError, "pi: expected a finite number > 0, got %s", pk_numstr(pi).s);
        return -1;
    }
    return 0;
}

static PyObject *py_sym_eigh(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"M", NULL};
    PyObject *Mo;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:sym_eigh", kwlist, &Mo)) return NULL;
    npy_intp n;
    PyArrayObject *M = pk_call_first_square(&c, Mo, "M", PK_DTYPE_EXACT, &n), *w, *Q;
    if (!M) return pk_call_fail(&c);
    npy_intp dims[2] = {n, n};
    if (!(w = pk_call_output(&c, 1, dims)) || !(Q = pk_call_output(&c, 2, dims))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_sym_eigh(c.dtype, n, PyArray_DATA(M), PyArray_DATA(w), PyArray_DATA(Q)));
    if (rc != PK_OK) return pk_call_raise(&c, rc, "sym_eigh");
    return pk_call_release(&c, Py_BuildValue("(OO)", w, Q));
}

static PyObject *py_kron_matvec(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"G", "A", "V", NULL};
    PyObject *Go, *Ao, *Vo;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:kron_matvec", kwlist, &Go, &Ao, &Vo)) return NULL;
    npy_intp out, q = -1, m = 1;
    PyArrayObject *G = pk_call_first_square(&c, Go, "G", PK_DTYPE_EXACT, &out), *A, *V, *R;
    if (!G || !(A = pk_call_square(&c, Ao, "A", &q)) || check_q(q, "A")) return pk_call_fail(&c);
    if (!(V = arg_rhs(&c, Vo, "V", out * q, &m)) || !(R = pk_call_output(&c, PyArray_NDIM(V), PyArray_DIMS(V))))
        return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_kron_matvec(c.dtype, out, q - 1, PyArray_DATA(G), PyArray_DATA(A), m, PyArray_DATA(V),
                                    PyArray_DATA(R)));
    return pk_call_return(&c, rc, "kron_matvec", R);
}

static PyObject *py_kron_eig_apply(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wG", "QG", "wA", "QA", "V", "scale", "damping", "factored", "pi", "power", NULL};
    PyObject *wGo, *QGo, *wAo, *QAo, *Vo;
    double scale = 1.0, damping = 0.0, pi = 1.0, power = -1.0;
    int factored = 0;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|$ddpdd:kron_eig_apply", kwlist, &wGo, &QGo,
                                     &wAo, &QAo, &Vo, &scale, &damping, &factored, &pi, &power))
        return NULL;
    PyArrayObject *wG = pk_call_first(&c, wGo, "wG", PK_DTYPE_EXACT, 1), *QG, *wA, *QA, *V, *R;
    if (!wG) return pk_call_fail(&c);
    npy_intp out = PyArray_DIM(wG, 0), q = -1, m = 1;
    if (!(QG = pk_call_square(&c, QGo, "QG", &out)) || !(wA = arg_vector(&c, wAo, "wA", &q)) || check_q(q, "wA") ||
        !(QA = pk_call_square(&c, QAo, "QA", &q)) || !(V = arg_rhs(&c, Vo, "V", out * q, &m)))
        return pk_call_fail(&c);
    if (!(power == 1.0 || power == -1.0 || power == 0.5 || power == -0.5)) {
        PyErr_Format(PyExc_ValueError, "power: expected 1, -1, 0.5 or -0.5, got %s", pk_numstr(power).s);
        return pk_call_fail(&c);
    }
    if (check_damping(scale, damping, factored, pi) || !(R = pk_call_output(&c, PyArray_NDIM(V), PyArray_DIMS(V))))
        return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_kron_eig_apply(c.dtype, out, q - 1, PyArray_DATA(wG), PyArray_DATA(QG), PyArray_DATA(wA),
                                       PyArray_DATA(QA), scale, damping, factored ? PK_DAMP_FACTORED : PK_DAMP_EXACT,
                                       pi, power, m, PyArray_DATA(V), PyArray_DATA(R)));
    return pk_call_return(&c, rc, "kron_eig_apply", R);
}

static PyObject *py_kron_basis_apply(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"QG", "QA", "F", "V", NULL};
    PyObject *QGo, *QAo, *Fo, *Vo;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO:kron_basis_apply", kwlist, &QGo, &QAo, &Fo, &Vo))
        return NULL;
    npy_intp out = -1, q = -1, m = 1;
    PyArrayObject *QG = pk_call_first_square(&c, QGo, "QG", PK_DTYPE_EXACT, &out), *QA, *F, *V, *R;
    if (!QG || !(QA = pk_call_square(&c, QAo, "QA", &q)) || check_q(q, "QA")) return pk_call_fail(&c);
    npy_intp fs[2] = {out, q};
    if (!(F = pk_call_input(&c, Fo, "F", 2, fs)) || !(V = arg_rhs(&c, Vo, "V", out * q, &m)) ||
        !(R = pk_call_output(&c, PyArray_NDIM(V), PyArray_DIMS(V))))
        return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_kron_basis_apply(c.dtype, out, q - 1, PyArray_DATA(QG), PyArray_DATA(QA), PyArray_DATA(F), m,
                                         PyArray_DATA(V), PyArray_DATA(R)));
    return pk_call_return(&c, rc, "kron_basis_apply", R);
}

static PyObject *py_ekfac_scales(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"QG", "QA", "U", "A", NULL};
    PyObject *QGo, *QAo, *Uo, *Ao;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO:ekfac_scales", kwlist, &QGo, &QAo, &Uo, &Ao)) return NULL;
    npy_intp out = -1, q = -1;
    PyArrayObject *QG = pk_call_first_square(&c, QGo, "QG", PK_DTYPE_EXACT, &out), *QA, *U, *A, *S;
    if (!QG || !(QA = pk_call_square(&c, QAo, "QA", &q)) || check_q(q, "QA")) return pk_call_fail(&c);
    npy_intp us[3] = {-1, -1, out};
    if (!(U = pk_call_input(&c, Uo, "U", 3, us))) return pk_call_fail(&c);
    npy_intp as[2] = {PyArray_DIM(U, 0), q - 1}, ss[2] = {out, q};
    if (!(A = pk_call_input(&c, Ao, "A", 2, as)) || !(S = pk_call_output(&c, 2, ss))) return pk_call_fail(&c);
    if (PyArray_DIM(U, 1) < 1) {
        PyErr_SetString(PyExc_ValueError, "U: expected at least one column per sample (shape (n, r, out), r >= 1)");
        return pk_call_fail(&c);
    }
    int rc;
    PK_RUN_NOGIL(rc, pk_ekfac_scales(c.dtype, out, q - 1, PyArray_DIM(U, 0), PyArray_DIM(U, 1), PyArray_DATA(QG),
                                     PyArray_DATA(QA), PyArray_DATA(U), PyArray_DATA(A), PyArray_DATA(S)));
    return pk_call_return(&c, rc, "ekfac_scales", S);
}

static PyObject *py_kron_logdet(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wG", "wA", "scale", "damping", "factored", "pi", NULL};
    PyObject *wGo, *wAo;
    double scale = 1.0, damping = 0.0, pi = 1.0, logdet = 0.0;
    int factored = 0;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|$ddpd:kron_logdet", kwlist, &wGo, &wAo, &scale,
                                     &damping, &factored, &pi))
        return NULL;
    PyArrayObject *wG = pk_call_first(&c, wGo, "wG", PK_DTYPE_EXACT, 1), *wA;
    if (!wG) return pk_call_fail(&c);
    npy_intp out = PyArray_DIM(wG, 0), q = -1;
    if (!(wA = arg_vector(&c, wAo, "wA", &q)) || check_q(q, "wA") || check_damping(scale, damping, factored, pi))
        return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_kron_logdet(c.dtype, out, q - 1, PyArray_DATA(wG), PyArray_DATA(wA), scale, damping,
                                    factored ? PK_DAMP_FACTORED : PK_DAMP_EXACT, pi, &logdet));
    if (rc != PK_OK) return pk_call_raise(&c, rc, "kron_logdet");
    return pk_call_release(&c, PyFloat_FromDouble(logdet));
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
    int64_t ldb = 0;
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O:kron_to_dense", kwlist, &Go, &Ao, &Bo)) return NULL;
    npy_intp out, q = -1;
    PyArrayObject *G = pk_call_first_square(&c, Go, "G", PK_DTYPE_EXACT, &out), *A, *B;
    if (!G || !(A = pk_call_square(&c, Ao, "A", &q)) || check_q(q, "A")) return pk_call_fail(&c);
    const npy_intp p = out * q;
    if (Bo == Py_None) {
        npy_intp dims[2] = {p, p};
        B = pk_call_output(&c, 2, dims);
        ldb = p;
    } else {
        if (check_out(Bo, c.typenum, p, &ldb)) return pk_call_fail(&c);
        Py_INCREF(Bo);
        B = pk_call_hold(&c, (PyArrayObject *)Bo);
    }
    if (!B) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_kron_to_dense(c.dtype, out, q - 1, PyArray_DATA(G), PyArray_DATA(A), PyArray_DATA(B), ldb));
    return pk_call_return(&c, rc, "kron_to_dense", B);
}

PyMethodDef pk_kron_methods[] = {
    PK_KW_METHOD("sym_eigh", py_sym_eigh,
                 "sym_eigh(M) -> (w, Q)\n\nM = Q diag(w) Q^T for symmetric M (n, n) (lower triangle read); "
                 "w (n,) ascending, Q (n, n) with the eigenvectors as columns. LAPACK syevd."),
    PK_KW_METHOD("kron_matvec", py_kron_matvec,
                 "kron_matvec(G, A, V) -> R\n\nR = (G (x) A) V for one layer, G (out, out), A (q, q), "
                 "V (p,) or (p, m), p = out * q, in theta order (W row-major, then b)."),
    PK_KW_METHOD("kron_basis_apply", py_kron_basis_apply,
                 "kron_basis_apply(QG, QA, F, V) -> R\n\nR = (QG (x) QA) diag(vec F) (QG (x) QA)^T V in theta "
                 "order, F (out, in + 1)."),
    PK_KW_METHOD("ekfac_scales", py_ekfac_scales,
                 "ekfac_scales(QG, QA, U, A) -> S (out, in + 1)\n\nS = sum_n sum_c (QG^T u_nc)^2 "
                 "((QA^T [a_n; 1])^2)^T for U (n, r, out), A (n, in): EKFAC's eigenvalues."),
    PK_KW_METHOD("kron_eig_apply", py_kron_eig_apply,
                 "kron_eig_apply(wG, QG, wA, QA, V, *, scale=1.0, damping=0.0, factored=False, pi=1.0, "
                 "power=-1.0) -> R\n\nR = (damped G (x) A)^power V from the eigendecompositions of G and A; "
                 "power in {1, -1, 0.5, -0.5}. Damped eigenvalues: scale*lg*la + damping, or "
                 "(scale*lg + sqrt(damping)/pi)(la + sqrt(damping)*pi) when factored."),
    PK_KW_METHOD("kron_logdet", py_kron_logdet,
                 "kron_logdet(wG, wA, *, scale=1.0, damping=0.0, factored=False, pi=1.0) -> float\n\n"
                 "Sum of the logs of the damped eigenvalues (see kron_eig_apply)."),
    PK_KW_METHOD("kron_to_dense", py_kron_to_dense,
                 "kron_to_dense(G, A, out=None) -> B\n\nB (p, p) = G (x) A in theta order. `out` may be a "
                 "writeable block view of a larger matrix with contiguous rows; it is filled and returned."),
    {NULL, NULL, 0, NULL},
};
