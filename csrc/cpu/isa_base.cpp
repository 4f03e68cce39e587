// Every CPU kernel of isa.h compiled for base; how: isa_unit.h, when it runs: isa.h.
#define SLIMKIT_ISA_NS base
#include "isa_unit.h"
