/* Crash into a core, for tests/test_core.py.
 *
 * core_crash MODE [THREADS] [HEAP_MB]
 *   MODE: segv (a write 16 bytes into a NULL pointer, in main),
 *         thread-segv (the same in the last worker thread),
 *         fpe (an integer division by zero), abort (abort()),
 *         wait (print "ready" and block: for gcore of a live process).
 *   THREADS: worker threads blocked in known calls before the crash (default 3).
 *   HEAP_MB: megabytes of heap to fill first, to make a big core (default 0).
 * Each worker prints "thread TID" once it is about to block; main prints "ready".
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static sem_t started;
static const char *mode;
static int nthreads;
static volatile int divisor;

struct point { long x, y, z; };

__attribute__((noinline, noipa)) void write_field(struct point *p) { p->z = 42; }

__attribute__((noinline, noipa)) int divide(int a, int b) { return a / b; }

__attribute__((noinline, noipa)) void crash_now(void) {
    if (strcmp(mode, "fpe") == 0)
        printf("%d\n", divide(7, divisor));
    else if (strcmp(mode, "abort") == 0)
        abort();
    else
        write_field(NULL);
}

__attribute__((noinline, noipa)) void block_in_pause(void) {
    for (;;) pause();
}

__attribute__((noinline, noipa)) void block_in_poll(void) {
    for (;;) poll(NULL, 0, -1);
}

static void *worker(void *arg) {
    long index = (long)arg;
    printf("thread %ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    sem_post(&started);
    if (index == nthreads - 1 && strcmp(mode, "thread-segv") == 0) {
        usleep(20000);
        write_field(NULL);
    }
    if (index % 2)
        block_in_poll();
    else
        block_in_pause();
    return NULL;
}

__attribute__((noinline, noipa)) void run(void) {
    if (strcmp(mode, "wait") == 0 || strcmp(mode, "thread-segv") == 0) {
        printf("ready\n");
        fflush(stdout);
        block_in_pause();
    }
    crash_now();
}

int main(int argc, char **argv) {
    mode = argc > 1 ? argv[1] : "segv";
    nthreads = argc > 2 ? atoi(argv[2]) : 3;
    long heap_mb = argc > 3 ? atol(argv[3]) : 0;
    if (heap_mb > 0) {
        char *heap = malloc(heap_mb << 20);
        for (long i = 0; i < heap_mb << 20; i += 4096) heap[i] = (char)(i >> 12);
    }
    sem_init(&started, 0, 0);
    for (long i = 0; i < nthreads; i++) {
        pthread_t thread;
        pthread_create(&thread, NULL, worker, (void *)i);
    }
    for (long i = 0; i < nthreads; i++) sem_wait(&started);
    usleep(20000); /* let the workers reach their blocking calls */
    run();
    return 0;
}
