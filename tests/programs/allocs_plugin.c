/* The plugin tests/programs/allocs.cpp dlopens once it is being recorded. */
#include <stdint.h>
#include <stdlib.h>

__attribute__((noinline)) uint64_t plugin_alloc(int count)
{
	uint64_t sum = 0;
	for (int i = 0; i < count; i++) {
		uint32_t *volatile block = malloc(32);
		block[0] = (uint32_t)i;
		sum += block[0];
		free(block);
	}
	return sum;
}
