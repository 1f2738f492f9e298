/* A call chain whose frames only stack scanning can find once the binary is
 * stripped: build with -O2 -fomit-frame-pointer -fno-asynchronous-unwind-tables
 * -fno-unwind-tables (no .eh_frame for this file's functions, no rbp chain);
 * with -g the unstripped twin keeps .debug_frame, which gdb and redhand use.
 *
 * main -> alpha -> beta -> gamma -> wait_forever, which prints
 * "thread main TID" and "ready" and waits in pause().  Each function does
 * something after its call, so every call is a real call (no tail call).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

volatile int sink;

__attribute__((noinline, noipa)) void wait_forever(int depth) {
    printf("thread main %ld\nready\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    for (;;) {
        pause();
        sink += depth;
    }
}

__attribute__((noinline, noipa)) int gamma_(int n) {
    volatile char scratch[48];
    scratch[n & 31] = (char)n;
    wait_forever(n + scratch[n & 31]);
    return sink + 3;
}

__attribute__((noinline, noipa)) int beta(int n) {
    int r = gamma_(n + 1);
    return r * 2 + sink;
}

__attribute__((noinline, noipa)) int alpha(int n) {
    int r = beta(n + 1);
    return r + 7 + sink;
}

int main(void) {
    return alpha(1) & 1;
}
