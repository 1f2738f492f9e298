/* SIGSEGV (SEGV_MAPERR): read through a dangling pointer into a page that was munmap'd.
   Prints the page's address first ("page 0x..."). */
#include <stdio.h>
#include <sys/mman.h>

__attribute__((noinline, noipa)) long load(long *pointer) { return pointer[3]; }

int main(void) {
    /* Three pages; the middle one is unmapped so that mappings remain on both sides. */
    char *area = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED)
        return 2;
    long *pointer = (long *)(area + 4096);
    *pointer = 1;
    munmap(area + 4096, 4096);
    printf("page %p\n", (void *)pointer);
    fflush(stdout);
    return (int)load(pointer);
}
