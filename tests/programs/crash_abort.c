/* SIGABRT: abort() with no message. */
#include <stdlib.h>

__attribute__((noinline, noipa)) void give_up(void) { abort(); }

int main(void) {
    give_up();
    return 0;
}
