/* SIGSEGV (SEGV_ACCERR): call through a pointer to a heap buffer, which is not executable.
   Prints the buffer's address first ("buffer 0x..."). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*callback)(void);

__attribute__((noinline, noipa)) int run(callback function) { return function() + 1; }

int main(void) {
    unsigned char *buffer = malloc(64);
    memset(buffer, 0xc3, 64); /* ret, ret, ... (never executed) */
    printf("buffer %p\n", (void *)buffer);
    fflush(stdout);
    return run((callback)buffer);
}
