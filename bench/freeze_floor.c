/* The kernel's share of a freeze: the system calls of redhand's capture, in C, and nothing else.
 *
 * What redhand does while a process is frozen, in the same order, with no
 * interpreter around it: PTRACE_SEIZE every thread, PTRACE_INTERRUPT every
 * thread, wait for every stop, PTRACE_GETREGSET every thread, copy each
 * thread's used stack (from 128 bytes below sp to the end of its mapping, at
 * most 1 MiB) with process_vm_readv, up to 1,024 ranges a call, then
 * PTRACE_DETACH every thread.  No unwinding, no symbols, no output.
 *
 * bench/stack.py runs it as the "C floor" row: the shortest freeze any tool
 * can achieve that stops every thread together and copies what unwinding
 * needs, on this machine and kernel.
 *
 * Usage: freeze_floor PID
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <elf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>

#define MAX_THREADS 65536
#define MAX_MAPS 65536
#define STACK_LIMIT (1 << 20)
#define RED_ZONE 128
#define BATCH 1024

static int tids[MAX_THREADS];
static struct user_regs_struct regs[MAX_THREADS];
static unsigned long map_start[MAX_MAPS], map_end[MAX_MAPS];

static int list_threads(int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *dir = opendir(path);
    if (dir == NULL) {
        perror(path);
        exit(1);
    }
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL && count < MAX_THREADS)
        if (entry->d_name[0] != '.') tids[count++] = atoi(entry->d_name);
    closedir(dir);
    return count;
}

static int read_maps(int pid) {
    char path[64], line[4096];
    snprintf(path, sizeof path, "/proc/%d/maps", pid);
    FILE *maps = fopen(path, "r");
    if (maps == NULL) {
        perror(path);
        exit(1);
    }
    int count = 0;
    while (count < MAX_MAPS && fgets(line, sizeof line, maps) != NULL)
        if (sscanf(line, "%lx-%lx", &map_start[count], &map_end[count]) == 2) count++;
    fclose(maps);
    return count;
}

static unsigned long mapping_end(int maps, unsigned long address) {
    for (int i = 0; i < maps; i++)
        if (map_start[i] <= address && address < map_end[i]) return map_end[i];
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PID\n", argv[0]);
        return 2;
    }
    int pid = atoi(argv[1]);
    int count = list_threads(pid);
    int maps = read_maps(pid);
    size_t prepared = (size_t)count * 16384;
    char *buffer = malloc(prepared);
    memset(buffer, 0, prepared); /* faulted in before the freeze, as redhand does */
    struct iovec local[BATCH], remote[BATCH];

    for (int i = 0; i < count; i++)
        if (ptrace(PTRACE_SEIZE, tids[i], 0, 0) != 0) perror("PTRACE_SEIZE");
    for (int i = 0; i < count; i++) ptrace(PTRACE_INTERRUPT, tids[i], 0, 0);
    for (int i = 0; i < count; i++) {
        siginfo_t info;
        waitid(P_PID, tids[i], &info, WSTOPPED | __WALL | WNOWAIT);
    }
    for (int i = 0; i < count; i++) {
        struct iovec io = {&regs[i], sizeof regs[i]};
        ptrace(PTRACE_GETREGSET, tids[i], NT_PRSTATUS, &io);
    }
    /* Each thread's range; a buffer larger than the one faulted in beforehand
     * is allocated now, while frozen, as redhand does when its estimate is short. */
    static unsigned long starts[MAX_THREADS];
    static size_t lengths[MAX_THREADS];
    size_t total = 0;
    for (int i = 0; i < count; i++) {
        unsigned long start = regs[i].rsp - RED_ZONE, end = mapping_end(maps, regs[i].rsp);
        starts[i] = start;
        lengths[i] = end == 0 ? 0 : (end - start > STACK_LIMIT ? STACK_LIMIT : end - start);
        total += lengths[i];
    }
    if (total > prepared) {
        buffer = malloc(total);
        if (buffer == NULL) {
            perror("malloc");
            for (int i = 0; i < count; i++) ptrace(PTRACE_DETACH, tids[i], 0, 0);
            return 1;
        }
    }
    size_t used = 0, copied = 0;
    for (int first = 0; first < count; first += BATCH) {
        int ranges = 0;
        size_t wanted = 0;
        for (int i = first; i < count && i < first + BATCH; i++) {
            if (lengths[i] == 0) continue;
            local[ranges] = (struct iovec){buffer + used, lengths[i]};
            remote[ranges] = (struct iovec){(void *)starts[i], lengths[i]};
            used += lengths[i];
            wanted += lengths[i];
            ranges++;
        }
        ssize_t got = process_vm_readv(pid, local, ranges, remote, ranges, 0);
        if (got > 0) copied += (size_t)got;
        if ((size_t)got != wanted) fprintf(stderr, "process_vm_readv: %zd of %zu bytes\n", got, wanted);
    }
    for (int i = 0; i < count; i++) ptrace(PTRACE_DETACH, tids[i], 0, 0);
    fprintf(stderr, "%d threads, %zu stack bytes\n", count, copied);
    return 0;
}
