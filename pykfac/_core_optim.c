/* _core_optim.c: wrappers of the optimiser kernels (csrc/pk_optim.h):
 * K-FAC's damped block-diagonal / block-tridiagonal inverse, and the SGD and
 * Adam updates (in place on the caller's parameter and state arrays). */
#include "_core.h"

#define OPT_MAX_LAYERS PK_MAX_LIST

/* The lists kfac_inverse and kfac_apply hold: the statistics A, G (and the
 * cross-layer A_cross, G_cross), and the inverse's KA, sA, KG, sG (and PA, PG). */
typedef struct {
    pk_arrlist_t A, G, Ac, Gc, KA, sA, KG, sG, PA, PG;
} kfac_lists_t;

static void kfac_lists_release(kfac_lists_t *k)
{
    pk_arrlist_t *all[] = {&k->A, &k->G, &k->Ac, &k->Gc, &k->KA, &k->sA, &k->KG, &k->sG, &k->PA, &k->PG};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pk_arrlist_release(all[i]);
}

/* Item l of seq as a square matrix (of order n if n >= 0) of order >= min,
 * appended to al; `order` names the bound in the message ("out >= 1"). */
static PyArrayObject *square_item(pk_arrlist_t *al, PyObject *seq, const char *name, Py_ssize_t l, int typenum,
                                  npy_intp n, npy_intp min, const char *order)
{
    npy_intp shape[2] = {n, n};
    PyArrayObject *a = pk_seq_item(seq, name, l, typenum, 2, shape);
    if (pk_arrlist_push(al, a)) return NULL;
    if (PyArray_DIM(a, 0) != PyArray_DIM(a, 1) || PyArray_DIM(a, 0) < min) {
        PyErr_Format(PyExc_ValueError, "%s[%zd]: expected a square matrix of order %s, got shape (%ld, %ld)", name,
                     l, order, (long)PyArray_DIM(a, 0), (long)PyArray_DIM(a, 1));
        return NULL;
    }
    return a;
}

/* Read the layer widths from the diagonal factors: square A[l] of order
 * sizes[l] + 1 >= 2 and square G[l] of order sizes[l+1] (G[l] must match
 * A[l+1]). Fills al_A, al_G and sizes[0..L]. */
static int parse_factors(PyObject *Ao, PyObject *Go, const char *nA, const char *nG, int typenum,
                         pk_arrlist_t *al_A, pk_arrlist_t *al_G, int64_t *sizes, int *L_out)
{
    Py_ssize_t L = pk_seq_len(Ao, nA, -1);
    if (L < 0) return -1;
    if (pk_seq_len(Go, nG, L) < 0) return -1;
    for (Py_ssize_t l = 0; l < L; l++) {
        PyArrayObject *a = square_item(al_A, Ao, nA, l, typenum, -1, 2, "in + 1 >= 2");
        if (!a) return -1;
        sizes[l] = (int64_t)PyArray_DIM(a, 0) - 1;
    }
    for (Py_ssize_t l = 0; l < L; l++) {
        npy_intp out = l + 1 < L ? (npy_intp)sizes[l + 1] : -1;
        if (!square_item(al_G, Go, nG, l, typenum, out, 1, "out >= 1")) return -1;
    }
    sizes[L] = (int64_t)PyArray_DIM(al_G->a[L - 1], 0);
    *L_out = (int)L;
    return 0;
}

/* L - 1 rectangular coupling matrices: name[l] of shape (rows(l), cols(l)). */
static int parse_cross(PyObject *seq, const char *name, int L, int typenum, const int64_t *sizes, int is_A,
                       pk_arrlist_t *al)
{
    if (pk_seq_len(seq, name, L - 1) < 0) return -1;
    for (int l = 0; l + 1 < L; l++) {
        npy_intp shape[2];
        shape[0] = is_A ? (npy_intp)sizes[l] + 1 : (npy_intp)sizes[l + 1];
        shape[1] = is_A ? (npy_intp)sizes[l + 1] + 1 : (npy_intp)sizes[l + 2];
        if (pk_arrlist_push(al, pk_seq_item(seq, name, l, typenum, 2, shape))) return -1;
    }
    return 0;
}

/* The optional cross-layer lists of A and G: both (block-tridiagonal) or
 * neither (None, None: block-diagonal). */
static int parse_cross_pair(PyObject *Ao, PyObject *Go, const char *nA, const char *nG, int L, int typenum,
                            const int64_t *sizes, pk_arrlist_t *al_A, pk_arrlist_t *al_G)
{
    if (Ao == Py_None && Go == Py_None) return 0;
    if (Ao == Py_None || Go == Py_None) {
        PyErr_Format(PyExc_ValueError, "%s, %s: pass both (block-tridiagonal) or neither (block-diagonal)", nA, nG);
        return -1;
    }
    if (parse_cross(Ao, nA, L, typenum, sizes, 1, al_A) < 0 || parse_cross(Go, nG, L, typenum, sizes, 0, al_G) < 0)
        return -1;
    return 0;
}

static PyObject *list_of(pk_arrlist_t *al)
{
    PyObject *lst = PyList_New(al->n);
    if (!lst) return NULL;
    for (int i = 0; i < al->n; i++) {
        Py_INCREF(al->a[i]);
        PyList_SET_ITEM(lst, i, (PyObject *)al->a[i]);
    }
    return lst;
}

static int new_into(pk_arrlist_t *al, int nd, npy_intp d0, npy_intp d1, int typenum)
{
    npy_intp dims[2] = {d0, d1};
    return pk_arrlist_push(al, (PyArrayObject *)PyArray_ZEROS(nd, dims, typenum, 0));
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
    kfac_lists_t k = {0};
    int64_t sizes[OPT_MAX_LAYERS + 1];
    double pi[OPT_MAX_LAYERS];
    int L = 0, rc;
    const int typenum = pk_seq_typenum(Ao);
    const int cross = Aco != Py_None || Gco != Py_None;
    if (parse_factors(Ao, Go, "A", "G", typenum, &k.A, &k.G, sizes, &L) < 0) goto out;
    if (parse_cross_pair(Aco, Gco, "A_cross", "G_cross", L, typenum, sizes, &k.Ac, &k.Gc) < 0) goto out;
    if (!isfinite(gamma) || gamma < 0.0) {
        PyErr_Format(PyExc_ValueError, "gamma: expected a finite number >= 0, got %s", pk_numstr(gamma).s);
        goto out;
    }
    if (pk_seq_len(pio, "pi", L) < 0) goto out;
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
        if (new_into(&k.KA, 2, q, q, typenum) || new_into(&k.sA, 1, q, 0, typenum) ||
            new_into(&k.KG, 2, out, out, typenum) || new_into(&k.sG, 1, out, 0, typenum))
            goto out;
        if (cross && l + 1 < L &&
            (new_into(&k.PA, 2, q, (npy_intp)sizes[l + 1] + 1, typenum) ||
             new_into(&k.PG, 2, out, (npy_intp)sizes[l + 2], typenum)))
            goto out;
    }
    PK_RUN_NOGIL(rc, pk_kfac_inverse(pk_dtype_of(typenum), L, sizes, pk_arrlist_data(&k.A), pk_arrlist_data(&k.G),
                                     cross ? pk_arrlist_data(&k.Ac) : NULL, cross ? pk_arrlist_data(&k.Gc) : NULL, gamma,
                                     pi, k.KA.p, k.sA.p, k.KG.p, k.sG.p, cross ? k.PA.p : NULL,
                                     cross ? k.PG.p : NULL));
    if (rc == PK_ERR_SINGULAR) {
        PyErr_Format(pk_LinAlgError,
                     "kfac_inverse: the damped K-FAC curvature is singular (a damped factor has an "
                     "eigenvalue at roundoff level, or a block-tridiagonal conditional covariance is not "
                     "positive definite); use a larger damping (gamma = %s)", pk_numstr(gamma).s);
        goto out;
    }
    if (rc) {
        pk_raise(rc, "kfac_inverse");
        goto out;
    }
    {
        PyObject *lKA = list_of(&k.KA), *lsA = list_of(&k.sA), *lKG = list_of(&k.KG), *lsG = list_of(&k.sG);
        PyObject *lPA = cross ? list_of(&k.PA) : (Py_INCREF(Py_None), Py_None);
        PyObject *lPG = cross ? list_of(&k.PG) : (Py_INCREF(Py_None), Py_None);
        if (lKA && lsA && lKG && lsG && lPA && lPG) result = PyTuple_Pack(6, lKA, lsA, lKG, lsG, lPA, lPG);
        Py_XDECREF(lKA);
        Py_XDECREF(lsA);
        Py_XDECREF(lKG);
        Py_XDECREF(lsG);
        Py_XDECREF(lPA);
        Py_XDECREF(lPG);
    }
out:
    kfac_lists_release(&k);
    return result;
}

/* kfac_apply(KA, sA, KG, sG, PA, PG, V) -> R = F^-1 V */
static PyObject *py_kfac_apply(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"KA", "sA", "KG", "sG", "PA", "PG", "V", NULL};
    PyObject *KAo, *sAo, *KGo, *sGo, *PAo, *PGo, *Vo, *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOO:kfac_apply", kwlist, &KAo, &sAo, &KGo, &sGo,
                                     &PAo, &PGo, &Vo))
        return NULL;
    kfac_lists_t k = {0};
    PyArrayObject *V, *R;
    int64_t sizes[OPT_MAX_LAYERS + 1];
    int L = 0, rc;
    const int typenum = pk_seq_typenum(KAo);
    const int cross = PAo != Py_None || PGo != Py_None;
    pk_call_t c;
    pk_call_init(&c, typenum);
    /* KA, KG have the shapes of A, G: same width bookkeeping. */
    if (parse_factors(KAo, KGo, "KA", "KG", typenum, &k.KA, &k.KG, sizes, &L) < 0) goto out;
    if (pk_seq_len(sAo, "sA", L) < 0 || pk_seq_len(sGo, "sG", L) < 0) goto out;
    for (int l = 0; l < L; l++) {
        npy_intp qa[1] = {(npy_intp)sizes[l] + 1}, qg[1] = {(npy_intp)sizes[l + 1]};
        if (pk_arrlist_push(&k.sA, pk_seq_item(sAo, "sA", l, typenum, 1, qa)) ||
            pk_arrlist_push(&k.sG, pk_seq_item(sGo, "sG", l, typenum, 1, qg)))
            goto out;
    }
    if (parse_cross_pair(PAo, PGo, "PA", "PG", L, typenum, sizes, &k.PA, &k.PG) < 0) goto out;
    npy_intp D = 0;
    for (int l = 0; l < L; l++) D += (npy_intp)(sizes[l + 1] * (sizes[l] + 1));
    if (!(V = pk_call_input(&c, Vo, "V", 1, &D)) || !(R = pk_call_output(&c, 1, &D))) goto out;
    PK_RUN_NOGIL(rc, pk_kfac_apply(c.dtype, L, sizes, pk_arrlist_data(&k.KA), pk_arrlist_data(&k.sA), pk_arrlist_data(&k.KG),
                                   pk_arrlist_data(&k.sG), cross ? pk_arrlist_data(&k.PA) : NULL,
                                   cross ? pk_arrlist_data(&k.PG) : NULL, PyArray_DATA(V), PyArray_DATA(R)));
    result = pk_call_return(&c, rc, "kfac_apply", R);
out:
    kfac_lists_release(&k);
    return pk_call_release(&c, result);
}

/* ggn_gram(net, X, loss, V (D, m)) for a parsed net. */
static PyObject *ggn_gram_run(const pk_netarg_t *na, PyObject *Xo, PyObject *losso, PyObject *Vo)
{
    pk_loss_t loss;
    if (pk_parse_loss(losso, na->sizes[na->net.n_layers], &loss) < 0) return NULL;
    pk_call_t c;
    pk_call_init(&c, na->typenum);
    npy_intp xs[2] = {-1, (npy_intp)na->sizes[0]}, vs[2] = {(npy_intp)na->num_params, -1};
    PyArrayObject *X = pk_call_input(&c, Xo, "X", 2, xs), *V, *out;
    if (!X) return pk_call_fail(&c);
    if (PyArray_DIM(X, 0) == 0) {
        PyErr_SetString(PyExc_ValueError, "X: empty batch (N = 0); pass at least one sample");
        return pk_call_fail(&c);
    }
    if (!(V = pk_call_input(&c, Vo, "V", 2, vs))) return pk_call_fail(&c);
    npy_intp m = PyArray_DIM(V, 1), os[2] = {m, m};
    if (m < 1) {
        PyErr_SetString(PyExc_ValueError, "V: expected at least one column");
        return pk_call_fail(&c);
    }
    if (!(out = pk_call_hold(&c, (PyArrayObject *)PyArray_SimpleNew(2, os, NPY_FLOAT64)))) return pk_call_fail(&c);
    int rc;
    PK_RUN_NOGIL(rc, pk_ggn_gram(&na->net, loss, PyArray_DIM(X, 0), PyArray_DATA(X), m, PyArray_DATA(V),
                                 PyArray_DATA(out)));
    return pk_call_return(&c, rc, "ggn_gram", out);
}

/* ggn_gram(net, X, loss, V (D, m)) -> (m, m) float64 V^T G V (summed loss) */
static PyObject *py_ggn_gram(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"net", "X", "loss", "V", NULL};
    PyObject *neto, *Xo, *losso, *Vo;
    pk_netarg_t na;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO:ggn_gram", kwlist, &neto, &Xo, &losso, &Vo))
        return NULL;
    if (pk_netarg_parse(neto, &na) < 0) return NULL;
    PyObject *result = ggn_gram_run(&na, Xo, losso, Vo);
    pk_netarg_release(&na);
    return result;
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
    pk_call_t c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOddpdp:sgd_update", kwlist, &th, &go, &bo, &lr,
                                     &momentum, &nesterov, &wd, &first))
        return NULL;
    if (check_inplace(th, "theta", &typenum, &n) || check_inplace(bo, "buf", &typenum, &n)) return NULL;
    if (!isfinite(lr) || !isfinite(momentum) || !isfinite(wd)) {
        PyErr_SetString(PyExc_ValueError, "lr, momentum, weight_decay: expected finite numbers");
        return NULL;
    }
    pk_call_init(&c, typenum);
    PyArrayObject *g = pk_call_input(&c, go, "grad", 1, &n);
    if (!g) return pk_call_fail(&c);
    PK_RUN_NOGIL(rc, pk_sgd_update(c.dtype, n, PyArray_DATA((PyArrayObject *)th), PyArray_DATA(g),
                                   PyArray_DATA((PyArrayObject *)bo), lr, momentum, nesterov, wd, first));
    return pk_call_return(&c, rc, "sgd_update", NULL);
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
    pk_call_t c;
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
    pk_call_init(&c, typenum);
    PyArrayObject *g = pk_call_input(&c, go, "grad", 1, &n);
    if (!g) return pk_call_fail(&c);
    PK_RUN_NOGIL(rc, pk_adam_update(c.dtype, n, PyArray_DATA((PyArrayObject *)th), PyArray_DATA(g),
                                    PyArray_DATA((PyArrayObject *)mo), PyArray_DATA((PyArrayObject *)vo),
                                    (int64_t)t, lr, b1, b2, eps, wd));
    return pk_call_return(&c, rc, "adam_update", NULL);
}

PyMethodDef pk_optim_methods[] = {
    PK_KW_METHOD("kfac_inverse", py_kfac_inverse,
                 "kfac_inverse(A, G, A_cross, G_cross, gamma, pi) -> (KA, sA, KG, sG, PA, PG)\n\n"
                 "The damped K-FAC inverse from the (normalised) statistics: A[l] (q_l, q_l), G[l] (out_l, out_l), "
                 "and A_cross[l] (q_l, q_{l+1}), G_cross[l] (out_l, out_{l+1}) for the block-tridiagonal "
                 "inverse (both None for the block-diagonal one; then PA, PG are None). Factored damping "
                 "G + gamma/pi[l] I, A + gamma*pi[l] I. See csrc/pk_optim.h."),
    PK_KW_METHOD("kfac_apply", py_kfac_apply,
                 "kfac_apply(KA, sA, KG, sG, PA, PG, V) -> R\n\nR (D,) = F^-1 V (theta order) from kfac_inverse's outputs."),
    PK_KW_METHOD("ggn_gram", py_ggn_gram,
                 "ggn_gram(net, X, loss, V) -> (m, m) float64\n\nV^T G V for the exact GGN G of the summed loss on X "
                 "(V of shape (D, m)), from forward-mode products only."),
    PK_KW_METHOD("sgd_update", py_sgd_update,
                 "sgd_update(theta, grad, buf, lr, momentum, nesterov, weight_decay, first)\n\n"
                 "SGD with (Nesterov) momentum, in place on theta and buf (torch.optim.SGD semantics)."),
    PK_KW_METHOD("adam_update", py_adam_update,
                 "adam_update(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay)\n\n"
                 "Adam step number t >= 1, in place on theta, m, v (torch.optim.Adam semantics)."),
    {NULL, NULL, 0, NULL},
};
