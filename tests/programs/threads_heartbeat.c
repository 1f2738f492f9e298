/* A target for redhand's freeze tests.
 *
 * usage: threads_heartbeat WORKERS HEARTBEAT_FILE [--no-spin] [--churn=K] [--vfork-ms=N]
 *                          [--leader-exits] [--heap-mb=N] [--hugepages]
 *
 * Starts WORKERS worker threads, each a few frames deep and blocked in a
 * different call: pthread_cond_wait (futex), nanosleep, read on a pipe, poll,
 * epoll_wait; worker 0 spins in user code instead (unless --no-spin).  With
 * --churn=K, K more threads create and join short-lived threads in a loop.
 * With --vfork-ms=N, a thread named "vfork" vforks, again and again, a child
 * that sleeps N ms: meanwhile that thread is in an uninterruptible wait (D),
 * where no ptrace stop can reach it; `vforks` counts the children.  SIGUSR1
 * is counted in `usr1`.
 *
 * A heartbeat thread (SCHED_FIFO when allowed) ticks every ~100 us
 * (CLOCK_MONOTONIC) and records the longest gap between ticks in
 * HEARTBEAT_FILE (struct heartbeat below, mapped shared): a freeze shows up
 * as a gap as long as the heartbeat was stopped.
 * To measure one freeze, increment `reset`, wait until `reset_ack` equals it,
 * freeze, then read `max_gap_ns`.
 *
 * With --heap-mb=N, N MiB of anonymous memory are touched before "ready", as
 * a real heap would be: the first half random bytes (incompressible), a
 * quarter written zeros, a quarter a repeating pattern; --hugepages asks for
 * transparent huge pages there (MADV_HUGEPAGE).  `heap` below holds its
 * address, for tests that compare a core's bytes with the process's.
 *
 * Prints "ready\n" once every thread runs; then the main thread reads its
 * standard input and exits when it is closed (with --leader-exits, the main
 * thread calls pthread_exit instead: a zombie leader, the others run on).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define KEEP_FRAME() __asm__ volatile("" ::: "memory") /* no tail calls */

struct heartbeat {
    uint64_t ticks;      /* 0: ticks so far */
    uint64_t max_gap_ns; /* 8: longest gap between ticks since the last reset */
    uint64_t last_ns;    /* 16: CLOCK_MONOTONIC of the last tick */
    uint64_t reset;      /* 24: written by the test */
    uint64_t reset_ack;  /* 32: the heartbeat's answer: max_gap_ns was reset */
    uint64_t churned;    /* 40: short-lived threads created and joined */
    uint64_t spins;      /* 48: iterations of the spinning worker (in thousands) */
    uint64_t usr1;       /* 56: SIGUSR1 signals handled */
    uint64_t vforks;     /* 64: vfork children waited for */
};

static struct heartbeat *hb;
static pthread_barrier_t started;
static pthread_mutex_t never_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never_cond = PTHREAD_COND_INITIALIZER;
static int never_flag;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* -- the blocking calls, each two frames below the worker's entry -- */

NOINLINE static void block_in_cond(void) {
    pthread_mutex_lock(&never_mutex);
    while (!never_flag)
        pthread_cond_wait(&never_cond, &never_mutex);
    pthread_mutex_unlock(&never_mutex);
}

NOINLINE static void block_in_sleep(void) {
    for (;;) {
        struct timespec ts = {1000, 0};
        nanosleep(&ts, NULL);
        KEEP_FRAME();
    }
}

NOINLINE static void block_in_read(void) {
    int fds[2];
    char byte;
    if (pipe(fds) != 0)
        die("pipe");
    for (;;) {
        if (read(fds[0], &byte, 1) == 1)
            break;
        KEEP_FRAME();
    }
}

NOINLINE static void block_in_poll(void) {
    int fds[2];
    if (pipe(fds) != 0)
        die("pipe");
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    for (;;) {
        poll(&pfd, 1, -1);
        KEEP_FRAME();
    }
}

NOINLINE static void block_in_epoll(void) {
    int fds[2];
    if (pipe(fds) != 0)
        die("pipe");
    int ep = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fds[0]};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fds[0], &event) != 0)
        die("epoll");
    for (;;) {
        /* epoll_wait returns EINTR after a ptrace stop: Linux never restarts it. */
        epoll_wait(ep, &event, 1, -1);
        KEEP_FRAME();
    }
}

NOINLINE static void spin_in_user_code(void) {
    volatile uint64_t counter = 0;
    for (;;) {
        for (int i = 0; i < 1000; i++)
            counter++;
        __atomic_add_fetch(&hb->spins, 1, __ATOMIC_RELAXED);
    }
}

typedef void (*block_fn)(void);

struct kind {
    const char *name;
    block_fn fn;
};

static const struct kind kinds[] = {
    {"cond", block_in_cond},   {"sleep", block_in_sleep}, {"read", block_in_read},
    {"poll", block_in_poll},   {"epoll", block_in_epoll},
};
static const struct kind spin_kind = {"spin", spin_in_user_code};

NOINLINE static void worker_middle(block_fn fn) {
    fn();
    KEEP_FRAME();
}

static void *worker_main(void *arg) {
    const struct kind *kind = arg;
    pthread_barrier_wait(&started);
    worker_middle(kind->fn);
    KEEP_FRAME();
    return NULL;
}

/* -- the heartbeat -- */

static void *heartbeat_main(void *arg) {
    (void)arg;
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* tick on time, not 50 us late */
    /* Real-time priority where allowed (root): then a gap means the thread was
     * stopped, not that busy threads of other programs kept it off a CPU. */
    struct sched_param param = {.sched_priority = 1};
    pthread_setschedparam(pthread_self(), SCHED_FIFO, &param);
    uint64_t last = now_ns();
    __atomic_store_n(&hb->last_ns, last, __ATOMIC_RELEASE);
    pthread_barrier_wait(&started);
    last = now_ns();
    for (;;) {
        struct timespec ts = {0, 100000};
        clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
        uint64_t now = now_ns();
        uint64_t gap = now - last;
        uint64_t reset = __atomic_load_n(&hb->reset, __ATOMIC_ACQUIRE);
        if (reset != hb->reset_ack) {
            __atomic_store_n(&hb->max_gap_ns, 0, __ATOMIC_RELEASE);
            __atomic_store_n(&hb->reset_ack, reset, __ATOMIC_RELEASE);
        } else if (gap > hb->max_gap_ns) {
            __atomic_store_n(&hb->max_gap_ns, gap, __ATOMIC_RELEASE);
        }
        __atomic_store_n(&hb->last_ns, now, __ATOMIC_RELEASE);
        __atomic_add_fetch(&hb->ticks, 1, __ATOMIC_ACQ_REL);
        last = now;
    }
    return NULL;
}

/* -- threads that come and go -- */

NOINLINE static void *short_lived(void *arg) {
    volatile char scratch[256];
    memset((char *)scratch, 1, sizeof scratch);
    struct timespec ts = {0, 50000}; /* live 50 us */
    nanosleep(&ts, NULL);
    KEEP_FRAME();
    return arg;
}

static void *churn_main(void *arg) {
    (void)arg;
    pthread_barrier_wait(&started);
    for (;;) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, short_lived, NULL) == 0) {
            pthread_join(thread, NULL);
            __atomic_add_fetch(&hb->churned, 1, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

/* -- a thread that waits for vfork children, in state D -- */

static int vfork_ms;

static void *vfork_main(void *arg) {
    (void)arg;
    pthread_barrier_wait(&started);
    for (;;) {
        pid_t child = vfork();
        if (child == 0) {
            struct timespec ts = {vfork_ms / 1000, (long)(vfork_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
            _exit(0);
        }
        if (child > 0) {
            waitpid(child, NULL, 0);
            __atomic_add_fetch(&hb->vforks, 1, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

static unsigned char *heap;

static void fill_heap(size_t megabytes, int hugepages) {
    size_t size = megabytes << 20;
    heap = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (heap == MAP_FAILED)
        die("mmap heap");
    if (hugepages)
        madvise(heap, size, MADV_HUGEPAGE);
    uint64_t state = 0x9E3779B97F4A7C15u;
    uint64_t *words = (uint64_t *)heap;
    for (size_t i = 0; i < size / 2 / 8; i++) { /* xorshift64: incompressible */
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        words[i] = state;
    }
    memset(heap + size / 2, 0, size / 4); /* written zeros: present pages, all zero */
    for (size_t i = size / 2 + size / 4; i < size; i++)
        heap[i] = (unsigned char)(i * 7);
}

static void on_usr1(int sig) {
    (void)sig;
    __atomic_add_fetch(&hb->usr1, 1, __ATOMIC_RELAXED);
}

static void start(pthread_attr_t *attr, void *(*fn)(void *), void *arg, const char *name) {
    pthread_t thread;
    int err = pthread_create(&thread, attr, fn, arg);
    if (err != 0) {
        errno = err;
        die("pthread_create");
    }
    pthread_setname_np(thread, name);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s WORKERS HEARTBEAT_FILE [--no-spin] [--churn=K]\n", argv[0]);
        return 2;
    }
    int workers = atoi(argv[1]);
    int spin = 1, churn = 0, leader_exits = 0, hugepages = 0;
    long heap_mb = 0;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--no-spin") == 0)
            spin = 0;
        else if (strncmp(argv[i], "--churn=", 8) == 0)
            churn = atoi(argv[i] + 8);
        else if (strncmp(argv[i], "--vfork-ms=", 11) == 0)
            vfork_ms = atoi(argv[i] + 11);
        else if (strcmp(argv[i], "--leader-exits") == 0)
            leader_exits = 1;
        else if (strncmp(argv[i], "--heap-mb=", 10) == 0)
            heap_mb = atol(argv[i] + 10);
        else if (strcmp(argv[i], "--hugepages") == 0)
            hugepages = 1;
    }
    if (heap_mb > 0)
        fill_heap((size_t)heap_mb, hugepages);
    int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, sizeof(struct heartbeat)) != 0)
        die(argv[2]);
    hb = mmap(NULL, sizeof(struct heartbeat), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (hb == MAP_FAILED)
        die("mmap");

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    unsigned parties = (unsigned)(workers + churn + 2 + (vfork_ms > 0));
    if (pthread_barrier_init(&started, NULL, parties) != 0)
        die("pthread_barrier_init");
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_usr1;
    action.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &action, NULL);

    start(&attr, heartbeat_main, NULL, "heartbeat");
    for (int i = 0; i < workers; i++) {
        const struct kind *kind = (spin && i == 0) ? &spin_kind : &kinds[i % 5];
        char name[16];
        snprintf(name, sizeof name, "%s-%hu", kind->name, (unsigned short)i);
        start(&attr, worker_main, (void *)kind, name);
    }
    for (int i = 0; i < churn; i++) {
        char name[16];
        snprintf(name, sizeof name, "churn-%hu", (unsigned short)i);
        start(&attr, churn_main, NULL, name);
    }
    if (vfork_ms > 0)
        start(&attr, vfork_main, NULL, "vfork");
    pthread_barrier_wait(&started);
    if (heap_mb > 0)
        printf("heap %p\n", (void *)heap);
    printf("ready\n");
    fflush(stdout);
    if (leader_exits)
        pthread_exit(NULL);

    char buffer[64];
    while (read(0, buffer, sizeof buffer) > 0)
        ;
    return 0;
}
