/* A large process for the tests of readable output and of capture at scale.
 *
 * usage: many_threads WORKERS HEARTBEAT_FILE
 *
 * Starts WORKERS threads named w-0000, w-0001, ... in three stack shapes by
 * their number modulo 3:
 *   0  worker -> wait_forever -> pthread_cond_wait   (futex)
 *   1  worker -> sleep_forever -> nanosleep           (clock_nanosleep)
 *   2  worker -> read_forever -> read on a pipe       (read)
 * and a thread named "heartbeat" that counts ticks (one per millisecond) in
 * the first 8 bytes of HEARTBEAT_FILE, mapped shared, so a test can see the
 * process run on after a capture.
 *
 * Prints "thread NAME TID" for main, the heartbeat and each worker, then
 * "ready", then the main thread parks in pause().
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define KEEP_FRAME() __asm__ volatile("" ::: "memory") /* no tail calls */

static volatile uint64_t *ticks;
static pthread_barrier_t started;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static int pipe_fds[2];
static pid_t *tids;

NOINLINE static void wait_forever(void) {
    pthread_mutex_lock(&lock);
    for (;;)
        pthread_cond_wait(&never, &lock);
}

NOINLINE static void sleep_forever(void) {
    for (;;) {
        struct timespec ts = {100000, 0};
        nanosleep(&ts, NULL);
        KEEP_FRAME();
    }
}

NOINLINE static void read_forever(void) {
    char byte;
    for (;;) {
        if (read(pipe_fds[0], &byte, 1) == 1)
            break;
        KEEP_FRAME();
    }
}

NOINLINE static void *worker(void *arg) {
    long index = (long)arg;
    tids[index] = (pid_t)syscall(SYS_gettid);
    pthread_barrier_wait(&started);
    switch (index % 3) {
    case 0:
        wait_forever();
        break;
    case 1:
        sleep_forever();
        break;
    default:
        read_forever();
        break;
    }
    KEEP_FRAME();
    return NULL;
}

static pid_t heartbeat_tid;

static void *heartbeat(void *arg) {
    (void)arg;
    heartbeat_tid = (pid_t)syscall(SYS_gettid);
    pthread_barrier_wait(&started);
    struct timespec pause_ts = {0, 1000000};
    for (;;) {
        __atomic_add_fetch(ticks, 1, __ATOMIC_RELAXED);
        nanosleep(&pause_ts, NULL);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: many_threads WORKERS HEARTBEAT_FILE\n");
        return 2;
    }
    long workers = atol(argv[1]);
    int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, 4096) != 0 || pipe(pipe_fds) != 0) {
        perror("many_threads");
        return 2;
    }
    ticks = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    tids = calloc((size_t)workers, sizeof *tids);
    if (ticks == MAP_FAILED || tids == NULL) {
        perror("many_threads");
        return 2;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_barrier_init(&started, NULL, (unsigned)workers + 2);
    pthread_t thread;
    if (pthread_create(&thread, &attr, heartbeat, NULL) != 0) {
        perror("pthread_create");
        return 2;
    }
    pthread_setname_np(thread, "heartbeat");
    for (long i = 0; i < workers; i++) {
        char name[16];
        if (pthread_create(&thread, &attr, worker, (void *)i) != 0) {
            perror("pthread_create");
            return 2;
        }
        snprintf(name, sizeof name, "w-%04ld", i);
        pthread_setname_np(thread, name);
    }
    pthread_barrier_wait(&started);
    printf("thread main %ld\nthread heartbeat %ld\n", (long)getpid(), (long)heartbeat_tid);
    for (long i = 0; i < workers; i++)
        printf("thread w-%04ld %ld\n", i, (long)tids[i]);
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
