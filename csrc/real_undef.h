/* real_undef.h (internal): end of a type-generic template (see real_def.h). */
#undef REAL
#undef PK_DT
#undef SUF
#undef XGEMM
#undef XSYRK
#undef XGEMV
#undef XAXPY
#undef XDOT
#undef XSCAL
#undef XSYEVD
#undef XPOTRF
#undef XPOTRS
#undef XPOTRI
#undef XTRTRS
#undef RSQRT
#undef REXP
#undef RLOG
