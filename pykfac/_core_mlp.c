/* _core_mlp.c: wrappers of csrc/pk_mlp.h (networks, losses, curvature). */
#include "_core.h"

#include <math.h>

/* Scratch (in elements) the kernels of csrc/mlp_impl.inc allocate, computed
 * in double so nothing overflows; mirrors rows_for, cache_row_elems and
 * rop_row_elems there (an upper bound: the chunk buffers are sized for the
 * largest chunk). */
typedef struct {
    double n, K, D, maxw, sum_out, sum_hidden, hidden_sq;
} pk_dims;

static pk_dims dims_of(const pk_netarg_t *net, npy_intp n)
{
    pk_dims d = {(double)n, 0, (double)net->num_params, 0, 0, 0, 0};
    int L = net->net.n_layers;
    d.K = (double)net->sizes[L];
    for (int l = 0; l <= L; l++)
        if ((double)net->sizes[l] > d.maxw) d.maxw = (double)net->sizes[l];
    for (int l = 0; l < L; l++) {
        double w = (double)net->sizes[l + 1];
        d.sum_out += w;
        if (l < L - 1) d.sum_hidden += w, d.hidden_sq += w * w;
    }
    return d;
}

#define PK_GUARD_CHUNK_ELEMS 2097152.0 /* mlp.c: PK_CHUNK_ELEMS */
#define PK_GUARD_CHUNK_ROWS 8192.0 /* mlp.c: PK_MAX_CHUNK_ROWS */

/* rows_for(per_row, n) * per_row: the chunk buffers' size. */
static double chunk_elems(const pk_dims *d, double per_row)
{
    double rows = floor(PK_GUARD_CHUNK_ELEMS / (per_row > 0 ? per_row : 1));
    if (rows > PK_GUARD_CHUNK_ROWS) rows = PK_GUARD_CHUNK_ROWS;
    if (rows < 1) rows = 1;
    if (rows > d->n) rows = d->n;
    return rows * per_row;
}

static double cache_row(const pk_dims *d, int want_d2) { return d->sum_out + (2 + want_d2) * d->sum_hidden; }

static double rop_row(const pk_dims *d, double M)
{
    return M * (d->sum_out + d->sum_hidden + 2 * d->maxw) + 3 * d->maxw + d->K;
}

static double stack_cols(double m) { return m < 64 ? m : 64; } /* mlp.c: PK_MAX_STACK */

static double itemsize(int typenum) { return typenum == NPY_FLOAT32 ? 4.0 : 8.0; }

/* Arguments most kernels share: the network, X (N x sizes[0]) and optionally
 * labels y with a loss. */
typedef struct {
    pk_netarg_t net;
    PyArrayObject *X;
    PyArrayObject *y;
    pk_loss_t loss;
    npy_intp n;
    int64_t K;
} pk_common_args;

static void common_release(pk_common_args *a)
{
    pk_netarg_release(&a->net);
    Py_CLEAR(a->X);
    Py_CLEAR(a->y);
}

/* Parse net and X (and y/loss when y_obj is not NULL). 0 or -1 with an exception. */
static int common_parse(PyObject *net, PyObject *X, PyObject *y_obj, PyObject *loss_obj,
                        pk_common_args *a)
{
    memset(a, 0, sizeof *a);
    if (pk_netarg_parse(net, &a->net) < 0) return -1;
    a->K = a->net.sizes[a->net.net.n_layers];
    npy_intp xshape[2] = {-1, (npy_intp)a->net.sizes[0]};
    a->X = pk_arg_array(X, "X", PK_ARG_REAL, a->net.typenum, 2, xshape, 1);
    if (!a->X) goto fail;
    a->n = PyArray_DIM(a->X, 0);
    if (a->n == 0) {
        PyErr_SetString(PyExc_ValueError, "X: empty batch (N = 0); pass at least one sample");
        goto fail;
    }
    if (loss_obj) {
        if (pk_parse_loss(loss_obj, a->K, &a->loss) < 0) goto fail;
        if (y_obj) {
            a->y = pk_arg_labels(y_obj, a->loss, a->n, a->K, a->net.typenum);
            if (!a->y) goto fail;
        }
    }
    return 0;
fail:
    common_release(a);
    return -1;
}

static PyArrayObject *new_array(int nd, npy_intp *dims, int typenum)
{
    return (PyArrayObject *)PyArray_SimpleNew(nd, dims, typenum);
}

/* Bytes of an output of shape dims and dtype typenum (in double). */
static double array_bytes(int nd, const npy_intp *dims, int typenum)
{
    double b = typenum == NPY_FLOAT32 ? 4.0 : 8.0;
    for (int i = 0; i < nd; i++) b *= (double)dims[i];
    return b;
}

/* The output array, after checking that it and `scratch` elements of the
 * net's dtype fit in memory (MemoryError naming `what` otherwise). */
static PyArrayObject *new_output(int nd, npy_intp *dims, int typenum, const pk_common_args *a,
                                 double scratch, const char *what)
{
    if (pk_check_memory(array_bytes(nd, dims, typenum) + scratch * itemsize(a->net.typenum), what) < 0)
        return NULL;
    return new_array(nd, dims, typenum);
}

/* Release the arguments; return `out`, or NULL with the exception for rc. */
/* A zeroed output of the net's dtype once the memory guard allows it plus
 * `scratch` elements of working memory; NULL with the exception set and `a`
 * released otherwise. */
static PyArrayObject *guarded_zeros(pk_common_args *a, int ndim, npy_intp *dims, double scratch,
                                    const char *name)
{
    PyArrayObject *out = NULL;
    if (pk_check_memory(array_bytes(ndim, dims, a->net.typenum) + scratch * itemsize(a->net.typenum), name) == 0)
        out = (PyArrayObject *)PyArray_ZEROS(ndim, dims, a->net.typenum, 0);
    if (!out) common_release(a);
    return out;
}

static PyObject *finish(pk_common_args *a, PyArrayObject *out, int rc)
{
    common_release(a);
    if (!out) return NULL;
    if (rc) {
        Py_DECREF(out);
        return pk_raise(rc, NULL);
    }
    return (PyObject *)out;
}

/* A right-hand-side array with `ndim` dims and shape (-1 = any) whose LAST
 * axis counts columns and must be non-empty. */
static PyArrayObject *arg_columns(PyObject *obj, const char *name, int typenum, int ndim,
                                  const npy_intp *shape)
{
    PyArrayObject *arr = pk_arg_array(obj, name, PK_ARG_REAL, typenum, ndim, shape, 1);
    if (arr && PyArray_DIM(arr, ndim - 1) == 0) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least one column", name);
        Py_CLEAR(arr);
    }
    return arr;
}

static PyObject *py_forward_impl(PyObject *args, int features)
{
    PyObject *net, *X;
    if (!PyArg_ParseTuple(args, "OO", &net, &X)) return NULL;
    pk_common_args a;
    if (common_parse(net, X, NULL, NULL, &a) < 0) return NULL;
    int L = a.net.net.n_layers;
    npy_intp dims[2] = {a.n, (npy_intp)(features ? a.net.sizes[L - 1] : a.K)};
    pk_dims d = dims_of(&a.net, a.n);
    PyArrayObject *out = new_output(2, dims, a.net.typenum, &a, chunk_elems(&d, cache_row(&d, 0)),
                                    features ? "features" : "forward");
    int rc = PK_OK;
    if (out) {
        if (features)
            PK_RUN_NOGIL(rc, pk_features(&a.net.net, a.n, PyArray_DATA(a.X), PyArray_DATA(out)));
        else
            PK_RUN_NOGIL(rc, pk_forward(&a.net.net, a.n, PyArray_DATA(a.X), PyArray_DATA(out)));
    }
    return finish(&a, out, rc);
}

static PyObject *py_forward(PyObject *self, PyObject *args) { return py_forward_impl(args, 0); }
static PyObject *py_features(PyObject *self, PyObject *args) { return py_forward_impl(args, 1); }

/* loss_grad(net, X, y, loss, want_grad) -> (float, grad or None) */
static PyObject *py_loss_grad(PyObject *self, PyObject *args)
{
    PyObject *net, *X, *y, *loss;
    int want_grad;
    if (!PyArg_ParseTuple(args, "OOOOp", &net, &X, &y, &loss, &want_grad)) return NULL;
    pk_common_args a;
    if (common_parse(net, X, y, loss, &a) < 0) return NULL;
    PyArrayObject *grad = NULL;
    pk_dims d = dims_of(&a.net, a.n);
    npy_intp dims[1] = {(npy_intp)a.net.num_params};
    double scratch = chunk_elems(&d, cache_row(&d, 0) + 2 * d.maxw);
    if (pk_check_memory((want_grad ? array_bytes(1, dims, a.net.typenum) : 0) +
                         scratch * itemsize(a.net.typenum), "loss_and_grad") < 0) {
        common_release(&a);
        return NULL;
    }
    if (want_grad) {
        grad = new_array(1, dims, a.net.typenum);
        if (!grad) {
            common_release(&a);
            return NULL;
        }
    }
    double value = 0;
    int rc;
    PK_RUN_NOGIL(rc, pk_loss_grad(&a.net.net, a.loss, a.n, PyArray_DATA(a.X), PyArray_DATA(a.y), &value,
                           grad ? PyArray_DATA(grad) : NULL));
    common_release(&a);
    if (rc) {
        Py_XDECREF(grad);
        return pk_raise(rc, NULL);
    }
    if (!grad) return Py_BuildValue("dO", value, Py_None);
    return Py_BuildValue("dN", value, grad);
}

static PyObject *py_loss_per_sample(PyObject *self, PyObject *args)
{
    PyObject *net, *X, *y, *loss;
    if (!PyArg_ParseTuple(args, "OOOO", &net, &X, &y, &loss)) return NULL;
    pk_common_args a;
    if (common_parse(net, X, y, loss, &a) < 0) return NULL;
    npy_intp dims[1] = {a.n};
    pk_dims d = dims_of(&a.net, a.n);
    PyArrayObject *out = new_output(1, dims, NPY_FLOAT64, &a, chunk_elems(&d, cache_row(&d, 0) + 2 * d.maxw),
                                    "loss_per_sample");
    int rc = PK_OK;
    if (out)
        PK_RUN_NOGIL(rc, pk_loss_per_sample(&a.net.net, a.loss, a.n, PyArray_DATA(a.X), PyArray_DATA(a.y),
                                     PyArray_DATA(out)));
    return finish(&a, out, rc);
}

/* grad_per_sample(net, X, y, loss) -> (N, D) */
static PyObject *py_grad_per_sample(PyObject *self, PyObject *args)
{
    PyObject *net, *X, *y, *loss;
    if (!PyArg_ParseTuple(args, "OOOO", &net, &X, &y, &loss)) return NULL;
    pk_common_args a;
    if (common_parse(net, X, y, loss, &a) < 0) return NULL;
    npy_intp dims[2] = {a.n, (npy_intp)a.net.num_params};
    pk_dims d = dims_of(&a.net, a.n);
    PyArrayObject *out = new_output(2, dims, a.net.typenum, &a,
                                    chunk_elems(&d, cache_row(&d, 0) + 2 * d.maxw), "grad_per_sample");
    int rc = PK_OK;
    if (out)
        PK_RUN_NOGIL(rc, pk_grad_per_sample(&a.net.net, a.loss, a.n, PyArray_DATA(a.X), PyArray_DATA(a.y),
                                            PyArray_DATA(out)));
    return finish(&a, out, rc);
}

static PyObject *py_jacobian(PyObject *self, PyObject *args)
{
    PyObject *net, *X;
    if (!PyArg_ParseTuple(args, "OO", &net, &X)) return NULL;
    pk_common_args a;
    if (common_parse(net, X, NULL, NULL, &a) < 0) return NULL;
    npy_intp dims[3] = {a.n, (npy_intp)a.K, (npy_intp)a.net.num_params};
    pk_dims d = dims_of(&a.net, a.n);
    PyArrayObject *out = new_output(3, dims, a.net.typenum, &a,
                                    chunk_elems(&d, cache_row(&d, 0) + 2 * d.K * d.maxw), "jacobian");
    int rc = PK_OK;
    if (out) PK_RUN_NOGIL(rc, pk_jacobian(&a.net.net, a.n, PyArray_DATA(a.X), PyArray_DATA(out)));
    return finish(&a, out, rc);
}

/* layer_jacobians(net, X) -> ([G_l (N, K, out_l)], [A_l (N, in_l)]) */
static PyObject *py_layer_jacobians(PyObject *self, PyObject *args)
{
    PyObject *net, *X;
    if (!PyArg_ParseTuple(args, "OO", &net, &X)) return NULL;
    pk_common_args a;
    if (common_parse(net, X, NULL, NULL, &a) < 0) return NULL;
    int L = a.net.net.n_layers;
    pk_dims d = dims_of(&a.net, a.n);
    double bytes = 0;
    for (int l = 0; l < L; l++)
        bytes += (double)a.n * ((double)a.K * a.net.sizes[l + 1] + a.net.sizes[l]) * itemsize(a.net.typenum);
    if (pk_check_memory(bytes + chunk_elems(&d, cache_row(&d, 0) + 2 * d.K * d.maxw) *
                                    itemsize(a.net.typenum), "layer_jacobians") < 0) {
        common_release(&a);
        return NULL;
    }
    PyObject *Gs = PyList_New(L), *As = PyList_New(L);
    void *G[64], *A[64];
    int rc = PK_OK;
    if (!Gs || !As) goto fail;
    for (int l = 0; l < L; l++) {
        npy_intp dg[3] = {a.n, (npy_intp)a.K, (npy_intp)a.net.sizes[l + 1]};
        npy_intp da[2] = {a.n, (npy_intp)a.net.sizes[l]};
        PyArrayObject *g = new_array(3, dg, a.net.typenum), *ai = new_array(2, da, a.net.typenum);
        if (g) PyList_SET_ITEM(Gs, l, (PyObject *)g);
        if (ai) PyList_SET_ITEM(As, l, (PyObject *)ai);
        if (!g || !ai) goto fail;
        G[l] = PyArray_DATA(g);
        A[l] = PyArray_DATA(ai);
    }
    PK_RUN_NOGIL(rc, pk_layer_jacobians(&a.net.net, a.n, PyArray_DATA(a.X), G, A));
    common_release(&a);
    if (rc) {
        Py_DECREF(Gs);
        Py_DECREF(As);
        return pk_raise(rc, NULL);
    }
    return Py_BuildValue("NN", Gs, As);
fail:
    common_release(&a);
    Py_XDECREF(Gs);
    Py_XDECREF(As);
    return NULL;
}

/* jvp(net, X, V (D, m)) -> (N, K, m) */
static PyObject *py_jvp(PyObject *self, PyObject *args)
{
    PyObject *net, *X, *Vobj;
    if (!PyArg_ParseTuple(args, "OOO", &net, &X, &Vobj)) return NULL;
    pk_common_args a;
    if (common_parse(net, X, NULL, NULL, &a) < 0) return NULL;
    npy_intp vshape[2] = {(npy_intp)a.net.num_params, -1};
    PyArrayObject *V = arg_columns(Vobj, "v", a.net.typenum, 2, vshape);
    PyArrayObject *out = NULL;
    int rc = PK_OK;
    if (V) {
        npy_intp m = PyArray_DIM(V, 1);
        npy_intp dims[3] = {a.n, (npy_intp)a.K, m};
        pk_dims d = dims_of(&a.net, a.n);
        double scratch = (double)m * d.D + chunk_elems(&d, cache_row(&d, 0) + rop_row(&d, stack_cols((double)m)));
        out = new_output(3, dims, a.net.typenum, &a, scratch, "jvp");
        if (out)
            PK_RUN_NOGIL(rc, pk_jvp(&a.net.net, a.n, PyArray_DATA(a.X), m, PyArray_DATA(V), PyArray_DATA(out)));
    }
    Py_XDECREF(V);
    return finish(&a, out, rc);
}

/* vjp(net, X, U (N, K, m)) -> (D, m) */
static PyObject *py_vjp(PyObject *self, PyObject *args)
{
    PyObject *net, *X, *Uobj;
    if (!PyArg_ParseTuple(args, "OOO", &net, &X, &Uobj)) return NULL;
    pk_common_args a;
    if (common_parse(net, X, NULL, NULL, &a) < 0) return NULL;
    npy_intp ushape[3] = {a.n, (npy_intp)a.K, -1};
    PyArrayObject *U = arg_columns(Uobj, "u", a.net.typenum, 3, ushape);
    PyArrayObject *out = NULL;
    int rc = PK_OK;
    if (U) {
        npy_intp m = PyArray_DIM(U, 2);
        npy_intp dims[2] = {(npy_intp)a.net.num_params, m};
        pk_dims d = dims_of(&a.net, a.n);
        double scratch = (double)m * d.D + chunk_elems(&d, cache_row(&d, 0) + 2 * stack_cols((double)m) * d.maxw);
        out = new_output(2, dims, a.net.typenum, &a, scratch, "vjp");
        if (out)
            PK_RUN_NOGIL(rc, pk_vjp(&a.net.net, a.n, PyArray_DATA(a.X), m, PyArray_DATA(U), PyArray_DATA(out)));
    }
    Py_XDECREF(U);
    return finish(&a, out, rc);
}

/* curvature_matvec(net, which, X, y, loss, V (D, m)) -> (D, m) */
static PyObject *py_curvature_matvec(PyObject *self, PyObject *args)
{
    PyObject *net, *X, *y, *loss, *Vobj;
    int which;
    if (!PyArg_ParseTuple(args, "OiOOOO", &net, &which, &X, &y, &loss, &Vobj)) return NULL;
    pk_common_args a;
    if (common_parse(net, X, y, loss, &a) < 0) return NULL;
    npy_intp vshape[2] = {(npy_intp)a.net.num_params, -1};
    PyArrayObject *V = arg_columns(Vobj, "V", a.net.typenum, 2, vshape);
    PyArrayObject *out = NULL;
    int rc = PK_OK;
    if (V) {
        npy_intp m = PyArray_DIM(V, 1);
        npy_intp dims[2] = {(npy_intp)a.net.num_params, m};
        pk_dims d = dims_of(&a.net, a.n);
        double scratch = 2 * (double)m * d.D +
                         chunk_elems(&d, cache_row(&d, which != PK_CURV_GGN) + rop_row(&d, stack_cols((double)m)));
        out = new_output(2, dims, a.net.typenum, &a, scratch,
                         which == PK_CURV_GGN ? "ggn_matvec" : which == PK_CURV_HESSIAN ? "hvp" : "residual_matvec");
        if (out)
            PK_RUN_NOGIL(rc, pk_curvature_matvec(&a.net.net, (pk_curv_t)which, a.loss, a.n, PyArray_DATA(a.X),
                                          PyArray_DATA(a.y), m, PyArray_DATA(V), PyArray_DATA(out)));
    }
    Py_XDECREF(V);
    return finish(&a, out, rc);
}

static PyObject *py_dense_curvature(PyObject *args, int hessian)
{
    PyObject *net, *X, *y, *loss;
    if (!PyArg_ParseTuple(args, "OOOO", &net, &X, &y, &loss)) return NULL;
    pk_common_args a;
    if (common_parse(net, X, y, loss, &a) < 0) return NULL;
    npy_intp D = (npy_intp)a.net.num_params;
    npy_intp dims[2] = {D, D};
    pk_dims d = dims_of(&a.net, a.n);
    double mc = stack_cols(d.D);
    double scratch = hessian ? mc * d.D + chunk_elems(&d, cache_row(&d, 1) + rop_row(&d, mc))
                             : chunk_elems(&d, cache_row(&d, 0) + d.K * (2 * d.maxw + d.D + 1));
    PyArrayObject *out = new_output(2, dims, a.net.typenum, &a, scratch, hessian ? "hessian" : "ggn");
    int rc = PK_OK;
    if (out) {
        if (hessian)
            PK_RUN_NOGIL(rc, pk_hessian(&a.net.net, a.loss, a.n, PyArray_DATA(a.X), PyArray_DATA(a.y), PyArray_DATA(out)));
        else
            PK_RUN_NOGIL(rc, pk_ggn(&a.net.net, a.loss, a.n, PyArray_DATA(a.X), PyArray_DATA(a.y), PyArray_DATA(out)));
    }
    return finish(&a, out, rc);
}

static PyObject *py_hessian(PyObject *self, PyObject *args) { return py_dense_curvature(args, 1); }
static PyObject *py_ggn(PyObject *self, PyObject *args) { return py_dense_curvature(args, 0); }

static int parse_kind(int kind, int mc_samples, int allow_kfra)
{
    if (kind < PK_FISHER_EXACT || kind > (allow_kfra ? PK_FISHER_KFRA : PK_FISHER_EMPIRICAL)) {
        PyErr_Format(PyExc_ValueError, "kind: unsupported curvature kind code %d", kind);
        return -1;
    }
    if (kind == PK_FISHER_MC && mc_samples < 1) {
        PyErr_Format(PyExc_ValueError, "mc_samples: expected a positive number of samples, got %d", mc_samples);
        return -1;
    }
    return 0;
}

/* The arguments (net, kind, X, y, loss, mc_samples, seed) of the kernels that
 * take a curvature kind (not KFRA): parsed, checked and seeded; 0 or -1. */
static int parse_kind_call(PyObject *args, int *kind, int *mc_samples, pk_rng_t *rng, pk_common_args *a)
{
    PyObject *net, *X, *y, *loss, *seed;
    if (!PyArg_ParseTuple(args, "OiOOOiO", &net, kind, &X, &y, &loss, mc_samples, &seed)) return -1;
    if (parse_kind(*kind, *mc_samples, 0) < 0 || pk_parse_seed(seed, rng) < 0) return -1;
    return common_parse(net, X, y, loss, a);
}

/* diag_curvature(net, kind, X, y, loss, mc_samples, seed) -> ((D,), summed loss) */
static PyObject *py_diag_curvature(PyObject *self, PyObject *args)
{
    int kind, mc_samples;
    pk_rng_t rng;
    pk_common_args a;
    if (parse_kind_call(args, &kind, &mc_samples, &rng, &a) < 0) return NULL;
    npy_intp dims[1] = {(npy_intp)a.net.num_params};
    pk_dims d = dims_of(&a.net, a.n);
    double M = kind == PK_FISHER_EXACT ? d.K : kind == PK_FISHER_MC ? (double)mc_samples : 1;
    double scratch = chunk_elems(&d, cache_row(&d, 0) + 2 * M * d.maxw + 2 * d.maxw + d.K);
    PyArrayObject *out = guarded_zeros(&a, 1, dims, scratch,
                                       kind == PK_FISHER_EMPIRICAL ? "empirical_fisher_diag" : "diag_ggn");
    if (!out) return NULL;
    int rc = PK_OK;
    double value = 0;
    PK_RUN_NOGIL(rc, pk_diag_curvature(&a.net.net, (pk_fisher_t)kind, a.loss, a.n, PyArray_DATA(a.X),
                                       PyArray_DATA(a.y), mc_samples, &rng, PyArray_DATA(out), &value));
    PyObject *res = finish(&a, out, rc);
    return res ? Py_BuildValue("Nd", res, value) : NULL;
}

/* diag_hessian(net, X, y, loss) -> ((D,), summed loss) */
static PyObject *py_diag_hessian(PyObject *self, PyObject *args)
{
    PyObject *net, *X, *y, *loss;
    if (!PyArg_ParseTuple(args, "OOOO", &net, &X, &y, &loss)) return NULL;
    pk_common_args a;
    if (common_parse(net, X, y, loss, &a) < 0) return NULL;
    npy_intp dims[1] = {(npy_intp)a.net.num_params};
    pk_dims d = dims_of(&a.net, a.n);
    /* mlp.c's diag_hessian_shape: the residual stack's height Mres and W o W's size */
    int L = a.net.net.n_layers;
    double Mres = 0, nWW = 0;
    for (int m = 1; m < L - 1; m++) {
        pk_act_t act = a.net.acts[m];
        if (act == PK_ACT_IDENTITY || act == PK_ACT_RELU || act == PK_ACT_LEAKY_RELU) continue;
        if (m >= 2) Mres += (double)a.net.sizes[m + 1];
        nWW += (double)a.net.sizes[m + 1] * (double)a.net.sizes[m];
    }
    /* mlp_impl.inc, diag_hessian: its guard_row */
    double guard_row = cache_row(&d, 1) + d.sum_out + 3 * d.maxw + 2 * d.K + d.sum_hidden +
                       (2 * (d.K > Mres ? d.K : Mres) + 1) * d.maxw + Mres;
    double scratch = chunk_elems(&d, guard_row) + nWW;
    PyArrayObject *out = guarded_zeros(&a, 1, dims, scratch, "diag_hessian");
    if (!out) return NULL;
    int rc = PK_OK;
    double value = 0;
    PK_RUN_NOGIL(rc, pk_diag_hessian(&a.net.net, a.loss, a.n, PyArray_DATA(a.X), PyArray_DATA(a.y),
                                     PyArray_DATA(out), &value));
    PyObject *res = finish(&a, out, rc);
    return res ? Py_BuildValue("Nd", res, value) : NULL;
}

/* Check an accumulator list (pykfac-owned arrays created by pykfac.kfac;
 * checked all the same) and collect its data pointers. rows/cols[l] give the
 * expected shape of entry l. 0 or -1 with ValueError. */
static int accumulators(PyObject *list, const char *name, int count, const npy_intp *rows,
                        const npy_intp *cols, int typenum, void **ptrs)
{
    if (!PyList_Check(list) || PyList_GET_SIZE(list) != count) {
        PyErr_Format(PyExc_ValueError, "%s: expected a list of %d arrays", name, count);
        return -1;
    }
    for (int l = 0; l < count; l++) {
        PyObject *obj = PyList_GET_ITEM(list, l);
        PyArrayObject *arr = (PyArrayObject *)obj;
        if (!PyArray_Check(obj) || PyArray_TYPE(arr) != typenum || PyArray_NDIM(arr) != 2 ||
            PyArray_DIM(arr, 0) != rows[l] || PyArray_DIM(arr, 1) != cols[l] ||
            !PyArray_IS_C_CONTIGUOUS(arr) || !PyArray_ISWRITEABLE(arr)) {
            PyErr_Format(PyExc_ValueError,
                         "%s[%d]: expected a writable C-contiguous (%ld, %ld) array of the net's dtype",
                         name, l, (long)rows[l], (long)cols[l]);
            return -1;
        }
        ptrs[l] = PyArray_DATA(arr);
    }
    return 0;
}

/* kfac_factors(net, kind, X, y, loss, mc_samples, seed, A, G, A_cross, G_cross)
 * -> the batch's summed loss: adds this batch's unnormalised factors into the
 * accumulator lists; A_cross and G_cross are None or lists of L - 1
 * cross-layer accumulators. */
static PyObject *py_kfac_factors(PyObject *self, PyObject *args)
{
    PyObject *net, *X, *y, *loss, *seed, *Alist, *Glist, *Aclist, *Gclist;
    int kind, mc_samples;
    if (!PyArg_ParseTuple(args, "OiOOOiOOOOO", &net, &kind, &X, &y, &loss, &mc_samples, &seed,
                          &Alist, &Glist, &Aclist, &Gclist))
        return NULL;
    if (parse_kind(kind, mc_samples, 1) < 0) return NULL;
    int cross = Aclist != Py_None || Gclist != Py_None;
    if (cross && kind == PK_FISHER_KFRA) {
        PyErr_SetString(PyExc_ValueError, "kind: cross-layer factors are not defined for KFRA");
        return NULL;
    }
    pk_rng_t rng;
    if (pk_parse_seed(seed, &rng) < 0) return NULL;
    pk_common_args a;
    if (common_parse(net, X, y, loss, &a) < 0) return NULL;
    int L = a.net.net.n_layers;
    void *A[64], *G[64], *Ac[64], *Gc[64];
    npy_intp qa[64], qg[64], qa_next[64], qg_next[64];
    for (int l = 0; l < L; l++) {
        qa[l] = (npy_intp)a.net.sizes[l] + 1;
        qg[l] = (npy_intp)a.net.sizes[l + 1];
        qa_next[l] = l + 1 < L ? (npy_intp)a.net.sizes[l + 1] + 1 : 0;
        qg_next[l] = l + 1 < L ? (npy_intp)a.net.sizes[l + 2] : 0;
    }
    if (accumulators(Alist, "A", L, qa, qa, a.net.typenum, A) < 0 ||
        accumulators(Glist, "G", L, qg, qg, a.net.typenum, G) < 0 ||
        (cross && (accumulators(Aclist, "A_cross", L - 1, qa, qa_next, a.net.typenum, Ac) < 0 ||
                   accumulators(Gclist, "G_cross", L - 1, qg, qg_next, a.net.typenum, Gc) < 0))) {
        common_release(&a);
        return NULL;
    }
    pk_dims d = dims_of(&a.net, a.n);
    double M = kind == PK_FISHER_KFRA ? 0 : kind == PK_FISHER_EXACT ? d.K : kind == PK_FISHER_MC ? (double)mc_samples : 1;
    double scratch = chunk_elems(&d, cache_row(&d, 0) + 2 * M * d.maxw + d.K) +
                     (kind == PK_FISHER_KFRA ? d.K * d.K + d.hidden_sq + 3 * d.maxw * d.maxw : 0);
    if (pk_check_memory(scratch * itemsize(a.net.typenum), "kfac") < 0) {
        common_release(&a);
        return NULL;
    }
    int rc;
    double value = 0;
    PK_RUN_NOGIL(rc, pk_kfac_factors(&a.net.net, (pk_fisher_t)kind, a.loss, a.n, PyArray_DATA(a.X),
                              PyArray_DATA(a.y), mc_samples, &rng, A, G, cross ? Ac : NULL,
                              cross ? Gc : NULL, &value));
    common_release(&a);
    if (rc) return pk_raise(rc, NULL);
    return PyFloat_FromDouble(value);
}

/* output_stack(net, kind, X, y, loss, mc_samples, seed) -> (N, K, M) */
static PyObject *py_output_stack(PyObject *self, PyObject *args)
{
    int kind, mc_samples;
    pk_rng_t rng;
    pk_common_args a;
    if (parse_kind_call(args, &kind, &mc_samples, &rng, &a) < 0) return NULL;
    const int64_t M = pk_output_stack_height((pk_fisher_t)kind, a.loss, (int64_t)a.K, mc_samples);
    npy_intp d3[3] = {a.n, (npy_intp)a.K, (npy_intp)M};
    if (pk_check_memory(array_bytes(3, d3, a.net.typenum) * 2 + (double)a.n * a.K * 2 * itemsize(a.net.typenum),
                        "output_stack") < 0) {
        common_release(&a);
        return NULL;
    }
    PyArrayObject *out = new_array(3, d3, a.net.typenum);
    int rc = PK_OK;
    if (out)
        PK_RUN_NOGIL(rc, pk_output_stack(&a.net.net, (pk_fisher_t)kind, a.loss, a.n, PyArray_DATA(a.X),
                                         PyArray_DATA(a.y), mc_samples, &rng, PyArray_DATA(out)));
    return finish(&a, out, rc);
}

/* output_curvature(net, X, y or None, loss) -> (dloss or None, Lambda, S) */
static PyObject *py_output_curvature(PyObject *self, PyObject *args)
{
    PyObject *net, *X, *y, *loss;
    if (!PyArg_ParseTuple(args, "OOOO", &net, &X, &y, &loss)) return NULL;
    pk_common_args a;
    if (common_parse(net, X, y == Py_None ? NULL : y, loss, &a) < 0) return NULL;
    npy_intp d2[2] = {a.n, (npy_intp)a.K}, d3[3] = {a.n, (npy_intp)a.K, (npy_intp)a.K};
    double K = (double)a.K, n = (double)a.n;
    if (pk_check_memory(array_bytes(2, d2, a.net.typenum) + 2 * array_bytes(3, d3, a.net.typenum) +
                         n * K * (2 + 2 * K) * itemsize(a.net.typenum), "output_curvature") < 0) {
        common_release(&a);
        return NULL;
    }
    PyArrayObject *dl = a.y ? new_array(2, d2, a.net.typenum) : NULL;
    PyArrayObject *lam = new_array(3, d3, a.net.typenum);
    PyArrayObject *S = new_array(3, d3, a.net.typenum);
    int rc = PK_OK;
    if ((a.y && !dl) || !lam || !S) goto fail;
    PK_RUN_NOGIL(rc, pk_output_curvature(&a.net.net, a.loss, a.n, PyArray_DATA(a.X),
                                  a.y ? PyArray_DATA(a.y) : NULL, dl ? PyArray_DATA(dl) : NULL,
                                  PyArray_DATA(lam), PyArray_DATA(S)));
    if (rc) {
        pk_raise(rc, NULL);
        goto fail;
    }
    common_release(&a);
    if (!dl) {
        Py_INCREF(Py_None);
        dl = (PyArrayObject *)Py_None;
    }
    return Py_BuildValue("NNN", dl, lam, S);
fail:
    common_release(&a);
    Py_XDECREF(dl);
    Py_XDECREF(lam);
    Py_XDECREF(S);
    return NULL;
}

PyMethodDef pk_mlp_methods[] = {
    {"forward", py_forward, METH_VARARGS, "forward(net, X) -> (N, K) outputs"},
    {"features", py_features, METH_VARARGS, "features(net, X) -> penultimate activations"},
    {"loss_grad", py_loss_grad, METH_VARARGS, "loss_grad(net, X, y, loss, want_grad) -> (value, grad or None)"},
    {"loss_per_sample", py_loss_per_sample, METH_VARARGS, "loss_per_sample(net, X, y, loss) -> (N,) float64"},
    {"jacobian", py_jacobian, METH_VARARGS, "jacobian(net, X) -> (N, K, D)"},
    {"grad_per_sample", py_grad_per_sample, METH_VARARGS, "grad_per_sample(net, X, y, loss) -> (N, D)"},
    {"layer_jacobians", py_layer_jacobians, METH_VARARGS,
     "layer_jacobians(net, X) -> ([G_l (N, K, out_l)], [A_l (N, in_l)]): J rows in factored form"},
    {"jvp", py_jvp, METH_VARARGS, "jvp(net, X, V (D, m)) -> (N, K, m)"},
    {"vjp", py_vjp, METH_VARARGS, "vjp(net, X, U (N, K, m)) -> (D, m)"},
    {"curvature_matvec", py_curvature_matvec, METH_VARARGS,
     "curvature_matvec(net, which, X, y, loss, V (D, m)) -> (D, m); which 0 GGN, 1 Hessian, 2 residual"},
    {"hessian", py_hessian, METH_VARARGS, "hessian(net, X, y, loss) -> (D, D)"},
    {"ggn", py_ggn, METH_VARARGS, "ggn(net, X, y, loss) -> (D, D)"},
    {"diag_curvature", py_diag_curvature, METH_VARARGS,
     "diag_curvature(net, kind, X, y, loss, mc_samples, seed) -> ((D,), loss); kind 0 exact, 1 MC, 2 empirical"},
    {"diag_hessian", py_diag_hessian, METH_VARARGS,
     "diag_hessian(net, X, y, loss) -> ((D,), loss): diagonal of the exact Hessian"},
    {"kfac_factors", py_kfac_factors, METH_VARARGS,
     "kfac_factors(net, kind, X, y, loss, mc_samples, seed, A, G, A_cross, G_cross) -> loss: accumulate factors"},
    {"output_stack", py_output_stack, METH_VARARGS,
     "output_stack(net, kind, X, y, loss, mc_samples, seed) -> (N, K, M) columns of the output curvature"},
    {"output_curvature", py_output_curvature, METH_VARARGS,
     "output_curvature(net, X, y or None, loss) -> (dloss or None, Lambda (N,K,K), S (N,K,K))"},
    {NULL, NULL, 0, NULL},
};
