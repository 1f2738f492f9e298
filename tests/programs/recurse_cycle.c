/* Mutual recursion a -> b -> c until the stack overflows, or until a depth.
 *
 *   recurse_cycle main          a -> b -> c ... in the main thread until SIGSEGV
 *   recurse_cycle thread KIB    the same in a pthread with a KIB KiB stack
 *   recurse_cycle live FRAMES   recurse FRAMES deep, say "ready", then pause()
 *
 * `depth` counts the frames of a, b and c entered: the program's own truth,
 * read back from a core (it is volatile, so every increment reaches memory
 * before the next call).  noipa keeps gcc from merging or inlining the cycle
 * at -O2, and the "+ 1" after each call keeps it from becoming a tail call.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

volatile long depth;
static long stop_at = -1;

__attribute__((noinline, noipa)) static void ready(void) {
    printf("thread recurser %ld\n", (long)syscall(SYS_gettid));
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}

long a(long n);
long b(long n);
long c(long n);

__attribute__((noinline, noipa)) long a(long n) {
    depth++;
    if (depth == stop_at)
        ready();
    return b(n + 1) + 1;
}

__attribute__((noinline, noipa)) long b(long n) {
    depth++;
    if (depth == stop_at)
        ready();
    return c(n + 1) + 1;
}

__attribute__((noinline, noipa)) long c(long n) {
    depth++;
    if (depth == stop_at)
        ready();
    return a(n + 1) + 1;
}

static void *worker(void *argument) { return (void *)a((long)argument); }

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "thread") == 0) {
        pthread_attr_t attributes;
        pthread_attr_init(&attributes);
        pthread_attr_setstacksize(&attributes, (size_t)atol(argv[2]) * 1024);
        pthread_t thread;
        if (pthread_create(&thread, &attributes, worker, 0) != 0)
            return 2;
        pthread_join(thread, 0);
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "live") == 0)
        stop_at = atol(argv[2]);
    return (int)a(0);
}
