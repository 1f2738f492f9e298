/* SIGSEGV: read a field 16 bytes into a NULL pointer (fault address 0x10). */
#include <stddef.h>

struct record {
    long id;
    long count;
    long value; /* offset 16 */
};

__attribute__((noinline, noipa)) long read_value(struct record *record) { return record->value; }

int main(void) {
    struct record *volatile record = NULL;
    return (int)read_value(record);
}
