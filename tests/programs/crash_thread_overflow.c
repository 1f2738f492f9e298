/* SIGSEGV: unbounded recursion overflows a pthread's 256 KiB stack (build with -O0 -pthread). */
#include <pthread.h>

__attribute__((noinline)) long recurse(long depth) {
    volatile char buffer[256];
    buffer[0] = (char)depth;
    return recurse(depth + 1) + buffer[0];
}

static void *worker(void *argument) { return (void *)recurse((long)argument); }

int main(void) {
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    pthread_attr_setstacksize(&attributes, 256 * 1024);
    pthread_t thread;
    if (pthread_create(&thread, &attributes, worker, 0) != 0)
        return 2;
    pthread_join(thread, 0);
    return 0;
}
