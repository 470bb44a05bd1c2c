/* _core.c: the pykfac._core module: shared argument helpers, status-code
 * translation, build information, and the module table assembled from the
 * topic files (_core_mlp.c, _core_kron.c, ...). */
#define PK_CORE_MAIN
#include "_core.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/resource.h>
#include <unistd.h>
#define PK_HAVE_RLIMIT 1
#endif

/* ---- memory guard ------------------------------------------------------------
 * A request whose outputs, input copies or scratch exceed the memory this
 * process can still get raises MemoryError BEFORE anything is allocated. Without this a
 * large-but-not-absurd request (say a 15 GB Jacobian with 12 GB free) is
 * granted by the kernel's overcommit and the process is OOM-killed while the
 * C core fills it: a dead notebook kernel instead of an exception.
 * Requests below PK_GUARD_MIN bytes are never checked (no file I/O on small
 * calls). "Available" is the smallest of: MemAvailable + SwapFree
 * (/proc/meminfo), the cgroup (v2 or v1) limit minus its usage, and the
 * RLIMIT_AS headroom; unknown parts count as unlimited. */
#define PK_GUARD_MIN (64.0 * 1024 * 1024)

#ifdef __linux__
/* First number in `path` (bytes), or -1; "max" and absurd values read as -1. */
static double read_number(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char buf[64] = {0};
    double v = -1;
    if (fgets(buf, sizeof buf, f) && buf[0] >= '0' && buf[0] <= '9') v = strtod(buf, NULL);
    fclose(f);
    return v >= 0 && v < 0x1p60 ? v : -1;
}

/* limit - usage of the memory cgroup this process is in (v2 or v1), or +inf. */
static double cgroup_headroom(void)
{
    static const char *v2[2] = {"memory.max", "memory.current"};
    static const char *v1[2] = {"memory.limit_in_bytes", "memory.usage_in_bytes"};
    double best = INFINITY;
    char line[512], path[1024];
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f) return best;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        const char *rel = NULL, *base = NULL, **files = NULL;
        if (!strncmp(line, "0::", 3)) {
            rel = line + 3, base = "/sys/fs/cgroup", files = v2;
        } else {
            char *m = strstr(line, ":memory:");
            if (m) rel = m + 8, base = "/sys/fs/cgroup/memory", files = v1;
        }
        if (!rel) continue;
        /* our own cgroup's files, else the namespace root's (containers) */
        for (int attempt = 0; attempt < 2; attempt++) {
            const char *dir = attempt == 0 ? rel : "";
            snprintf(path, sizeof path, "%s%s/%s", base, dir, files[0]);
            double lim = read_number(path);
            snprintf(path, sizeof path, "%s%s/%s", base, dir, files[1]);
            double use = read_number(path);
            if (lim >= 0 && use >= 0) {
                double h = lim > use ? lim - use : 0;
                if (h < best) best = h;
                break;
            }
        }
    }
    fclose(f);
    return best;
}
#endif

/* Bytes this process can still allocate without an OOM kill; +inf if unknown. */
static double available_bytes(void)
{
    double avail = INFINITY;
#ifdef __linux__
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        double mem = -1, swap = 0;
        unsigned long long kb;
        while (fgets(line, sizeof line, f)) {
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) mem = 1024.0 * (double)kb;
            else if (sscanf(line, "SwapFree: %llu kB", &kb) == 1) swap = 1024.0 * (double)kb;
        }
        fclose(f);
        if (mem >= 0) avail = mem + swap;
    }
    double cg = cgroup_headroom();
    if (cg < avail) avail = cg;
#endif
#ifdef PK_HAVE_RLIMIT
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        double used = 0;
#ifdef __linux__
        FILE *s = fopen("/proc/self/statm", "r");
        unsigned long long pages = 0;
        if (s) {
            if (fscanf(s, "%llu", &pages) == 1) used = (double)pages * (double)sysconf(_SC_PAGESIZE);
            fclose(s);
        }
#endif
        double h = (double)rl.rlim_cur > used ? (double)rl.rlim_cur - used : 0;
        if (h < avail) avail = h;
    }
#endif
    return avail;
}

static void format_bytes(char *buf, size_t len, double b)
{
    static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    int u = 0;
    while (b >= 1024 && u < 6) b /= 1024, u++;
    snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
}

int pk_check_memory(double bytes, const char *what)
{
    if (!(bytes > PK_GUARD_MIN)) return 0;
    double avail = available_bytes();
    if (bytes <= avail) return 0;
    char need[32], have[32];
    format_bytes(need, sizeof need, bytes);
    format_bytes(have, sizeof have, avail);
    PyErr_Format(PyExc_MemoryError,
                 "%s: needs %s of memory (result, copies and workspace) but only %s is available",
                 what, need, have);
    return -1;
}

/* check_memory(nbytes, what): the guard for allocations made in Python
 * (K-FAC accumulators, dense Kronecker blocks). */
static PyObject *py_check_memory(PyObject *self, PyObject *args)
{
    double bytes;
    const char *what;
    if (!PyArg_ParseTuple(args, "ds", &bytes, &what)) return NULL;
    if (pk_check_memory(bytes, what) < 0) return NULL;
    Py_RETURN_NONE;
}

PyObject *pk_LinAlgError = NULL;

PyObject *pk_raise(int code, const char *context)
{
    PyObject *type = PyExc_ValueError;
    switch (code) {
    case PK_ERR_NOMEM:
        if (context) return PyErr_Format(PyExc_MemoryError, "%s: %s", context, pk_strerror(code));
        return PyErr_NoMemory();
    case PK_ERR_NOT_PD:
    case PK_ERR_EIG_FAILED:
    case PK_ERR_SINGULAR: type = pk_LinAlgError; break;
    case PK_ERR_DTYPE: type = PyExc_TypeError; break;
    case PK_ERR_BAD_ARG: type = PyExc_RuntimeError; break;
    default: break;
    }
    if (context) return PyErr_Format(type, "%s: %s", context, pk_strerror(code));
    return PyErr_Format(type, "%s", pk_strerror(code));
}

void pk_format_shape(char *buf, size_t len, int ndim, const npy_intp *shape, int symbolic)
{
    size_t pos = 0;
    int used_n = 0;
    pos += (size_t)snprintf(buf + pos, len - pos, "(");
    for (int i = 0; i < ndim && pos < len; i++) {
        const char *sep = i ? ", " : "";
        if (symbolic && shape[i] < 0) {
            /* N names a leading batch axis only; other free axes are * */
            pos += (size_t)snprintf(buf + pos, len - pos, "%s%s", sep, i == 0 && !used_n ? "N" : "*");
            used_n = 1;
        } else {
            pos += (size_t)snprintf(buf + pos, len - pos, "%s%ld", sep, (long)shape[i]);
        }
    }
    if (pos < len) snprintf(buf + pos, len - pos, ndim == 1 ? ",)" : ")");
}

PyArrayObject *pk_arg_any(PyObject *obj, const char *name)
{
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: expected an array, got None", name);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!arr) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected a numeric array, got %s", name, Py_TYPE(obj)->tp_name);
    }
    return arr;
}

PyArrayObject *pk_arg_array(PyObject *obj, const char *name, pk_argkind_t kind, int typenum,
                            int ndim, const npy_intp *shape, int check_finite)
{
    PyArrayObject *raw = pk_arg_any(obj, name);
    if (!raw) return NULL;
    char k = PyArray_DESCR(raw)->kind;
    int ok = kind == PK_ARG_REAL ? (k == 'i' || k == 'u' || k == 'f') : (k == 'i' || k == 'u');
    if (!ok) {
        PyObject *dt = PyObject_Str((PyObject *)PyArray_DESCR(raw));
        PyErr_Format(PyExc_TypeError, "%s: expected %s, got dtype %s", name,
                     kind == PK_ARG_REAL ? "a real (integer or floating) array" : "integer class labels",
                     dt ? PyUnicode_AsUTF8(dt) : "?");
        Py_XDECREF(dt);
        Py_DECREF(raw);
        return NULL;
    }
    if (PyArray_NDIM(raw) != ndim) {
        char want[128], got[128];
        pk_format_shape(want, sizeof want, ndim, shape, 1);
        pk_format_shape(got, sizeof got, PyArray_NDIM(raw), PyArray_DIMS(raw), 0);
        PyErr_Format(PyExc_ValueError, "%s: expected a %d-D array of shape %s, got shape %s", name,
                     ndim, want, got);
        Py_DECREF(raw);
        return NULL;
    }
    for (int i = 0; i < ndim; i++) {
        if (shape && shape[i] >= 0 && PyArray_DIM(raw, i) != shape[i]) {
            char want[128], got[128];
            pk_format_shape(want, sizeof want, ndim, shape, 1);
            pk_format_shape(got, sizeof got, ndim, PyArray_DIMS(raw), 0);
            PyErr_Format(PyExc_ValueError, "%s: expected shape %s, got %s", name, want, got);
            Py_DECREF(raw);
            return NULL;
        }
    }
    /* A cast or a contiguous copy allocates: guard it like an output (a
     * float32 dataset passed to a float64 net doubles; a broadcast view
     * costs nothing until it is copied). */
    if (!(PyArray_TYPE(raw) == typenum && PyArray_ISCARRAY_RO(raw) && PyArray_ISNOTSWAPPED(raw)) &&
        pk_check_memory((double)PyArray_SIZE(raw) * (typenum == NPY_FLOAT32 ? 4.0 : 8.0), name) < 0) {
        Py_DECREF(raw);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)raw, typenum,
                                                           NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(raw);
    if (!arr) return NULL;
    if (check_finite && kind == PK_ARG_REAL) {
        if (pk_check_finite(pk_dtype_of(typenum), (int64_t)PyArray_SIZE(arr), PyArray_DATA(arr)) != PK_OK) {
            PyErr_Format(PyExc_ValueError, "%s: contains NaN or Inf", name);
            Py_DECREF(arr);
            return NULL;
        }
    }
    return arr;
}

PyArrayObject *pk_arg_square(PyObject *obj, const char *name, int typenum, npy_intp *n)
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

/* ---- one wrapper call (see _core.h) ---- */

void pk_call_init(pk_call_t *c, int typenum)
{
    c->typenum = typenum;
    c->dtype = pk_dtype_of(typenum);
    c->n = 0;
}

int pk_call_start(pk_call_t *c, PyObject *first, const char *name, pk_dtype_rule_t rule)
{
    pk_call_init(c, NPY_FLOAT64);
    PyArrayObject *arr = pk_arg_any(first, name);
    if (!arr) return -1;
    int t = PyArray_TYPE(arr);
    if (rule == PK_DTYPE_EXACT && t != NPY_FLOAT32 && t != NPY_FLOAT64) {
        PyErr_Format(PyExc_TypeError, "%s: expected a float32 or float64 array, got dtype %S", name,
                     (PyObject *)PyArray_DESCR(arr));
        Py_DECREF(arr);
        return -1;
    }
    Py_DECREF(arr);
    pk_call_init(c, t == NPY_FLOAT32 ? NPY_FLOAT32 : NPY_FLOAT64);
    return 0;
}

PyArrayObject *pk_call_hold(pk_call_t *c, PyArrayObject *arr)
{
    if (arr && c->n == PK_CALL_MAX_ARRAYS) {
        Py_DECREF(arr);
        PyErr_SetString(PyExc_RuntimeError, "pykfac bug: a wrapper holds more than PK_CALL_MAX_ARRAYS arrays");
        return NULL;
    }
    if (arr) c->held[c->n++] = arr;
    return arr;
}

PyArrayObject *pk_call_input(pk_call_t *c, PyObject *obj, const char *name, int ndim,
                             const npy_intp *shape)
{
    return pk_call_hold(c, pk_arg_array(obj, name, PK_ARG_REAL, c->typenum, ndim, shape, 1));
}

PyArrayObject *pk_call_square(pk_call_t *c, PyObject *obj, const char *name, npy_intp *n)
{
    return pk_call_hold(c, pk_arg_square(obj, name, c->typenum, n));
}

PyArrayObject *pk_call_first(pk_call_t *c, PyObject *obj, const char *name, pk_dtype_rule_t rule, int ndim)
{
    const npy_intp any[3] = {-1, -1, -1};
    if (pk_call_start(c, obj, name, rule)) return NULL;
    if (ndim < 1 || ndim > 3) {
        PyErr_SetString(PyExc_RuntimeError, "pykfac bug: pk_call_first takes 1 to 3 dimensions");
        return NULL;
    }
    return pk_call_input(c, obj, name, ndim, any);
}

PyArrayObject *pk_call_first_square(pk_call_t *c, PyObject *obj, const char *name, pk_dtype_rule_t rule,
                                    npy_intp *n)
{
    *n = -1;
    if (pk_call_start(c, obj, name, rule)) return NULL;
    return pk_call_square(c, obj, name, n);
}

PyArrayObject *pk_call_output(pk_call_t *c, int ndim, const npy_intp *dims)
{
    return pk_call_hold(c, (PyArrayObject *)PyArray_SimpleNew(ndim, dims, c->typenum));
}

PyArrayObject *pk_call_zeros(pk_call_t *c, int ndim, const npy_intp *dims)
{
    return pk_call_hold(c, (PyArrayObject *)PyArray_ZEROS(ndim, dims, c->typenum, 0));
}

PyObject *pk_call_release(pk_call_t *c, PyObject *result)
{
    while (c->n > 0) {
        c->n--;
        Py_CLEAR(c->held[c->n]);
    }
    return result;
}

PyObject *pk_call_fail(pk_call_t *c) { return pk_call_release(c, NULL); }

/* ---- per-layer lists of arrays ---------------------------------------------------- */

int pk_arrlist_push(pk_arrlist_t *al, PyArrayObject *a)
{
    if (!a) return -1;
    if (al->n >= PK_MAX_LIST) {
        Py_DECREF(a);
        PyErr_SetString(PyExc_RuntimeError, "pykfac: more arrays than a pk_arrlist_t holds");
        return -1;
    }
    al->p[al->n] = PyArray_DATA(a);
    al->a[al->n++] = a;
    return 0;
}

void pk_arrlist_release(pk_arrlist_t *al)
{
    while (al->n > 0) {
        al->n--;
        Py_CLEAR(al->a[al->n]);
    }
}

Py_ssize_t pk_seq_len(PyObject *seq, const char *name, Py_ssize_t want)
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
    if (want < 0 && (n < 1 || n > PK_MAX_LIST)) {
        PyErr_Format(PyExc_ValueError, "%s: expected 1 to %d arrays (one per layer), got %zd", name, PK_MAX_LIST,
                     n);
        return -1;
    }
    return n;
}

PyArrayObject *pk_seq_item(PyObject *seq, const char *name, Py_ssize_t i, int typenum, int ndim,
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

int pk_seq_typenum(PyObject *seq)
{
    PyObject *first = PyList_Check(seq) && PyList_GET_SIZE(seq) > 0     ? PyList_GET_ITEM(seq, 0)
                      : PyTuple_Check(seq) && PyTuple_GET_SIZE(seq) > 0 ? PyTuple_GET_ITEM(seq, 0)
                                                                        : NULL;
    return first && PyArray_Check(first) && PyArray_TYPE((PyArrayObject *)first) == NPY_FLOAT32 ? NPY_FLOAT32
                                                                                                : NPY_FLOAT64;
}

PyObject *pk_call_raise(pk_call_t *c, int rc, const char *context)
{
    pk_raise(rc, context);
    return pk_call_release(c, NULL);
}

PyObject *pk_call_return(pk_call_t *c, int rc, const char *context, PyArrayObject *out)
{
    if (rc != PK_OK) return pk_call_raise(c, rc, context);
    PyObject *result = out ? (PyObject *)out : Py_None;
    Py_INCREF(result);
    return pk_call_release(c, result);
}

int pk_netarg_parse(PyObject *obj, pk_netarg_t *out)
{
    memset(out, 0, sizeof *out);
    PyObject *theta = NULL, *sizes = NULL, *acts = NULL;
    int rc = -1;
    theta = PyObject_GetAttrString(obj, "theta");
    sizes = theta ? PyObject_GetAttrString(obj, "sizes") : NULL;
    acts = sizes ? PyObject_GetAttrString(obj, "_act_codes") : NULL;
    if (!acts) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "net: expected a pykfac.MLP, got %s", Py_TYPE(obj)->tp_name);
        goto out;
    }
    if (!PyArray_Check(theta) || PyArray_NDIM((PyArrayObject *)theta) != 1 ||
        !(PyArray_TYPE((PyArrayObject *)theta) == NPY_FLOAT32 ||
          PyArray_TYPE((PyArrayObject *)theta) == NPY_FLOAT64) ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)theta) ||
        !PyArray_ISALIGNED((PyArrayObject *)theta)) {
        PyErr_SetString(PyExc_TypeError, "net.theta: expected a contiguous 1-D float32 or float64 array");
        goto out;
    }
    if (!PyTuple_Check(sizes) || !PyTuple_Check(acts)) {
        PyErr_SetString(PyExc_TypeError, "net: sizes and _act_codes must be tuples");
        goto out;
    }
    Py_ssize_t L = PyTuple_GET_SIZE(sizes) - 1;
    if (L < 1 || L > 64 || PyTuple_GET_SIZE(acts) != L - 1) {
        PyErr_Format(PyExc_ValueError, "net: expected 2 to 65 sizes and one activation per hidden layer, got %zd sizes, %zd activations",
                     PyTuple_GET_SIZE(sizes), PyTuple_GET_SIZE(acts));
        goto out;
    }
    for (Py_ssize_t i = 0; i <= L; i++) {
        long long v = PyLong_AsLongLong(PyTuple_GET_ITEM(sizes, i));
        if (v == -1 && PyErr_Occurred()) goto out;
        if (v < 1) {
            PyErr_Format(PyExc_ValueError, "net: layer widths must be >= 1, got %lld at position %zd", v, i);
            goto out;
        }
        out->sizes[i] = v;
    }
    for (Py_ssize_t i = 0; i < L - 1; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(acts, i));
        if (v == -1 && PyErr_Occurred()) goto out;
        if (v < 0 || v >= PK_ACT_COUNT) {
            PyErr_Format(PyExc_ValueError, "net: unknown activation code %ld for hidden layer %zd", v, i);
            goto out;
        }
        out->acts[i] = (pk_act_t)v;
    }
    out->typenum = PyArray_TYPE((PyArrayObject *)theta);
    out->net.dtype = pk_dtype_of(out->typenum);
    out->net.n_layers = (int)L;
    out->net.sizes = out->sizes;
    out->net.acts = L > 1 ? out->acts : NULL;
    out->net.theta = PyArray_DATA((PyArrayObject *)theta);
    int code = pk_mlp_check(&out->net);
    if (code != PK_OK) {
        pk_raise(code, "net");
        goto out;
    }
    out->num_params = pk_mlp_num_params(&out->net);
    if (PyArray_DIM((PyArrayObject *)theta, 0) != out->num_params) {
        PyErr_Format(PyExc_ValueError, "net.theta: expected %lld parameters for sizes %S, got %ld",
                     (long long)out->num_params, sizes, (long)PyArray_DIM((PyArrayObject *)theta, 0));
        goto out;
    }
    if (pk_check_finite(out->net.dtype, out->num_params, out->net.theta) != PK_OK) {
        PyErr_SetString(PyExc_ValueError, "net.theta: contains NaN or Inf");
        goto out;
    }
    out->theta = (PyArrayObject *)theta;
    theta = NULL;
    rc = 0;
out:
    Py_XDECREF(theta);
    Py_XDECREF(sizes);
    Py_XDECREF(acts);
    return rc;
}

void pk_netarg_release(pk_netarg_t *arg)
{
    Py_CLEAR(arg->theta);
}

int pk_parse_loss(PyObject *obj, int64_t K, pk_loss_t *loss)
{
    const char *s = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (s && !strcmp(s, "mse")) *loss = PK_LOSS_MSE;
    else if (s && !strcmp(s, "ce")) *loss = PK_LOSS_CE;
    else if (s && !strcmp(s, "bce")) *loss = PK_LOSS_BCE; /* one logistic loss per output */
    else {
        PyErr_Format(PyExc_ValueError, "loss: expected 'mse', 'ce' or 'bce', got %R", obj);
        return -1;
    }
    if (*loss == PK_LOSS_CE && K < 2) {
        PyErr_SetString(PyExc_ValueError, "loss: 'ce' needs a network with at least 2 outputs (use 'bce' for 1)");
        return -1;
    }
    return 0;
}

PyArrayObject *pk_arg_labels(PyObject *y, pk_loss_t loss, npy_intp n, int64_t K, int typenum)
{
    PyArrayObject *arr = NULL;
    if (loss == PK_LOSS_CE) {
        npy_intp shape[1] = {n};
        if (PyArray_Check(y) && PyArray_DESCR((PyArrayObject *)y)->kind == 'f') {
            PyErr_Format(PyExc_TypeError, "y: expected integer class labels for loss='ce', got a floating array");
            return NULL;
        }
        arr = pk_arg_array(y, "y", PK_ARG_LABELS, NPY_INT64, 1, shape, 0);
        if (!arr) return NULL;
        const int64_t *p = PyArray_DATA(arr);
        for (npy_intp i = 0; i < n; i++) {
            if (p[i] < 0 || p[i] >= K) {
                PyErr_Format(PyExc_ValueError, "y: class labels must lie in [0, %lld), got %lld at index %ld",
                             (long long)K, (long long)p[i], (long)i);
                Py_DECREF(arr);
                return NULL;
            }
        }
        return arr;
    }
    if (loss == PK_LOSS_MSE) {
        npy_intp shape[2] = {n, (npy_intp)K};
        /* with one output, (N,) targets are read as (N, 1) -- from any array-like
         * (a list too, not only an ndarray) */
        int nd = 2;
        if (K == 1) {
            PyArrayObject *tmp = (PyArrayObject *)PyArray_FROM_O(y);
            if (tmp && PyArray_NDIM(tmp) == 1) nd = 1;
            if (!tmp) PyErr_Clear(); /* pk_arg_array reports it, naming y */
            Py_XDECREF(tmp);
        }
        return pk_arg_array(y, "y", PK_ARG_REAL, typenum, nd, shape, 1);
    }
    /* bce: (n, K), or (n,) when K = 1; values in {0, 1} (or -1/+1, or booleans) */
    PyObject *tmp = PyArray_FROM_O(y);
    if (!tmp) return NULL;
    int nd = PyArray_NDIM((PyArrayObject *)tmp);
    if (K > 1 && nd == 1) {
        /* the likeliest mistake: single-output labels for a multi-label net */
        PyErr_Format(PyExc_ValueError,
                     "y: loss='bce' with %lld outputs expects labels of shape (%ld, %lld), one 0/1 label "
                     "per output, got shape (%ld,)",
                     (long long)K, (long)n, (long long)K, (long)PyArray_DIM((PyArrayObject *)tmp, 0));
        Py_DECREF(tmp);
        return NULL;
    }
    if (PyArray_DESCR((PyArrayObject *)tmp)->kind == 'b') {
        PyObject *as_real = (PyObject *)PyArray_Cast((PyArrayObject *)tmp, typenum);
        Py_DECREF(tmp);
        if (!as_real) return NULL;
        PyArrayObject *res = pk_arg_labels(as_real, loss, n, K, typenum);
        Py_DECREF(as_real);
        return res;
    }
    Py_DECREF(tmp);
    if (nd == 2 || K > 1) {
        npy_intp shape[2] = {n, (npy_intp)K};
        arr = pk_arg_array(y, "y", PK_ARG_REAL, typenum, 2, shape, 1);
    } else {
        npy_intp shape[1] = {n};
        arr = pk_arg_array(y, "y", PK_ARG_REAL, typenum, 1, shape, 1);
    }
    if (!arr) return NULL;
    for (npy_intp i = 0; i < n * (npy_intp)K; i++) {
        double v = typenum == NPY_FLOAT32 ? ((const float *)PyArray_DATA(arr))[i]
                                          : ((const double *)PyArray_DATA(arr))[i];
        if (!(v == 0.0 || v == 1.0 || v == -1.0)) {
            char got[32], at[64]; /* PyErr_Format has no %g */
            snprintf(got, sizeof got, "%.9g", v);
            if (K == 1) snprintf(at, sizeof at, "%ld", (long)i);
            else snprintf(at, sizeof at, "(%ld, %ld)", (long)(i / K), (long)(i % K));
            PyErr_Format(PyExc_ValueError, "y: binary labels for loss='bce' must be 0/1 (or -1/+1), got %s at index %s",
                         got, at);
            Py_DECREF(arr);
            return NULL;
        }
    }
    return arr;
}

int pk_parse_seed(PyObject *obj, pk_rng_t *rng)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "seed: expected an int, got %s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long long s = PyLong_AsUnsignedLongLongMask(obj);
    if (s == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    pk_rng_seed(rng, (uint64_t)s);
    return 0;
}

static PyObject *py_blas_info(PyObject *self, PyObject *noargs)
{
    return Py_BuildValue("{s:s,s:s,s:s,s:i,s:s}", "source", pk_blas_source(), "config",
                         pk_blas_config(), "corename", pk_blas_corename(), "num_threads",
                         pk_blas_num_threads(), "library", pk_blas_library_path());
}

/* set_blas_threads(n) -> the count now in effect. Takes the GIL-held path on
 * purpose: OpenBLAS may start or park threads, and callers serialise on it. */
static PyObject *py_set_blas_threads(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > 1024) {
        PyErr_Format(PyExc_ValueError, "n: expected a thread count in [1, 1024], got %ld", n);
        return NULL;
    }
    pk_blas_set_num_threads((int)n);
    return PyLong_FromLong(pk_blas_num_threads());
}

static PyObject *py_strerror(PyObject *self, PyObject *arg)
{
    long code = PyLong_AsLong(arg);
    if (code == -1 && PyErr_Occurred()) return NULL;
    return PyUnicode_FromString(pk_strerror((int)code));
}

/* Raise the exception a status code maps to (lets tests check every mapping). */
static PyObject *py_raise_status(PyObject *self, PyObject *arg)
{
    long code = PyLong_AsLong(arg);
    if (code == -1 && PyErr_Occurred()) return NULL;
    if (code == PK_OK) Py_RETURN_NONE;
    return pk_raise((int)code, "status");
}

static PyMethodDef base_methods[] = {
    {"blas_info", py_blas_info, METH_NOARGS, "Which BLAS the C core is linked against."},
    {"set_blas_threads", py_set_blas_threads, METH_O,
     "set_blas_threads(n) -> threads now used by the C core's BLAS"},
    {"strerror", py_strerror, METH_O, "The message of a C status code."},
    {"raise_status", py_raise_status, METH_O, "Raise the exception a C status code maps to."},
    {"check_memory", py_check_memory, METH_VARARGS,
     "check_memory(nbytes, what): MemoryError naming `what` if nbytes exceed the memory available"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef *method_tables[] = {base_methods, pk_mlp_methods, pk_kron_methods,
                                       pk_linalg_methods, pk_optim_methods};
static PyMethodDef *all_methods = NULL;

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "pykfac._core", "pykfac's C core (thin wrapper; see csrc/pykfac.h).", -1, NULL,
};

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    size_t count = 0;
    const size_t ntables = sizeof method_tables / sizeof method_tables[0];
    for (size_t t = 0; t < ntables; t++)
        for (PyMethodDef *m = method_tables[t]; m->ml_name; m++) count++;
    all_methods = PyMem_Calloc(count + 1, sizeof(PyMethodDef));
    if (!all_methods) return PyErr_NoMemory();
    size_t k = 0;
    for (size_t t = 0; t < ntables; t++)
        for (PyMethodDef *m = method_tables[t]; m->ml_name; m++) all_methods[k++] = *m;
    core_module.m_methods = all_methods;

    PyObject *mod = PyModule_Create(&core_module);
    if (!mod) return NULL;
    PyObject *linalg = PyImport_ImportModule("numpy.linalg");
    PyObject *base = linalg ? PyObject_GetAttrString(linalg, "LinAlgError") : NULL;
    Py_XDECREF(linalg);
    if (!base) goto fail;
    pk_LinAlgError = PyErr_NewExceptionWithDoc(
        "pykfac.LinAlgError",
        "A numerical linear-algebra failure in pykfac's C core (not positive definite, "
        "eigensolver failure, singular damped curvature). Subclass of numpy.linalg.LinAlgError.",
        base, NULL);
    Py_DECREF(base);
    if (!pk_LinAlgError) goto fail;
    Py_INCREF(pk_LinAlgError);
    if (PyModule_AddObject(mod, "LinAlgError", pk_LinAlgError) < 0) {
        Py_DECREF(pk_LinAlgError);
        goto fail;
    }
    if (PyModule_AddIntConstant(mod, "ERR_MIN", PK_ERR_MIN) < 0) goto fail;
    return mod;
fail:
    Py_DECREF(mod);
    return NULL;
}
