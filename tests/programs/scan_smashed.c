/* A buffer overflow that overwrites its own function's saved frame pointer and
 * return address with 'A's (build with -O0 -fno-stack-protector).
 *
 * usage: scan_smashed live|crash
 *
 * main -> outer -> middle -> smash; smash fills its 16-byte buffer and the 16
 * bytes above it (the saved rbp, then the return address into middle).  With
 * "live" it then prints "thread main TID" and "ready" and waits in pause();
 * with "crash" it returns into 0x4141414141414141 (SIGSEGV, SI_KERNEL).
 * Everything above smash's frame is intact: outer's and main's frames can be
 * found again by scanning above the damage (middle's pc was the overwritten
 * word: it is lost).  outer keeps three words a scan must reject.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int live;
volatile int sink;

/* A call instruction and the address after it, in code but in no function
   (the symbol there is an object, and the function before it ends before the
   padding): a scan must reject the address as outside any named function. */
extern const char rh_after_stray_call[];
__asm__(".text\n.p2align 4\n.type rh_stray_before,@function\nrh_stray_before:\n\tret\n"
        ".size rh_stray_before, 1\n.p2align 4\n.Lrh_stray_call:\n\tcall .Lrh_stray_call\n"
        ".globl rh_after_stray_call\n.type rh_after_stray_call,@object\n"
        "rh_after_stray_call:\n\tud2\n.size rh_after_stray_call, 2\n");

__attribute__((noinline, noipa)) void wait_forever(void) {
    printf("thread main %ld\nready\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    for (;;)
        pause();
}

__attribute__((noinline, noipa)) void smash(void) {
    char buffer[16];
    /* At -O0 rbp is the frame address: the saved rbp is there, the return
       address right above it. */
    char *frame = __builtin_frame_address(0);
    memset(buffer, 'A', (size_t)(frame + 16 - buffer));
    if (live)
        wait_forever();
}

__attribute__((noinline, noipa)) void middle(void) {
    smash();
    sink++;
}

__attribute__((noinline, noipa)) void outer(void) {
    /* Words a scan of this frame rejects, each for its own reason. */
    volatile unsigned long evidence[3];
    evidence[0] = (unsigned long)&sink;               /* data: not executable */
    evidence[1] = (unsigned long)rh_after_stray_call; /* after a call, in no function */
    evidence[2] = (unsigned long)&outer + 1;          /* code, no call before it */
    middle();
    sink++;
}

int main(int argc, char **argv) {
    live = argc > 1 && !strcmp(argv[1], "live");
    outer();
    sink++;
    return 0;
}
