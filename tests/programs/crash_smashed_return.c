/* SIGSEGV (SI_KERNEL): a buffer overflow overwrites the return address with 0x4141414141414141;
   the `ret` faults (build with -O0 -fno-stack-protector). */
#include <string.h>

__attribute__((noinline, noipa)) void overflow(size_t size) {
    char buffer[16];
    memset(buffer, 'A', size);
}

int main(void) {
    overflow(64);
    return 0;
}
