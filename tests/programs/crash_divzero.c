/* SIGFPE (FPE_INTDIV): integer division by zero. */
__attribute__((noinline, noipa)) int divide(int a, int b) { return a / b; }

int main(void) {
    volatile int zero = 0;
    return divide(7, zero);
}
