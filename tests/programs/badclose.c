/* badclose: worker threads close thousands of good descriptors; some close one twice.
 *
 *   badclose [--threads N] [--good N] [--bad N] [--wait] [--loops N] [--abort-core]
 *
 * Threads "worker-0" ... "worker-N-1" each open and close /dev/null --good
 * times; the first --bad of them then close a descriptor (900 + their index)
 * twice, through
 * cleanup_twice() -> release_handle() -> close(), and right after the failing
 * close increment `after_bad` and print "after COUNT tid TID errno E".  Then
 * they do --good more good closes.  The main thread prints "ready" once every
 * worker waits at the start line; with --wait it waits for a line on stdin
 * before letting them go.  The workers start together (a barrier), so the
 * double closes of several threads come at about the same time.
 * At the end: "done AFTER_BAD", exit status 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

volatile long after_bad = 0;

static int threads = 4, good = 2000, bad = 1, loops = 1;
static pthread_barrier_t start_line;

__attribute__((noinline)) static void release_handle(int fd)
{
	if (close(fd) != 0) {
		int error = errno;
		long count = __atomic_add_fetch(&after_bad, 1, __ATOMIC_SEQ_CST);
		printf("after %ld tid %ld errno %d\n", count, (long)syscall(SYS_gettid), error);
		fflush(stdout);
	}
}

__attribute__((noinline)) static void cleanup_twice(int fd)
{
	release_handle(fd);
	release_handle(fd);
	__asm__ volatile("" ::: "memory"); /* no tail call: cleanup_twice stays a frame */
}

__attribute__((noinline)) static void good_closes(int n)
{
	for (int i = 0; i < n; i++) {
		int fd = open("/dev/null", O_RDONLY);
		if (fd < 0 || close(fd) != 0) {
			perror("good close");
			exit(3);
		}
	}
}

static void *worker(void *arg)
{
	long index = (long)arg;
	char name[16];
	snprintf(name, sizeof name, "worker-%ld", index);
	prctl(PR_SET_NAME, name, 0, 0, 0);
	pthread_barrier_wait(&start_line);
	for (int loop = 0; loop < loops; loop++) {
		good_closes(good);
		if (index < bad) {
			/* A descriptor no other thread can be given meanwhile: the second close
			 * fails, and never closes a descriptor of another thread's. */
			int fd = dup2(open("/dev/null", O_RDONLY), 900 + (int)index);
			cleanup_twice(fd);
		}
		good_closes(good);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int wait_for_go = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--good") && i + 1 < argc)
			good = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--bad") && i + 1 < argc)
			bad = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--loops") && i + 1 < argc)
			loops = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--wait"))
			wait_for_go = 1;
		else {
			fprintf(stderr, "badclose: unknown argument %s\n", argv[i]);
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	pthread_t ids[threads];
	pthread_barrier_init(&start_line, NULL, threads + 1);
	for (long i = 0; i < threads; i++)
		pthread_create(&ids[i], NULL, worker, (void *)i);
	printf("ready\n");
	if (wait_for_go) {
		char line[64];
		if (!fgets(line, sizeof line, stdin))
			return 4;
	}
	pthread_barrier_wait(&start_line);
	for (int i = 0; i < threads; i++)
		pthread_join(ids[i], NULL);
	printf("done %ld\n", after_bad);
	return 0;
}
