/* SIGBUS (BUS_ADRERR): read a mapped file's page after the file was truncated.
   argv[1] is the file to create.  Prints the page's address first ("page 0x..."). */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

__attribute__((noinline, noipa)) long load(volatile long *pointer) { return *pointer; }

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 2 * 4096) != 0)
        return 2;
    char *data = mmap(NULL, 2 * 4096, PROT_READ, MAP_SHARED, fd, 0);
    if (data == MAP_FAILED)
        return 2;
    if (ftruncate(fd, 4096) != 0) /* the second page is now beyond the end of the file */
        return 2;
    printf("page %p\n", (void *)(data + 4096));
    fflush(stdout);
    return (int)load((long *)(data + 4096));
}
