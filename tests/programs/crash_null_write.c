/* SIGSEGV: write through a NULL pointer (fault address 0x8). */
#include <stddef.h>

struct pair {
    long first;
    long second; /* offset 8 */
};

__attribute__((noinline, noipa)) void set_second(struct pair *pair, long value) {
    pair->second = value;
}

int main(void) {
    struct pair *volatile pair = NULL;
    set_second(pair, 42);
    return 0;
}
