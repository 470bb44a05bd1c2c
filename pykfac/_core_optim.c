/* _core_optim.c: wrappers of the optimiser kernels (csrc/pk_optim.h):
 * K-FAC's damped block-diagonal / block-tridiagonal inverse, and the SGD and
 * Adam updates (in place on the caller's parameter and state arrays). */
#include "_core.h"

#define OPT_MAX_LAYERS 64

#define RUN_C(rc, call)          \
    do {                         \
        Py_BEGIN_ALLOW_THREADS;  \
        rc = (call);             \
        Py_END_ALLOW_THREADS;    \
    } while (0)

/* NPY_FLOAT32 if obj is a float32 array, else NPY_FLOAT64. */
static int typenum_of(PyObject *obj)
{
    return PyArray_Check(obj) && PyArray_TYPE((PyArrayObject *)obj) == NPY_FLOAT32 ? NPY_FLOAT32
                                                                                    : NPY_FLOAT64;
}

static pk_dtype_t pk_dt(int typenum) { return typenum == NPY_FLOAT32 ? PK_FLOAT32 : PK_FLOAT64; }

/* A list of arrays read from a sequence; holds new references. */
typedef struct {
    int n;
    PyArrayObject *a[OPT_MAX_LAYERS];
} arrlist_t;

static void arrlist_release(arrlist_t *al)
{
    for (int i = 0; i < al->n; i++) Py_CLEAR(al->a[i]);
    al->n = 0;
}

/* Length of a sequence argument that must hold `want` items (want < 0: 1..64). */
static Py_ssize_t seq_len(PyObject *seq, const char *name, Py_ssize_t want)
{
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a list of arrays, got %s", name, Py_TYPE(seq)->tp_name);
        return -1;
    }
    Py_ssize_t n = PySequence_Size(seq);
    if (want >= 0 && n != want) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd entries, got %zd", name, want, n);
        return -1;
    }
    if (want < 0 && (n < 1 || n > OPT_MAX_LAYERS)) {
        PyErr_Format(PyExc_ValueError, "%s: expected 1 to %d arrays (one per layer), got %zd", name,
                     OPT_MAX_LAYERS, n);
        return -1;
    }
    return n;
}

/* Item i of seq as a normalised ndim-D array of typenum with the given shape
 * (-1 = any); name printed as "name[i]". */
static PyArrayObject *item_array(PyObject *seq, const char *name, Py_ssize_t i, int typenum, int ndim,
                                 const npy_intp *shape)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s[%zd]", name, i);
    PyObject *item = PySequence_GetItem(seq, i);
    if (!item) return NULL;
    PyArrayObject *arr = pk_arg_array(item, buf, PK_ARG_REAL, typenum, ndim, shape, 1);
    Py_DECREF(item);
    return arr;
}

/* Read the layer widths from the diagonal factors: square A[l] of order
 * sizes[l] + 1 >= 2 and square G[l] of order sizes[l+1] (G[l] must match
 * A[l+1]). Fills al_A, al_G and sizes[0..L]. */
static int parse_factors(PyObject *Ao, PyObject *Go, const char *nA, const char *nG, int typenum,
                         arrlist_t *al_A, arrlist_t *al_G, int64_t *sizes, int *L_out)
{
    Py_ssize_t L = seq_len(Ao, nA, -1);
    if (L < 0) return -1;
    if (seq_len(Go, nG, L) < 0) return -1;
    for (Py_ssize_t l = 0; l < L; l++) {
        npy_intp shape[2] = {-1, -1};
        PyArrayObject *a = item_array(Ao, nA, l, typenum, 2, shape);
        if (!a) return -1;
        al_A->a[al_A->n++] = a;
        if (PyArray_DIM(a, 0) != PyArray_DIM(a, 1) || PyArray_DIM(a, 0) < 2) {
            PyErr_Format(PyExc_ValueError, "%s[%zd]: expected a square matrix of order in + 1 >= 2, got shape (%ld, %ld)",
                         nA, l, (long)PyArray_DIM(a, 0), (long)PyArray_DIM(a, 1));
            return -1;
        }
        sizes[l] = (int64_t)PyArray_DIM(a, 0) - 1;
    }
    for (Py_ssize_t l = 0; l < L; l++) {
        npy_intp shape[2] = {l + 1 < L ? (npy_intp)sizes[l + 1] : -1, l + 1 < L ? (npy_intp)sizes[l + 1] : -1};
        PyArrayObject *g = item_array(Go, nG, l, typenum, 2, shape);
        if (!g) return -1;
        al_G->a[al_G->n++] = g;
        if (PyArray_DIM(g, 0) != PyArray_DIM(g, 1) || PyArray_DIM(g, 0) < 1) {
            PyErr_Format(PyExc_ValueError, "%s[%zd]: expected a square matrix of order out >= 1, got shape (%ld, %ld)",
                         nG, l, (long)PyArray_DIM(g, 0), (long)PyArray_DIM(g, 1));
            return -1;
        }
    }
    sizes[L] = (int64_t)PyArray_DIM(al_G->a[L - 1], 0);
    *L_out = (int)L;
    return 0;
}

/* L - 1 rectangular coupling matrices: name[l] of shape (rows(l), cols(l)). */
static int parse_cross(PyObject *seq, const char *name, int L, int typenum, const int64_t *sizes, int is_A,
                       arrlist_t *al)
{
    if (seq_len(seq, name, L - 1) < 0) return -1;
    for (int l = 0; l + 1 < L; l++) {
        npy_intp shape[2];
        shape[0] = is_A ? (npy_intp)sizes[l] + 1 : (npy_intp)sizes[l + 1];
        shape[1] = is_A ? (npy_intp)sizes[l + 1] + 1 : (npy_intp)sizes[l + 2];
        PyArrayObject *a = item_array(seq, name, l, typenum, 2, shape);
        if (!a) return -1;
        al->a[al->n++] = a;
    }
    return 0;
}

static PyObject *list_of(arrlist_t *al)
{
    PyObject *lst = PyList_New(al->n);
    if (!lst) return NULL;
    for (int i = 0; i < al->n; i++) {
        Py_INCREF(al->a[i]);
        PyList_SET_ITEM(lst, i, (PyObject *)al->a[i]);
    }
    return lst;
}

static int new_into(arrlist_t *al, int nd, npy_intp d0, npy_intp d1, int typenum)
{
    npy_intp dims[2] = {d0, d1};
    PyArrayObject *a = (PyArrayObject *)PyArray_ZEROS(nd, dims, typenum, 0);
    if (!a) return -1;
    al->a[al->n++] = a;
    return 0;
}

static void data_ptrs(const arrlist_t *al, void **p)
{
    for (int i = 0; i < al->n; i++) p[i] = PyArray_DATA(al->a[i]);
}

/* kfac_inverse(A, G, A_cross, G_cross, gamma, pi) -> (KA, sA, KG, sG, PA, PG) */
static PyObject *py_kfac_inverse(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"A", "G", "A_cross", "G_cross", "gamma", "pi", NULL};
    PyObject *Ao, *Go, *Aco, *Gco, *pio, *result = NULL;
    double gamma;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOdO:kfac_inverse", kwlist, &Ao, &Go, &Aco, &Gco,
                                     &gamma, &pio))
        return NULL;
    arrlist_t A = {0}, G = {0}, Ac = {0}, Gc = {0}, KA = {0}, sA = {0}, KG = {0}, sG = {0}, PA = {0}, PG = {0};
    int64_t sizes[OPT_MAX_LAYERS + 1];
    double pi[OPT_MAX_LAYERS];
    int L = 0, rc;
    const int typenum = PyList_Check(Ao) && PyList_Size(Ao) > 0 ? typenum_of(PyList_GET_ITEM(Ao, 0))
                        : PyTuple_Check(Ao) && PyTuple_Size(Ao) > 0 ? typenum_of(PyTuple_GET_ITEM(Ao, 0))
                                                                    : NPY_FLOAT64;
    const int cross = Aco != Py_None || Gco != Py_None;
    if (parse_factors(Ao, Go, "A", "G", typenum, &A, &G, sizes, &L) < 0) goto out;
    if (cross && (Aco == Py_None || Gco == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "A_cross, G_cross: pass both (block-tridiagonal) or neither (block-diagonal)");
        goto out;
    }
    if (cross && (parse_cross(Aco, "A_cross", L, typenum, sizes, 1, &Ac) < 0 ||
                  parse_cross(Gco, "G_cross", L, typenum, sizes, 0, &Gc) < 0))
        goto out;
    if (!isfinite(gamma) || gamma < 0.0) {
        char num[32];
        snprintf(num, sizeof num, "%g", gamma);
        PyErr_Format(PyExc_ValueError, "gamma: expected a finite number >= 0, got %s", num);
        goto out;
    }
    if (seq_len(pio, "pi", L) < 0) goto out;
    for (int l = 0; l < L; l++) {
        PyObject *it = PySequence_GetItem(pio, l);
        if (!it) goto out;
        pi[l] = PyFloat_AsDouble(it);
        Py_DECREF(it);
        if (pi[l] == -1.0 && PyErr_Occurred()) goto out;
        if (!isfinite(pi[l]) || !(pi[l] > 0.0)) {
            PyErr_Format(PyExc_ValueError, "pi[%d]: expected a finite number > 0", l);
            goto out;
        }
    }
    for (int l = 0; l < L; l++) {
        const npy_intp out = (npy_intp)sizes[l + 1], q = (npy_intp)sizes[l] + 1;
        if (new_into(&KA, 2, q, q, typenum) || new_into(&sA, 1, q, 0, typenum) ||
            new_into(&KG, 2, out, out, typenum) || new_into(&sG, 1, out, 0, typenum))
            goto out;
        if (cross && l + 1 < L &&
            (new_into(&PA, 2, q, (npy_intp)sizes[l + 1] + 1, typenum) ||
             new_into(&PG, 2, out, (npy_intp)sizes[l + 2], typenum)))
            goto out;
    }
    {
        void *pA[OPT_MAX_LAYERS], *pG[OPT_MAX_LAYERS], *pAc[OPT_MAX_LAYERS], *pGc[OPT_MAX_LAYERS];
        void *pKA[OPT_MAX_LAYERS], *psA[OPT_MAX_LAYERS], *pKG[OPT_MAX_LAYERS], *psG[OPT_MAX_LAYERS];
        void *pPA[OPT_MAX_LAYERS], *pPG[OPT_MAX_LAYERS];
        data_ptrs(&A, pA);
        data_ptrs(&G, pG);
        data_ptrs(&Ac, pAc);
        data_ptrs(&Gc, pGc);
        data_ptrs(&KA, pKA);
        data_ptrs(&sA, psA);
        data_ptrs(&KG, pKG);
        data_ptrs(&sG, psG);
        data_ptrs(&PA, pPA);
        data_ptrs(&PG, pPG);
        RUN_C(rc, pk_kfac_inverse(pk_dt(typenum), L, sizes, (const void *const *)pA, (const void *const *)pG,
                                  cross ? (const void *const *)pAc : NULL, cross ? (const void *const *)pGc : NULL,
                                  gamma, pi, pKA, psA, pKG, psG, cross ? pPA : NULL, cross ? pPG : NULL));
    }
    if (rc == PK_ERR_SINGULAR) {
        char num[32];
        snprintf(num, sizeof num, "%g", gamma);
        PyErr_Format(pk_LinAlgError,
                     "kfac_inverse: the damped K-FAC curvature is singular (a damped factor has an "
                     "eigenvalue at roundoff level, or a block-tridiagonal conditional covariance is not "
                     "positive definite); use a larger damping (gamma = %s)", num);
        goto out;
    }
    if (rc) {
        pk_raise(rc, "kfac_inverse");
        goto out;
    }
    {
        PyObject *lKA = list_of(&KA), *lsA = list_of(&sA), *lKG = list_of(&KG), *lsG = list_of(&sG);
        PyObject *lPA = cross ? list_of(&PA) : (Py_INCREF(Py_None), Py_None);
        PyObject *lPG = cross ? list_of(&PG) : (Py_INCREF(Py_None), Py_None);
        if (lKA && lsA && lKG && lsG && lPA && lPG) result = PyTuple_Pack(6, lKA, lsA, lKG, lsG, lPA, lPG);
        Py_XDECREF(lKA);
        Py_XDECREF(lsA);
        Py_XDECREF(lKG);
        Py_XDECREF(lsG);
        Py_XDECREF(lPA);
        Py_XDECREF(lPG);
    }
out:
    arrlist_release(&A);
    arrlist_release(&G);
    arrlist_release(&Ac);
    arrlist_release(&Gc);
    arrlist_release(&KA);
    arrlist_release(&sA);
    arrlist_release(&KG);
    arrlist_release(&sG);
    arrlist_release(&PA);
    arrlist_release(&PG);
    return result;
}

/* kfac_apply(KA, sA, KG, sG, PA, PG, V) -> R = F^-1 V */
static PyObject *py_kfac_apply(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"KA", "sA", "KG", "sG", "PA", "PG", "V", NULL};
    PyObject *KAo, *sAo, *KGo, *sGo, *PAo, *PGo, *Vo;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOO:kfac_apply", kwlist, &KAo, &sAo, &KGo, &sGo,
                                     &PAo, &PGo, &Vo))
        return NULL;
    arrlist_t KA = {0}, sA = {0}, KG = {0}, sG = {0}, PA = {0}, PG = {0};
    PyArrayObject *V = NULL, *R = NULL;
    int64_t sizes[OPT_MAX_LAYERS + 1];
    int L = 0, rc;
    const int typenum = PyList_Check(KAo) && PyList_Size(KAo) > 0 ? typenum_of(PyList_GET_ITEM(KAo, 0))
                                                                    : NPY_FLOAT64;
    const int cross = PAo != Py_None || PGo != Py_None;
    /* KA, KG have the shapes of A, G: same width bookkeeping. */
    if (parse_factors(KAo, KGo, "KA", "KG", typenum, &KA, &KG, sizes, &L) < 0) goto fail;
    if (seq_len(sAo, "sA", L) < 0 || seq_len(sGo, "sG", L) < 0) goto fail;
    for (int l = 0; l < L; l++) {
        npy_intp qa[1] = {(npy_intp)sizes[l] + 1}, qg[1] = {(npy_intp)sizes[l + 1]};
        PyArrayObject *a = item_array(sAo, "sA", l, typenum, 1, qa);
        if (!a) goto fail;
        sA.a[sA.n++] = a;
        a = item_array(sGo, "sG", l, typenum, 1, qg);
        if (!a) goto fail;
        sG.a[sG.n++] = a;
    }
    if (cross && (PAo == Py_None || PGo == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "PA, PG: pass both (block-tridiagonal) or neither (block-diagonal)");
        goto fail;
    }
    if (cross && (parse_cross(PAo, "PA", L, typenum, sizes, 1, &PA) < 0 ||
                  parse_cross(PGo, "PG", L, typenum, sizes, 0, &PG) < 0))
        goto fail;
    npy_intp D = 0;
    for (int l = 0; l < L; l++) D += (npy_intp)(sizes[l + 1] * (sizes[l] + 1));
    npy_intp vshape[1] = {D};
    if (!(V = pk_arg_array(Vo, "V", PK_ARG_REAL, typenum, 1, vshape, 1))) goto fail;
    if (!(R = (PyArrayObject *)PyArray_SimpleNew(1, vshape, typenum))) goto fail;
    {
        void *pKA[OPT_MAX_LAYERS], *psA[OPT_MAX_LAYERS], *pKG[OPT_MAX_LAYERS], *psG[OPT_MAX_LAYERS];
        void *pPA[OPT_MAX_LAYERS], *pPG[OPT_MAX_LAYERS];
        data_ptrs(&KA, pKA);
        data_ptrs(&sA, psA);
        data_ptrs(&KG, pKG);
        data_ptrs(&sG, psG);
        data_ptrs(&PA, pPA);
        data_ptrs(&PG, pPG);
        RUN_C(rc, pk_kfac_apply(pk_dt(typenum), L, sizes, (const void *const *)pKA, (const void *const *)psA,
                                (const void *const *)pKG, (const void *const *)psG,
                                cross ? (const void *const *)pPA : NULL, cross ? (const void *const *)pPG : NULL,
                                PyArray_DATA(V), PyArray_DATA(R)));
    }
    if (rc) {
        pk_raise(rc, "kfac_apply");
        goto fail;
    }
    arrlist_release(&KA);
    arrlist_release(&sA);
    arrlist_release(&KG);
    arrlist_release(&sG);
    arrlist_release(&PA);
    arrlist_release(&PG);
    Py_DECREF(V);
    return (PyObject *)R;
fail:
    arrlist_release(&KA);
    arrlist_release(&sA);
    arrlist_release(&KG);
    arrlist_release(&sG);
    arrlist_release(&PA);
    arrlist_release(&PG);
    Py_XDECREF(V);
    Py_XDECREF(R);
    return NULL;
}

/* ggn_gram(net, X, loss, V (D, m)) -> (m, m) float64 V^T G V (summed loss) */
static PyObject *py_ggn_gram(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"net", "X", "loss", "V", NULL};
    PyObject *neto, *Xo, *losso, *Vo;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO:ggn_gram", kwlist, &neto, &Xo, &losso, &Vo))
        return NULL;
    pk_netarg_t na;
    PyArrayObject *X = NULL, *V = NULL, *out = NULL;
    pk_loss_t loss;
    int rc;
    if (pk_netarg_parse(neto, &na) < 0) return NULL;
    const int L = na.net.n_layers;
    if (pk_parse_loss(losso, na.sizes[L], &loss) < 0) goto fail;
    npy_intp xs[2] = {-1, (npy_intp)na.sizes[0]}, vs[2] = {(npy_intp)na.num_params, -1};
    if (!(X = pk_arg_array(Xo, "X", PK_ARG_REAL, na.typenum, 2, xs, 1))) goto fail;
    if (PyArray_DIM(X, 0) == 0) {
        PyErr_SetString(PyExc_ValueError, "X: empty batch (N = 0); pass at least one sample");
        goto fail;
    }
    if (!(V = pk_arg_array(Vo, "V", PK_ARG_REAL, na.typenum, 2, vs, 1))) goto fail;
    if (PyArray_DIM(V, 1) < 1) {
        PyErr_SetString(PyExc_ValueError, "V: expected at least one column");
        goto fail;
    }
    npy_intp os[2] = {PyArray_DIM(V, 1), PyArray_DIM(V, 1)};
    if (!(out = (PyArrayObject *)PyArray_SimpleNew(2, os, NPY_FLOAT64))) goto fail;
    RUN_C(rc, pk_ggn_gram(&na.net, loss, PyArray_DIM(X, 0), PyArray_DATA(X), PyArray_DIM(V, 1),
                          PyArray_DATA(V), PyArray_DATA(out)));
    if (rc) {
        pk_raise(rc, "ggn_gram");
        goto fail;
    }
    pk_netarg_release(&na);
    Py_DECREF(X);
    Py_DECREF(V);
    return (PyObject *)out;
fail:
    pk_netarg_release(&na);
    Py_XDECREF(X);
    Py_XDECREF(V);
    Py_XDECREF(out);
    return NULL;
}

/* An array updated in place: 1-D, float32/float64 (= *typenum if set),
 * C-contiguous, aligned, writeable, of length *n (or any if *n < 0, then set). */
static int check_inplace(PyObject *obj, const char *name, int *typenum, npy_intp *n)
{
    PyArrayObject *a = (PyArrayObject *)obj;
    if (!PyArray_Check(obj) || PyArray_NDIM(a) != 1 ||
        !(PyArray_TYPE(a) == NPY_FLOAT32 || PyArray_TYPE(a) == NPY_FLOAT64) ||
        (*typenum >= 0 && PyArray_TYPE(a) != *typenum) || !PyArray_IS_C_CONTIGUOUS(a) ||
        !PyArray_ISALIGNED(a) || !PyArray_ISWRITEABLE(a) || (*n >= 0 && PyArray_DIM(a, 0) != *n)) {
        if (*n >= 0)
            PyErr_Format(PyExc_ValueError, "%s: expected a writeable contiguous 1-D %s array of length %ld",
                         name, *typenum == NPY_FLOAT32 ? "float32" : "float64", (long)*n);
        else
            PyErr_Format(PyExc_ValueError, "%s: expected a writeable contiguous 1-D float32 or float64 array", name);
        return -1;
    }
    *typenum = PyArray_TYPE(a);
    *n = PyArray_DIM(a, 0);
    return 0;
}

/* sgd_update(theta, grad, buf, lr, momentum, nesterov, weight_decay, first): in place */
static PyObject *py_sgd_update(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"theta", "grad", "buf", "lr", "momentum", "nesterov", "weight_decay", "first", NULL};
    PyObject *th, *go, *bo;
    double lr, momentum, wd;
    int nesterov, first, typenum = -1, rc;
    npy_intp n = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOddpdp:sgd_update", kwlist, &th, &go, &bo, &lr,
                                     &momentum, &nesterov, &wd, &first))
        return NULL;
    if (check_inplace(th, "theta", &typenum, &n) || check_inplace(bo, "buf", &typenum, &n)) return NULL;
    if (!isfinite(lr) || !isfinite(momentum) || !isfinite(wd)) {
        PyErr_SetString(PyExc_ValueError, "lr, momentum, weight_decay: expected finite numbers");
        return NULL;
    }
    npy_intp shape[1] = {n};
    PyArrayObject *g = pk_arg_array(go, "grad", PK_ARG_REAL, typenum, 1, shape, 1);
    if (!g) return NULL;
    RUN_C(rc, pk_sgd_update(pk_dt(typenum), n, PyArray_DATA((PyArrayObject *)th), PyArray_DATA(g),
                            PyArray_DATA((PyArrayObject *)bo), lr, momentum, nesterov, wd, first));
    Py_DECREF(g);
    if (rc) return pk_raise(rc, "sgd_update");
    Py_RETURN_NONE;
}

/* adam_update(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay): in place */
static PyObject *py_adam_update(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"theta", "grad", "m", "v", "t", "lr", "beta1", "beta2", "eps", "weight_decay", NULL};
    PyObject *th, *go, *mo, *vo;
    long long t;
    double lr, b1, b2, eps, wd;
    int typenum = -1, rc;
    npy_intp n = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOLddddd:adam_update", kwlist, &th, &go, &mo, &vo, &t,
                                     &lr, &b1, &b2, &eps, &wd))
        return NULL;
    if (check_inplace(th, "theta", &typenum, &n) || check_inplace(mo, "m", &typenum, &n) ||
        check_inplace(vo, "v", &typenum, &n))
        return NULL;
    if (t < 1) {
        PyErr_Format(PyExc_ValueError, "t: expected the step number >= 1, got %lld", t);
        return NULL;
    }
    if (!isfinite(lr) || !isfinite(wd) || !(eps >= 0.0 && isfinite(eps)) || !(b1 >= 0.0 && b1 < 1.0) ||
        !(b2 >= 0.0 && b2 < 1.0)) {
        PyErr_SetString(PyExc_ValueError,
                        "lr, weight_decay: expected finite numbers; eps >= 0; beta1, beta2 in [0, 1)");
        return NULL;
    }
    npy_intp shape[1] = {n};
    PyArrayObject *g = pk_arg_array(go, "grad", PK_ARG_REAL, typenum, 1, shape, 1);
    if (!g) return NULL;
    RUN_C(rc, pk_adam_update(pk_dt(typenum), n, PyArray_DATA((PyArrayObject *)th), PyArray_DATA(g),
                             PyArray_DATA((PyArrayObject *)mo), PyArray_DATA((PyArrayObject *)vo),
                             (int64_t)t, lr, b1, b2, eps, wd));
    Py_DECREF(g);
    if (rc) return pk_raise(rc, "adam_update");
    Py_RETURN_NONE;
}

#define KW (METH_VARARGS | METH_KEYWORDS)
#define FN(f) ((PyCFunction)(void (*)(void))(f))

PyMethodDef pk_optim_methods[] = {
    {"kfac_inverse", FN(py_kfac_inverse), KW,
     "kfac_inverse(A, G, A_cross, G_cross, gamma, pi) -> (KA, sA, KG, sG, PA, PG)\n\n"
     "The damped K-FAC inverse from the (normalised) statistics: A[l] (q_l, q_l), G[l] (out_l, out_l), "
     "and A_cross[l] (q_l, q_{l+1}), G_cross[l] (out_l, out_{l+1}) for the block-tridiagonal "
     "inverse (both None for the block-diagonal one; then PA, PG are None). Factored damping "
     "G + gamma/pi[l] I, A + gamma*pi[l] I. See csrc/pk_optim.h."},
    {"kfac_apply", FN(py_kfac_apply), KW,
     "kfac_apply(KA, sA, KG, sG, PA, PG, V) -> R\n\nR (D,) = F^-1 V (theta order) from kfac_inverse's outputs."},
    {"ggn_gram", FN(py_ggn_gram), KW,
     "ggn_gram(net, X, loss, V) -> (m, m) float64\n\nV^T G V for the exact GGN G of the summed loss on X "
     "(V of shape (D, m)), from forward-mode products only."},
    {"sgd_update", FN(py_sgd_update), KW,
     "sgd_update(theta, grad, buf, lr, momentum, nesterov, weight_decay, first)\n\n"
     "SGD with (Nesterov) momentum, in place on theta and buf (torch.optim.SGD semantics)."},
    {"adam_update", FN(py_adam_update), KW,
     "adam_update(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay)\n\n"
     "Adam step number t >= 1, in place on theta, m, v (torch.optim.Adam semantics)."},
    {NULL, NULL, 0, NULL},
};
