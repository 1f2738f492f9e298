/* A target for redhand gcore's tests: memory of every kind a core must get right.
 *
 * usage: gcore_target STATE_FILE [--threads=N] [--heap-mb=N] [--child] [--seccomp]
 *
 * Before "ready" it sets up:
 *   - N worker threads (default 3) parked in pthread_cond_wait, a thread
 *     parked in read() on a pipe, the main thread parked in pause();
 *   - a heap of N MiB (default 16): half random bytes, a quarter written
 *     zeros, a quarter a pattern, and one page never touched in the middle
 *     of the random half;
 *   - regions marked MADV_DONTDUMP, MADV_DONTFORK and MADV_WIPEONFORK, a
 *     MAP_SHARED anonymous region, a private file mapping written to, each
 *     filled with its own byte;
 *   - a SIGCHLD handler that counts what it gets;
 *   - with --child, a child process of its own that sleeps, and a thread
 *     blocked in waitpid(-1) for it: what it reaps is recorded;
 *   - with --seccomp, a seccomp filter that kills the process on a clone()
 *     that makes a process rather than a thread (the danger of a fork
 *     snapshot).
 * The shared STATE_FILE (mapped) holds: sigchld count, the pid the waiting
 * thread reaped, and then the addresses of the regions (see struct state).
 * It prints "thread NAME TID" for each thread, the regions as
 * "region NAME ADDRESS SIZE", then "ready".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

struct state {
    volatile uint64_t sigchld;  /* SIGCHLD signals handled */
    volatile uint64_t reaped;   /* the pid the waiting thread reaped (0: none yet) */
    volatile uint64_t own_child; /* the pid of the child it made */
};

static struct state *state;
static pthread_barrier_t started;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static int pipe_fds[2];
static pid_t tids[64];
static int nthreads = 3;

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void on_sigchld(int sig) {
    (void)sig;
    __atomic_add_fetch(&state->sigchld, 1, __ATOMIC_RELAXED);
}

NOINLINE static void park(void) {
    pthread_mutex_lock(&lock);
    for (;;)
        pthread_cond_wait(&never, &lock);
}

/* A few frames deep, each with bytes of its own on the stack. */
NOINLINE static void wait_forever(int depth) {
    volatile char frame[64];
    if (depth < 0)
        return;
    memset((char *)frame, 'A' + depth, sizeof frame);
    if (depth > 0)
        wait_forever(depth - 1);
    else
        park();
    KEEP_FRAME();
}

static void *worker(void *arg) {
    long index = (long)arg;
    tids[index] = (pid_t)syscall(SYS_gettid);
    pthread_barrier_wait(&started);
    wait_forever((int)index + 1);
    return NULL;
}

static pid_t reader_tid, waiter_tid;

static void *reader(void *arg) {
    (void)arg;
    reader_tid = (pid_t)syscall(SYS_gettid);
    pthread_barrier_wait(&started);
    char byte;
    for (;;) {
        if (read(pipe_fds[0], &byte, 1) == 1)
            break;
    }
    return NULL;
}

static void *waiter(void *arg) {
    (void)arg;
    waiter_tid = (pid_t)syscall(SYS_gettid);
    pthread_barrier_wait(&started);
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid > 0)
            state->reaped = (uint64_t)pid;
        else if (errno == ECHILD)
            pause();
    }
    return NULL;
}

static void *region(const char *name, size_t size, int flags, int fd, int advice, int fill) {
    void *at = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (at == MAP_FAILED)
        die(name);
    if (advice >= 0 && madvise(at, size, advice) != 0)
        die(name);
    memset(at, fill, size);
    printf("region %s %p %zu\n", name, at, size);
    return at;
}

static void kill_on_process_clone(void) {
    /* clone(flags, ...) without CLONE_THREAD: SECCOMP_RET_KILL_PROCESS. */
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {sizeof filter / sizeof filter[0], filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0)
        die("seccomp");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: gcore_target STATE_FILE [options]\n");
        return 2;
    }
    long heap_mb = 16;
    int child = 0, seccomp = 0;
    for (int i = 2; i < argc; i++) {
        if (strncmp(argv[i], "--threads=", 10) == 0)
            nthreads = atoi(argv[i] + 10);
        else if (strncmp(argv[i], "--heap-mb=", 10) == 0)
            heap_mb = atol(argv[i] + 10);
        else if (strcmp(argv[i], "--child") == 0)
            child = 1;
        else if (strcmp(argv[i], "--seccomp") == 0)
            seccomp = 1;
    }
    if (nthreads > 64)
        nthreads = 64;
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, 4096) != 0)
        die(argv[1]);
    state = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (state == MAP_FAILED)
        die("mmap state");
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_sigchld;
    action.sa_flags = SA_RESTART;
    sigaction(SIGCHLD, &action, NULL);
    if (pipe(pipe_fds) != 0)
        die("pipe");

    /* The heap: random, written zeros, a pattern; one page in the random half untouched. */
    size_t size = (size_t)heap_mb << 20;
    unsigned char *heap = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (heap == MAP_FAILED)
        die("mmap heap");
    uint64_t seed = 0x9E3779B97F4A7C15u;
    for (size_t i = 0; i < size / 2; i += 8) {
        if (i / 4096 == 3)
            continue; /* page 3: never touched */
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        memcpy(heap + i, &seed, 8);
    }
    memset(heap + size / 2, 0, size / 4);
    for (size_t i = size / 2 + size / 4; i < size; i++)
        heap[i] = (unsigned char)(i * 7);
    printf("region heap %p %zu\n", (void *)heap, size);
    region("dontdump", 1 << 20, MAP_PRIVATE | MAP_ANONYMOUS, -1, MADV_DONTDUMP, 0x11);
    region("dontfork", 64 << 10, MAP_PRIVATE | MAP_ANONYMOUS, -1, MADV_DONTFORK, 0x22);
    region("wipeonfork", 64 << 10, MAP_PRIVATE | MAP_ANONYMOUS, -1, MADV_WIPEONFORK, 0x33);
    region("shared", 256 << 10, MAP_SHARED | MAP_ANONYMOUS, -1, -1, 0x44);
    int self = open(argv[0], O_RDONLY);
    if (self < 0)
        die(argv[0]);
    region("fileprivate", 4096, MAP_PRIVATE, self, -1, 0x55);

    if (child) {
        pid_t pid = fork();
        if (pid == 0) {
            for (;;)
                pause();
        }
        if (pid < 0)
            die("fork");
        state->own_child = (uint64_t)pid;
    }
    if (seccomp)
        kill_on_process_clone();

    pthread_barrier_init(&started, NULL, (unsigned)nthreads + 2 + child);
    pthread_t thread;
    for (long i = 0; i < nthreads; i++)
        if (pthread_create(&thread, NULL, worker, (void *)i) != 0)
            die("pthread_create");
    if (pthread_create(&thread, NULL, reader, NULL) != 0)
        die("pthread_create");
    if (child && pthread_create(&thread, NULL, waiter, NULL) != 0)
        die("pthread_create");
    pthread_barrier_wait(&started);
    printf("thread main %ld\n", (long)getpid());
    for (int i = 0; i < nthreads; i++)
        printf("thread w%d %ld\n", i, (long)tids[i]);
    printf("thread reader %ld\n", (long)reader_tid);
    if (child)
        printf("thread waiter %ld\n", (long)waiter_tid);
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
