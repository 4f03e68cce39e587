// Every CPU kernel of isa.h compiled for avx2; how: isa_unit.h, when it runs: isa.h.
#define SLIMKIT_ISA_NS avx2
#include "isa_unit.h"
