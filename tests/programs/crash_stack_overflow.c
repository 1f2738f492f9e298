/* SIGSEGV: unbounded recursion overflows the main thread's stack (build with -O0). */
__attribute__((noinline)) long recurse(long depth) {
    volatile char buffer[256];
    buffer[0] = (char)depth;
    return recurse(depth + 1) + buffer[0];
}

int main(void) { return (int)recurse(0); }
