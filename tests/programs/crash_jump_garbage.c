/* SIGSEGV (SEGV_MAPERR): call through a garbage function pointer, 0xdeadbeef000. */
typedef int (*callback)(void);

__attribute__((noinline, noipa)) int run(callback function) { return function() + 1; }

int main(void) {
    callback volatile function = (callback)0xdeadbeef000UL;
    return run(function);
}
