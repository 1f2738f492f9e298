/* SIGSEGV (SI_KERNEL, address 0): read through the non-canonical pointer 0x4141414141414141. */
__attribute__((noinline, noipa)) long load(long *pointer) { return *pointer; }

int main(void) {
    long *volatile pointer = (long *)0x4141414141414141UL;
    return (int)load(pointer);
}
