/* threads.c: a live target whose threads each sit in a known call chain.
 *
 * Every thread reaches its final state through a chain of noinline, noipa
 * functions (so -O2 keeps each frame), then blocks in one kind of system call,
 * or spins in user code.  The main thread prints one line per thread,
 *
 *     thread NAME TID
 *
 * and then "ready" once every thread has reached its final state (for blocked
 * threads: /proc/self/task/TID/syscall shows the syscall it waits in), then
 * joins a thread that never ends.
 *
 * Threads (their names, as set with pthread_setname_np):
 *   main     main -> main_wait -> pthread_join
 *   cond     cond_entry -> cond_outer -> cond_inner -> pthread_cond_wait
 *   sleep    sleep_entry -> sleep_outer -> sleep_inner -> nanosleep
 *   read     read_entry -> read_outer -> read_inner -> read (a pipe nobody writes)
 *   poll     poll_entry -> poll_outer -> poll_inner -> poll
 *   epoll    epoll_entry -> epoll_outer -> epoll_inner -> epoll_wait
 *   signal   signal_entry -> signal_outer -> signal_inner -> pause, interrupted by
 *            SIGUSR1 whose handler, on_usr1 -> handler_inner, blocks in sigsuspend
 *   raise    raise_entry -> raise_outer -> raise_inner -> raise(SIGUSR2), whose handler
 *            on_usr2 -> handler_inner blocks in sigsuspend
 *   spin     spin_entry -> spin_outer -> spin_loop (-> spin_step), a busy loop
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define KEEP __attribute__((noinline, noipa))

static volatile unsigned long counter;
static volatile sig_atomic_t handler_entered;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static int pipe_fds[2];
static int poll_fds[2];
static int epoll_fd;

struct started {
    const char *name;
    pid_t tid;
};

#define MAX_THREADS 16
static struct started started[MAX_THREADS];
static pthread_mutex_t started_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t started_cond = PTHREAD_COND_INITIALIZER;
static int num_started;

static void die(const char *what)
{
    fprintf(stderr, "threads: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* Record this thread's tid and name, then let the main thread go on. */
KEEP static void announce(const char *name)
{
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&started_lock);
    started[num_started].name = name;
    started[num_started].tid = (pid_t)syscall(SYS_gettid);
    num_started++;
    pthread_cond_broadcast(&started_cond);
    pthread_mutex_unlock(&started_lock);
}

/* -- cond: futex wait through pthread_cond_wait ----------------------------- */

KEEP static void cond_inner(void)
{
    pthread_mutex_lock(&lock);
    for (;;)
        pthread_cond_wait(&never, &lock);
}

KEEP static void cond_outer(void) { cond_inner(); counter++; }

KEEP static void *cond_entry(void *arg)
{
    (void)arg;
    announce("cond");
    cond_outer();
    counter++;
    return NULL;
}

/* -- sleep: nanosleep ------------------------------------------------------- */

KEEP static void sleep_inner(void)
{
    struct timespec long_time = {.tv_sec = 100000, .tv_nsec = 0};
    for (;;)
        nanosleep(&long_time, NULL);
}

KEEP static void sleep_outer(void) { sleep_inner(); counter++; }

KEEP static void *sleep_entry(void *arg)
{
    (void)arg;
    announce("sleep");
    sleep_outer();
    counter++;
    return NULL;
}

/* -- read: read on a pipe nobody writes to ----------------------------------- */

KEEP static void read_inner(void)
{
    char byte;
    for (;;)
        if (read(pipe_fds[0], &byte, 1) == 0)
            return;
}

KEEP static void read_outer(void) { read_inner(); counter++; }

KEEP static void *read_entry(void *arg)
{
    (void)arg;
    announce("read");
    read_outer();
    counter++;
    return NULL;
}

/* -- poll ------------------------------------------------------------------- */

KEEP static void poll_inner(void)
{
    struct pollfd fds = {.fd = poll_fds[0], .events = POLLIN};
    for (;;)
        poll(&fds, 1, -1);
}

KEEP static void poll_outer(void) { poll_inner(); counter++; }

KEEP static void *poll_entry(void *arg)
{
    (void)arg;
    announce("poll");
    poll_outer();
    counter++;
    return NULL;
}

/* -- epoll ------------------------------------------------------------------ */

KEEP static void epoll_inner(void)
{
    struct epoll_event events[4];
    for (;;)
        epoll_wait(epoll_fd, events, 4, -1);
}

KEEP static void epoll_outer(void) { epoll_inner(); counter++; }

KEEP static void *epoll_entry(void *arg)
{
    (void)arg;
    announce("epoll");
    epoll_outer();
    counter++;
    return NULL;
}

/* -- signal: a handler that blocks, entered from a blocked system call ------ */

KEEP static void handler_inner(void)
{
    sigset_t nothing;
    sigfillset(&nothing);
    handler_entered = 1;
    for (;;)
        sigsuspend(&nothing); /* every signal stays blocked: never returns */
}

KEEP static void on_usr1(int signo)
{
    (void)signo;
    handler_inner();
    counter++;
}

KEEP static void signal_inner(void)
{
    for (;;)
        pause();
}

KEEP static void signal_outer(void) { signal_inner(); counter++; }

KEEP static void *signal_entry(void *arg)
{
    (void)arg;
    announce("signal");
    signal_outer();
    counter++;
    return NULL;
}

/* -- raise: a handler entered through raise() at this very thread ------------ */

KEEP static void on_usr2(int signo)
{
    (void)signo;
    handler_inner();
    counter++;
}

KEEP static void raise_inner(void)
{
    raise(SIGUSR2);
    counter++;
}

KEEP static void raise_outer(void) { raise_inner(); counter++; }

KEEP static void *raise_entry(void *arg)
{
    (void)arg;
    announce("raise");
    raise_outer();
    counter++;
    return NULL;
}

/* -- spin: busy in user code -------------------------------------------------- */

KEEP static void spin_step(void) { counter++; }

KEEP static void spin_loop(void)
{
    for (;;) {
        spin_step();
        counter++;
    }
}

KEEP static void spin_outer(void) { spin_loop(); counter++; }

KEEP static void *spin_entry(void *arg)
{
    (void)arg;
    announce("spin");
    spin_outer();
    counter++;
    return NULL;
}

/* -- main ------------------------------------------------------------------- */

/* The syscall a thread is blocked in, from /proc/self/task/TID/syscall; -1 when running. */
static long current_syscall(pid_t tid)
{
    char path[64], text[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)tid);
    FILE *file = fopen(path, "r");
    if (file == NULL)
        die(path);
    long nr = -1;
    if (fgets(text, sizeof text, file) != NULL && text[0] >= '0' && text[0] <= '9')
        nr = strtol(text, NULL, 10);
    fclose(file);
    return nr;
}

static void wait_in_syscall(pid_t tid, long nr)
{
    struct timespec pause_time = {.tv_sec = 0, .tv_nsec = 1000000};
    for (int i = 0; i < 10000; i++) {
        if (current_syscall(tid) == nr)
            return;
        nanosleep(&pause_time, NULL);
    }
    fprintf(stderr, "threads: thread %d never reached syscall %ld\n", (int)tid, nr);
    exit(2);
}

static pid_t tid_of(const char *name)
{
    for (int i = 0; i < num_started; i++)
        if (strcmp(started[i].name, name) == 0)
            return started[i].tid;
    return -1;
}

KEEP static void main_wait(pthread_t thread)
{
    pthread_join(thread, NULL);
    counter++;
}

int main(void)
{
    static void *(*const entries[])(void *) = {
        cond_entry, sleep_entry, read_entry, poll_entry,
        epoll_entry, signal_entry, raise_entry, spin_entry,
    };
    enum { NUM = sizeof entries / sizeof entries[0] };
    pthread_t threads[NUM];

    if (pipe(pipe_fds) != 0 || pipe(poll_fds) != 0)
        die("pipe");
    epoll_fd = epoll_create1(0);
    if (epoll_fd < 0)
        die("epoll_create1");

    struct sigaction action;
    memset(&action, 0, sizeof action);
    sigfillset(&action.sa_mask);
    action.sa_handler = on_usr1;
    if (sigaction(SIGUSR1, &action, NULL) != 0)
        die("sigaction");
    action.sa_handler = on_usr2;
    if (sigaction(SIGUSR2, &action, NULL) != 0)
        die("sigaction");

    announce("main");
    for (int i = 0; i < NUM; i++)
        if (pthread_create(&threads[i], NULL, entries[i], NULL) != 0)
            die("pthread_create");

    pthread_mutex_lock(&started_lock);
    while (num_started < NUM + 1)
        pthread_cond_wait(&started_cond, &started_lock);
    pthread_mutex_unlock(&started_lock);

    /* The signal thread must be inside pause() before SIGUSR1 arrives, so
       the frame below the signal frame is always pause. */
    wait_in_syscall(tid_of("signal"), SYS_pause);
    pthread_kill(threads[5], SIGUSR1);
    wait_in_syscall(tid_of("signal"), SYS_rt_sigsuspend);
    wait_in_syscall(tid_of("raise"), SYS_rt_sigsuspend);
    wait_in_syscall(tid_of("cond"), SYS_futex);
    wait_in_syscall(tid_of("sleep"), SYS_clock_nanosleep);
    wait_in_syscall(tid_of("read"), SYS_read);
    wait_in_syscall(tid_of("poll"), SYS_poll);
    wait_in_syscall(tid_of("epoll"), SYS_epoll_wait);

    for (int i = 0; i < num_started; i++)
        printf("thread %s %d\n", started[i].name, (int)started[i].tid);
    printf("ready\n");
    fflush(stdout);

    main_wait(threads[0]);
    return 0;
}
