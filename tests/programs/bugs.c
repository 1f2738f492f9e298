/* bugs: a few bugs, each reachable from main or from a thread.
 *
 *   bugs BUG WHERE
 *
 * BUG: null (a store through a NULL pointer in store_value), strlen (strlen of NULL in
 * measure), assert (a failed assertion in check_value), recurse (unbounded recursion in
 * descend), reset (the null bug reached from another caller: the same crash site, another
 * path).  WHERE: main, or thread (a thread the program starts).  Each bug sits two calls
 * below run_bug, whatever the entry: process_BUG, then the function that fails.
 */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

volatile int counter;
#define NOINLINE __attribute__((noinline))

NOINLINE void store_value(int *p) { *p = 1; counter++; }
NOINLINE void process_null(void) { store_value(NULL); counter++; }
NOINLINE void process_reset(void) { counter = 0; store_value(NULL); counter++; }

NOINLINE size_t measure(const char *text) { size_t n = strlen(text); counter++; return n; }
NOINLINE void process_strlen(const char *text) { counter += (int)measure(text); }

NOINLINE void check_value(int value) { assert(value > 0); counter++; }
NOINLINE void process_assert(int value) { check_value(value); counter++; }

NOINLINE int descend(int depth)
{
	volatile char pad[256];
	pad[depth % 256] = (char)depth;
	return descend(depth + 1) + pad[(depth + 1) % 256];
}
NOINLINE void process_recurse(void) { counter += descend(0); }

static const char *bug;

NOINLINE void run_bug(void)
{
	if (strcmp(bug, "null") == 0)
		process_null();
	else if (strcmp(bug, "strlen") == 0)
		process_strlen(counter > 1000 ? "" : NULL);
	else if (strcmp(bug, "assert") == 0)
		process_assert(counter - 1);
	else if (strcmp(bug, "reset") == 0)
		process_reset();
	else
		process_recurse();
	counter++;
}

static void *thread_entry(void *unused)
{
	(void)unused;
	run_bug();
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	bug = argv[1];
	if (strcmp(argv[2], "thread") == 0) {
		pthread_t thread;
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, 8 << 20);
		pthread_create(&thread, &attr, thread_entry, NULL);
		pthread_join(thread, NULL);
	} else {
		run_bug();
	}
	return 0;
}
