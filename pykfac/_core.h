/* _core.h: helpers shared by the files of the pykfac._core extension.
 *
 * The extension is thin: parse arguments, validate and normalise arrays,
 * allocate outputs, release the GIL around the C call, translate status codes.
 * Each _core_<topic>.c file exports a NULL-terminated PyMethodDef table that
 * _core.c concatenates at import. */
#ifndef PYKFAC_CORE_H
#define PYKFAC_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef PY_ARRAY_UNIQUE_SYMBOL
#define PY_ARRAY_UNIQUE_SYMBOL pykfac_ARRAY_API
#endif
#ifndef PK_CORE_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "pykfac.h"

/* Sets the Python exception for a C status code and returns NULL:
 * PK_ERR_NOMEM -> MemoryError; PK_ERR_NOT_PD / EIG_FAILED / SINGULAR ->
 * pykfac.LinAlgError; PK_ERR_DTYPE -> TypeError; PK_ERR_BAD_ARG (a pykfac bug)
 * -> RuntimeError; everything else ValueError.
 * `context` (may be NULL) prefixes the message, e.g. "layer 2". */
PyObject *pk_raise(int code, const char *context);

/* 0 if `bytes` more may be allocated, else -1 with MemoryError "what: needs
 * ... but only ... is available" (checked only above 64 MiB; "available" is
 * the least of MemAvailable + SwapFree, the cgroup limit minus usage and the
 * RLIMIT_AS headroom). Call it before allocating outputs, scratch or copies
 * whose size the caller controls. */
int pk_check_memory(double bytes, const char *what);

/* Kinds of element an argument may hold. */
typedef enum {
    PK_ARG_REAL,   /* int/uint/float input, cast to the requested float dtype */
    PK_ARG_LABELS, /* int/uint input (class indices), cast to int64 */
} pk_argkind_t;

/* `obj` as an ndarray of any dtype and shape (PyArray_FROM_O): a new
 * reference, or NULL with TypeError "name: expected an array, got None" or
 * "name: expected a numeric array, got <type>". */
PyArrayObject *pk_arg_any(PyObject *obj, const char *name);

/* Validate and normalise one array argument. Returns a new reference to an
 * aligned C-contiguous array of `typenum` (a copy only when needed) or NULL
 * with TypeError/ValueError naming `name`:
 *   - kind: bool/complex/object/str/void inputs are rejected (TypeError);
 *   - ndim must equal `ndim`; shape[i] >= 0 must match (-1 = any), message
 *     like "X: expected shape (N, 784), got (32, 783)";
 *   - check_finite: NaN/Inf raise ValueError.
 * The caller's array is never written: outputs are always fresh arrays. */
PyArrayObject *pk_arg_array(PyObject *obj, const char *name, pk_argkind_t kind, int typenum,
                            int ndim, const npy_intp *shape, int check_finite);

/* A square real matrix argument (pk_arg_array with finite values): *n >= 0 is
 * the order it must have, -1 any; on success *n is its order. Else NULL with
 * ValueError "name: expected a square matrix, got shape (r, c)" (or
 * pk_arg_array's errors). */
PyArrayObject *pk_arg_square(PyObject *obj, const char *name, int typenum, npy_intp *n);

/* A shape as NumPy prints it, "(2, 3)" or "(5,)", into buf; with `symbolic`,
 * negative entries (any size) print as "N" for the first and "*" after. */
void pk_format_shape(char *buf, size_t len, int ndim, const npy_intp *shape, int symbolic);

/* The csrc dtype of NPY_FLOAT32 / NPY_FLOAT64. */
static inline pk_dtype_t pk_dtype_of(int typenum) { return typenum == NPY_FLOAT32 ? PK_FLOAT32 : PK_FLOAT64; }

/* A double as "%g" (PyErr_Format has no %g): PyErr_Format(..., "%s", pk_numstr(x).s). */
typedef struct {
    char s[32];
} pk_numstr_t;

static inline pk_numstr_t pk_numstr(double x)
{
    pk_numstr_t r;
    snprintf(r.s, sizeof r.s, "%g", x);
    return r;
}

/* ---- one wrapper call ---------------------------------------------------------
 * A pk_call_t carries a call's dtype and holds the arrays the wrapper makes
 * (normalised inputs, fresh outputs), so that every exit releases them in one
 * place. A wrapper reads: parse, validate, call, return --
 *
 *     pk_call_t c;
 *     PyArrayObject *J = pk_call_first(&c, Jo, "J", PK_DTYPE_PROMOTE, 3); // dtype follows J
 *     if (!J) return pk_call_fail(&c);
 *     npy_intp gd[2] = {PyArray_DIM(J, 2), PyArray_DIM(J, 2)};
 *     PyArrayObject *G = pk_call_output(&c, 2, gd);
 *     if (!G) return pk_call_fail(&c);
 *     int rc;
 *     PK_RUN_NOGIL(rc, pk_ggn_from_jacobians(c.dtype, ..., PyArray_DATA(J), NULL, PyArray_DATA(G)));
 *     return pk_call_return(&c, rc, "ggn_from_jacobians", G);
 *
 * Every pk_call_* that returns NULL has set the exception; the arrays stay
 * held (and valid) until one of the endings below. */
#define PK_CALL_MAX_ARRAYS 8

typedef struct {
    int typenum;      /* NPY_FLOAT32 or NPY_FLOAT64 */
    pk_dtype_t dtype; /* the same for csrc */
    int n;            /* arrays held */
    PyArrayObject *held[PK_CALL_MAX_ARRAYS];
} pk_call_t;

/* How a call's dtype follows its first array argument. */
typedef enum {
    PK_DTYPE_PROMOTE, /* float32 stays float32; anything else (integers too) is computed in float64 */
    PK_DTYPE_EXACT,   /* float32 or float64; any other dtype is a TypeError */
} pk_dtype_rule_t;

/* Start a call computing in `typenum` (NPY_FLOAT32 or NPY_FLOAT64). */
void pk_call_init(pk_call_t *c, int typenum);

/* Start a call whose dtype follows the array argument `first` by `rule`.
 * 0, or -1 with TypeError naming `name` (None, not array-like, or a dtype
 * the rule refuses); the call is initialised either way. */
int pk_call_start(pk_call_t *c, PyObject *first, const char *name, pk_dtype_rule_t rule);

/* Hold `arr`, a new reference the call takes over, and return it; NULL
 * passes through (its exception set). More than PK_CALL_MAX_ARRAYS is a
 * pykfac bug: RuntimeError. */
PyArrayObject *pk_call_hold(pk_call_t *c, PyArrayObject *arr);

/* Held pk_arg_array(obj, name, PK_ARG_REAL, call dtype, ndim, shape, finite). */
PyArrayObject *pk_call_input(pk_call_t *c, PyObject *obj, const char *name, int ndim,
                             const npy_intp *shape);

/* The usual first array argument: pk_call_start(c, obj, name, rule), then obj
 * held as an ndim-D (1 to 3) array of any shape (pk_call_first) or as a
 * square matrix whose order goes to *n (pk_call_first_square). NULL with an
 * exception otherwise; the call is initialised either way. */
PyArrayObject *pk_call_first(pk_call_t *c, PyObject *obj, const char *name, pk_dtype_rule_t rule, int ndim);
PyArrayObject *pk_call_first_square(pk_call_t *c, PyObject *obj, const char *name, pk_dtype_rule_t rule,
                                    npy_intp *n);

/* Held pk_arg_square(obj, name, call dtype, n). */
PyArrayObject *pk_call_square(pk_call_t *c, PyObject *obj, const char *name, npy_intp *n);

/* A held fresh output of the call's dtype: uninitialised, or zero-filled. */
PyArrayObject *pk_call_output(pk_call_t *c, int ndim, const npy_intp *dims);
PyArrayObject *pk_call_zeros(pk_call_t *c, int ndim, const npy_intp *dims);

/* Endings; each releases everything the call holds.
 * pk_call_release: returns `result` as is (NULL passes through).
 * pk_call_fail:    NULL, for an exception already set.
 * pk_call_raise:   NULL with the exception for status rc (pk_raise(rc, context)).
 * pk_call_return:  rc == PK_OK: a new reference to `out` (a held array), or
 *                  None when out is NULL; otherwise as pk_call_raise. */
PyObject *pk_call_release(pk_call_t *c, PyObject *result);
PyObject *pk_call_fail(pk_call_t *c);
PyObject *pk_call_raise(pk_call_t *c, int rc, const char *context);
PyObject *pk_call_return(pk_call_t *c, int rc, const char *context, PyArrayObject *out);

/* ---- per-layer lists of arrays ----------------------------------------------------
 * Arguments that are a list or tuple of per-layer arrays (more than a
 * pk_call_t holds): a pk_arrlist_t keeps the normalised arrays (new
 * references) and their data pointers for the kernels. */
#define PK_MAX_LIST 64

typedef struct {
    int n;
    PyArrayObject *a[PK_MAX_LIST];
    void *p[PK_MAX_LIST];
} pk_arrlist_t;

/* Append `a`, a new reference the list takes over: 0, or -1 when a is NULL
 * (its exception set). */
int pk_arrlist_push(pk_arrlist_t *al, PyArrayObject *a);
static inline const void *const *pk_arrlist_data(const pk_arrlist_t *al) { return (const void *const *)al->p; }
void pk_arrlist_release(pk_arrlist_t *al);

/* The length of a list/tuple argument that must hold `want` items (want < 0:
 * 1 to PK_MAX_LIST), or -1 with TypeError/ValueError naming it. */
Py_ssize_t pk_seq_len(PyObject *seq, const char *name, Py_ssize_t want);

/* Item i of seq as pk_arg_array(item, "name[i]", PK_ARG_REAL, typenum, ndim,
 * shape, finite): a new reference, or NULL with the exception set. */
PyArrayObject *pk_seq_item(PyObject *seq, const char *name, Py_ssize_t i, int typenum, int ndim,
                           const npy_intp *shape);

/* The dtype of a call on a list or tuple of per-layer arrays: NPY_FLOAT32 when
 * its first item is a float32 array, else NPY_FLOAT64 (the others are
 * converted to it). */
int pk_seq_typenum(PyObject *seq);

/* A METH_VARARGS | METH_KEYWORDS row of a method table. */
#define PK_KW_METHOD(name, func, doc) \
    { name, (PyCFunction)(void (*)(void))(func), METH_VARARGS | METH_KEYWORDS, doc }

/* A network read from a pykfac.MLP-like object: attributes `theta` (1-D,
 * float32/float64, C-contiguous), `sizes` (tuple of ints) and `_act_codes`
 * (tuple of ints, one per hidden layer). Holds references until released. */
typedef struct {
    pk_mlp_t net;
    PyArrayObject *theta;
    int64_t sizes[65];
    pk_act_t acts[64];
    int64_t num_params;
    int typenum; /* NPY_FLOAT32 or NPY_FLOAT64 */
} pk_netarg_t;

/* Parse `obj` into `out`; checks theta finite. Returns 0 or -1 with an exception. */
int pk_netarg_parse(PyObject *obj, pk_netarg_t *out);
void pk_netarg_release(pk_netarg_t *arg);

/* Parse a loss name ("mse" | "ce" | "bce") into *loss; -1 with ValueError otherwise.
 * Also checks it fits the output width K (ce needs K >= 2). */
int pk_parse_loss(PyObject *obj, int64_t K, pk_loss_t *loss);

/* Validate labels `y` for `loss` with n rows and K outputs; returns a new
 * normalised array (int64 (n,) for ce, dtype (n, K) for mse and bce, where
 * (n,) is also accepted when K == 1) or NULL with an exception. */
PyArrayObject *pk_arg_labels(PyObject *y, pk_loss_t loss, npy_intp n, int64_t K, int typenum);

/* Seed a pk_rng_t from a Python int (any size; reduced mod 2**64). */
int pk_parse_seed(PyObject *obj, pk_rng_t *rng);

/* rc = call, with the GIL released around it. */
#define PK_RUN_NOGIL(rc, call)   \
    do {                         \
        Py_BEGIN_ALLOW_THREADS;  \
        rc = (call);             \
        Py_END_ALLOW_THREADS;    \
    } while (0)

/* The pykfac.LinAlgError type (owned by the module). */
extern PyObject *pk_LinAlgError;

/* Method tables of the topic files. */
extern PyMethodDef pk_mlp_methods[];
extern PyMethodDef pk_kron_methods[];
extern PyMethodDef pk_linalg_methods[];
extern PyMethodDef pk_optim_methods[];

#endif
