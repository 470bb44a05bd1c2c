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
 * Also checks it fits the output width K (bce needs K == 1). */
int pk_parse_loss(PyObject *obj, int64_t K, pk_loss_t *loss);

/* Validate labels `y` for `loss` with n rows and K outputs; returns a new
 * normalised array (int64 (n,) for ce, dtype (n, K) for mse, dtype (n,) for
 * bce, where (n, 1) is also accepted) or NULL with an exception. */
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
