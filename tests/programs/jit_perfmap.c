/* A JIT-like program: it writes machine code into an anonymous executable
 * page, names it in /tmp/perf-PID.map as JIT compilers do, and calls it.
 *
 * The generated function, "jit_trampoline", has a frame-pointer prologue and
 * calls the C function pointer passed in its first argument with its second
 * argument, so its frame lies in the middle of the stack:
 *
 *     main -> [jit_trampoline, anonymous memory] -> blocker, waiting in pause()
 *
 * It prints "jit START SIZE", "thread main TID" and "ready".  The perf map
 * also holds a second, unused function and a line that does not parse.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static const unsigned char code[] = {
    0x55,             /* push %rbp           */
    0x48, 0x89, 0xe5, /* mov  %rsp,%rbp      */
    0x48, 0x89, 0xf8, /* mov  %rdi,%rax      */
    0x48, 0x89, 0xf7, /* mov  %rsi,%rdi      */
    0xff, 0xd0,       /* call *%rax          */
    0x5d,             /* pop  %rbp           */
    0xc3,             /* ret                 */
};

volatile long sink;

__attribute__((noinline)) void blocker(long value) {
    printf("thread main %ld\nready\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    for (;;) {
        pause();
        sink += value;
    }
}

int main(void) {
    unsigned char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(page, 0xcc, 4096);
    memcpy(page, code, sizeof code);
    memcpy(page + 256, code, sizeof code);

    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", (int)getpid());
    FILE *map = fopen(path, "w");
    if (map == NULL) {
        perror(path);
        return 1;
    }
    fprintf(map, "%lx %zx jit_trampoline [JIT] tier 1\n", (unsigned long)page, sizeof code);
    fprintf(map, "not a line of a perf map\n");
    fprintf(map, "%lx %zx LazyCompile:*unused /app/x.js:1\n", (unsigned long)(page + 256),
            sizeof code);
    fclose(map);

    printf("jit %lx %zx\n", (unsigned long)page, sizeof code);
    fflush(stdout);
    void (*trampoline)(void (*)(long), long) = (void (*)(void (*)(long), long))page;
    trampoline(blocker, 42);
    sink += 1; /* no tail call: main's frame stays */
    return 0;
}
