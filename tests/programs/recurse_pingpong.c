/* Two functions calling each other until the stack overflows (bench/deep.py).
 *
 *   recurse_pingpong            ping -> pong -> ping ... until SIGSEGV
 *   recurse_pingpong live N     N frames deep, then "ready" and pause()
 *
 * `depth` counts the frames entered.  Built at -O2: frames of 16 bytes, so a
 * 16 MiB stack holds about a million of them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

volatile long depth;
static long stop_at = -1;

__attribute__((noinline, noipa)) static void ready(void) {
    printf("thread main %ld\n", (long)syscall(SYS_gettid));
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}

long pong(long n);

__attribute__((noinline, noipa)) long ping(long n) {
    if (++depth == stop_at)
        ready();
    return pong(n + 1) + 1;
}

__attribute__((noinline, noipa)) long pong(long n) {
    if (++depth == stop_at)
        ready();
    return ping(n + 1) + 1;
}

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "live") == 0)
        stop_at = atol(argv[2]);
    return (int)ping(0);
}
