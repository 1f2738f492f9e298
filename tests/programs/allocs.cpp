// allocs: a program whose allocations are known, call site by call site.
//
//   allocs PLUGIN
//
// Prints "ready" and waits for a line on stdin; then, from known functions:
//   direct()        1000 x malloc(100)                           freed
//   via_strdup()     500 x strdup of a 39-character string        freed
//   via_qsort()      qsort of 64 ints whose comparison callback mallocs(24) each call (it
//                    prints how many: "compares N")                freed
//   make_widgets()   300 x new Widget (48 bytes)                  deleted
//   a thread started now: thread_work() 200 x malloc(64)          freed
//   PLUGIN dlopen'ed now: plugin_alloc(150) 150 x malloc(32)      freed
//   leaky()           40 x malloc(65536)                          never freed
//   use_pool()        70 x pool_get(80) and pool_put: an allocator of the program's own
//   map_pages()       mmap of 1 MiB (anonymous), then munmap of it
// then prints "checksum C" (a sum over everything it computed, the same with or without a
// profiler) and waits for another line before exiting 0.
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static uint64_t checksum;
static long compares;
static void *leaked[40];

struct Widget {
	uint64_t values[6];
};

extern "C" __attribute__((noinline)) void direct(void)
{
	for (int i = 0; i < 1000; i++) {
		unsigned char *volatile block = (unsigned char *)malloc(100);
		block[0] = (unsigned char)i;
		checksum += block[0];
		free(block);
	}
}

extern "C" __attribute__((noinline)) void via_strdup(void)
{
	static const char text[] = "a string of thirty-nine characters!!!!";
	for (int i = 0; i < 500; i++) {
		char *copy = strdup(text);
		checksum += (uint64_t)strlen(copy);
		free(copy);
	}
}

extern "C" __attribute__((noinline)) int compare(const void *a, const void *b)
{
	int *volatile scratch = (int *)malloc(24);
	scratch[0] = *(const int *)a - *(const int *)b;
	int result = scratch[0];
	free(scratch);
	compares++;
	return result;
}

extern "C" __attribute__((noinline)) void via_qsort(void)
{
	int values[64];
	for (int i = 0; i < 64; i++)
		values[i] = (i * 37) % 64;
	qsort(values, 64, sizeof values[0], compare);
	for (int i = 0; i < 64; i++)
		checksum += (uint64_t)values[i] * (uint64_t)i;
}

extern "C" __attribute__((noinline)) void make_widgets(void)
{
	for (int i = 0; i < 300; i++) {
		Widget *volatile widget = new Widget(); /* volatile: new and delete are kept */
		widget->values[0] = (uint64_t)i;
		checksum += widget->values[0];
		delete widget;
	}
}

extern "C" __attribute__((noinline)) void *thread_work(void *)
{
	for (int i = 0; i < 200; i++) {
		uint64_t *volatile block = (uint64_t *)malloc(64);
		block[0] = (uint64_t)i;
		__atomic_fetch_add(&checksum, block[0], __ATOMIC_RELAXED);
		free(block);
	}
	return nullptr;
}

static unsigned char pool[80 * 8];
static int pool_next;

extern "C" __attribute__((noinline, used)) void *pool_get(size_t size)
{
	void *block = &pool[(pool_next++ % 8) * 80];
	memset(block, 0, size);
	return block;
}

extern "C" __attribute__((noinline, used)) void pool_put(void *block)
{
	checksum += ((unsigned char *)block)[0];
}

extern "C" __attribute__((noinline)) void use_pool(void)
{
	for (int i = 0; i < 70; i++) {
		unsigned char *block = (unsigned char *)pool_get(80);
		block[0] = (unsigned char)i;
		pool_put(block);
	}
}

extern "C" __attribute__((noinline)) void map_pages(void)
{
	unsigned char *pages = (unsigned char *)mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE,
						      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	pages[4096] = 7;
	checksum += pages[4096];
	munmap(pages, 1 << 20);
}

extern "C" __attribute__((noinline)) void leaky(void)
{
	for (int i = 0; i < 40; i++) {
		leaked[i] = malloc(65536);
		memset(leaked[i], i, 65536);
		checksum += ((unsigned char *)leaked[i])[100];
	}
}

int main(int argc, char **argv)
{
	char line[64];
	setvbuf(stdout, nullptr, _IOLBF, 0);
	puts("ready");
	if (!fgets(line, sizeof line, stdin))
		return 1;
	direct();
	via_strdup();
	via_qsort();
	make_widgets();
	pthread_t worker;
	pthread_create(&worker, nullptr, thread_work, nullptr);
	pthread_join(worker, nullptr);
	if (argc > 1) {
		void *plugin = dlopen(argv[1], RTLD_NOW);
		if (plugin == nullptr) {
			fprintf(stderr, "%s\n", dlerror());
			return 3;
		}
		auto work = (uint64_t(*)(int))dlsym(plugin, "plugin_alloc");
		checksum += work(150);
	}
	use_pool();
	map_pages();
	leaky();
	printf("compares %ld\n", compares);
	printf("checksum %llu\n", (unsigned long long)checksum);
	if (!fgets(line, sizeof line, stdin))
		return 0;
	return 0;
}
