/* SIGABRT: a failed assert(); glibc records its text in __abort_msg. */
#include <assert.h>

__attribute__((noinline, noipa)) void check(int answer) {
    assert(answer == 42);
}

int main(void) {
    check(41);
    return 0;
}
