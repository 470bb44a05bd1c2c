/* _core_optim.c: wrappers of the K-FAC optimiser (csrc/pk_optim.h). */
#include "_core.h"

PyMethodDef pk_optim_methods[] = {
    {NULL, NULL, 0, NULL},
};
