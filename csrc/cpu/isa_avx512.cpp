// Every CPU kernel of isa.h compiled for avx512; how: isa_unit.h, when it runs: isa.h.
#define SLIMKIT_ISA_NS avx512
#include "isa_unit.h"
