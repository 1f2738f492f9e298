/* SIGSEGV (SEGV_ACCERR): write to a string literal, which lives in .rodata.
   Prints the literal's address first ("literal 0x..."). */
#include <stdio.h>

static const char greeting[] = "hello, read-only world";

__attribute__((noinline, noipa)) void shout(char *text) { text[0] = 'H'; }

int main(void) {
    printf("literal %p\n", (void *)greeting);
    fflush(stdout);
    shout((char *)greeting);
    return 0;
}
