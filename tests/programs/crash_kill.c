/* Waits to be killed from outside (kill -SEGV): prints "ready", then sleeps in pause(). */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
