/* _core_linalg.c: wrappers of framework-agnostic linear algebra for Laplace (csrc/pk_linalg.h). */
#include "_core.h"

PyMethodDef pk_linalg_methods[] = {
    {NULL, NULL, 0, NULL},
};
