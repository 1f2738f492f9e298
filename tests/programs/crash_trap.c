/* SIGILL (ILL_ILLOPN): __builtin_trap() is a ud2 instruction. */
__attribute__((noinline, noipa)) void unreachable_state(int state) {
    if (state != 3)
        __builtin_trap();
}

int main(void) {
    unreachable_state(1);
    return 0;
}
