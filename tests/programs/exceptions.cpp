// exceptions.cpp: C++ threads caught with an exception in flight.
//
// Same handshake as threads.c: one "thread NAME TID" line per thread, then
// "ready" once every thread sits in its final state (the test waits for the
// blocked ones to be inside their system call).
//
// Threads:
//   main       main -> rh::wait_forever -> pthread_join
//   unwinding  rh::detail::Worker<std::vector<int>>::run -> rh::thrower<int> throws
//              rh::Oops; while it propagates, the destructor of a rh::Guard<int> in
//              rh::thrower<int> blocks in read() (through rh::block_in_read)
//   terminate  rh::Outer::call -> rh::noexcept_thrower throws from a noexcept
//              function; std::terminate calls rh::on_terminate, which blocks
//   catching   rh::catcher -> catch block -> rh::(anonymous namespace)::in_handler,
//              blocks with the exception caught
//   lambda     rh::call_it -> std::function -> a lambda in rh::lambda_entry, blocks
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <vector>

#define KEEP __attribute__((noinline, noipa))

static volatile unsigned long counter;
static int pipe_fds[2];

struct Started {
    const char *name;
    pid_t tid;
};

static Started started[16];
static int num_started;
static pthread_mutex_t started_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t started_cond = PTHREAD_COND_INITIALIZER;

static void announce(const char *name)
{
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&started_lock);
    started[num_started].name = name;
    started[num_started].tid = static_cast<pid_t>(syscall(SYS_gettid));
    num_started++;
    pthread_cond_broadcast(&started_cond);
    pthread_mutex_unlock(&started_lock);
}

namespace rh {

struct Oops : std::runtime_error {
    explicit Oops(const char *what) : std::runtime_error(what) {}
};

// Blocks forever in read() on a pipe nobody writes to.
KEEP void block_in_read(int why)
{
    char byte;
    counter += static_cast<unsigned long>(why);
    while (read(pipe_fds[0], &byte, 1) != 0)
        counter++;
    abort();
}

template <typename T>
struct Guard {
    T value;
    explicit Guard(T v) : value(v) {}
    KEEP ~Guard()
    {
        if (std::uncaught_exceptions() > 0)
            block_in_read(static_cast<int>(value));
        counter++;
    }
};

template <typename T>
KEEP void thrower(T value)
{
    Guard<T> guard(value);
    counter++;
    if (counter != 0)
        throw Oops("in flight");
    counter++;
}

namespace detail {

template <typename Container>
struct Worker {
    Container items;
    KEEP void run(int depth)
    {
        items.push_back(depth);
        thrower<int>(depth);
        counter++;
    }
};

}  // namespace detail

KEEP void *unwinding_entry(void *)
{
    announce("unwinding");
    detail::Worker<std::vector<int>> worker;
    try {
        worker.run(3);
    } catch (const Oops &) {
        abort();  // never reached: the guard's destructor never returns
    }
    return nullptr;
}

// -- terminate ---------------------------------------------------------------

[[noreturn]] KEEP void on_terminate()
{
    block_in_read(2);
    abort();
}

KEEP void noexcept_thrower(int n) noexcept
{
    counter++;
    if (n > 0)
        throw Oops("escapes a noexcept function");
}

struct Outer {
    KEEP static void call(int n)
    {
        noexcept_thrower(n);
        counter++;
    }
};

KEEP void *terminate_entry(void *)
{
    announce("terminate");
    Outer::call(1);
    return nullptr;
}

// -- catching ----------------------------------------------------------------

namespace {

KEEP void in_handler(const Oops &oops)
{
    counter += std::strlen(oops.what());
    block_in_read(4);
    counter++;  // not a tail call: in_handler keeps its frame
}

}  // namespace

KEEP void raise_oops() { throw Oops("caught"); }

KEEP void catcher()
{
    try {
        raise_oops();
    } catch (const Oops &oops) {
        in_handler(oops);
    }
    counter++;
}

KEEP void *catching_entry(void *)
{
    announce("catching");
    catcher();
    return nullptr;
}

// -- lambda through std::function --------------------------------------------

KEEP void call_it(const std::function<void(int)> &function) { function(5); }

KEEP void *lambda_entry(void *)
{
    announce("lambda");
    int local = 1;
    call_it([&local](int n) {
        local += n;
        block_in_read(local);
        counter += static_cast<unsigned long>(local);
    });
    return nullptr;
}

KEEP void wait_forever(pthread_t thread)
{
    pthread_join(thread, nullptr);
    counter++;
}

}  // namespace rh

int main()
{
    if (pipe(pipe_fds) != 0) {
        std::fprintf(stderr, "exceptions: pipe: %s\n", std::strerror(errno));
        return 2;
    }
    std::set_terminate(rh::on_terminate);
    announce("main");

    void *(*const entries[])(void *) = {
        rh::unwinding_entry, rh::terminate_entry, rh::catching_entry, rh::lambda_entry};
    pthread_t threads[4];
    for (int i = 0; i < 4; i++)
        if (pthread_create(&threads[i], nullptr, entries[i], nullptr) != 0)
            return 2;

    pthread_mutex_lock(&started_lock);
    while (num_started < 5)
        pthread_cond_wait(&started_cond, &started_lock);
    pthread_mutex_unlock(&started_lock);

    for (int i = 0; i < num_started; i++)
        std::printf("thread %s %d\n", started[i].name, static_cast<int>(started[i].tid));
    std::printf("ready\n");
    std::fflush(stdout);
    rh::wait_forever(threads[0]);
    return 0;
}
