/* SIGSEGV (SEGV_MAPERR): read through a wild pointer, 0x100000000000, mapped by nothing. */
__attribute__((noinline, noipa)) long load(long *pointer) { return *pointer; }

int main(void) {
    long *volatile pointer = (long *)0x100000000000UL;
    return (int)load(pointer);
}
