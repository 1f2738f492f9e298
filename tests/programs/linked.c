/* linked: a program whose GOT slots the dynamic linker binds in every way it can.
 *
 *   linked [--plugin PATH] [--dlmopen PATH] [--hook-own] [--hook-anon]
 *
 * It calls puts and strlen (an IFUNC in glibc), time (an IFUNC whose variant
 * is in the vdso), getpid and fsync, and takes the addresses of malloc (in
 * data: an R_X86_64_64 relocation) and memcpy (in code: a GLOB_DAT slot, of an
 * IFUNC).  With --plugin it dlopens PATH and calls its plugin_work(),
 * which calls cos() from libm; --dlmopen loads PATH the same way into a new
 * link-map namespace (dlmopen(LM_ID_NEWLM)), with its own libc.  --hook-own points its own GOT slot of puts at
 * hooked_puts, a function of its own (the slot's page made writable first,
 * as under full RELRO) and sets its function pointer `allocate` (which held
 * malloc) to hooked_allocate; --hook-anon points its slot of getpid into an
 * anonymous executable page.  Then it prints "ready" and waits for a line on
 * stdin, and exits 0.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

extern ElfW(Dyn) _DYNAMIC[];
void *(*volatile allocate)(size_t) = malloc; /* a data relocation (R_X86_64_64) */

__attribute__((noinline, used)) int hooked_puts(const char *text)
{
	return fputs(text, stderr);
}

__attribute__((noinline, used)) void *hooked_allocate(size_t size)
{
	return calloc(1, size);
}

static uintptr_t relocated(uintptr_t value, uintptr_t base)
{
	return value < base ? value + base : value; /* ld.so relocates some DT_ entries */
}

/* The address of this program's GOT slot for NAME (a JUMP_SLOT or GLOB_DAT relocation). */
static void **got_slot(const char *name)
{
	uintptr_t base = _r_debug.r_map->l_addr;
	ElfW(Rela) *tables[2] = {0, 0};
	size_t sizes[2] = {0, 0};
	ElfW(Sym) *symbols = 0;
	const char *strings = 0;
	for (ElfW(Dyn) *entry = _DYNAMIC; entry->d_tag != DT_NULL; entry++) {
		uintptr_t value = entry->d_un.d_ptr;
		switch (entry->d_tag) {
		case DT_JMPREL: tables[0] = (ElfW(Rela) *)relocated(value, base); break;
		case DT_PLTRELSZ: sizes[0] = entry->d_un.d_val; break;
		case DT_RELA: tables[1] = (ElfW(Rela) *)relocated(value, base); break;
		case DT_RELASZ: sizes[1] = entry->d_un.d_val; break;
		case DT_SYMTAB: symbols = (ElfW(Sym) *)relocated(value, base); break;
		case DT_STRTAB: strings = (const char *)relocated(value, base); break;
		}
	}
	for (int table = 0; table < 2; table++) {
		for (size_t i = 0; tables[table] && i < sizes[table] / sizeof(ElfW(Rela)); i++) {
			ElfW(Rela) *rela = &tables[table][i];
			unsigned type = ELF64_R_TYPE(rela->r_info);
			if (type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT)
				continue;
			if (strcmp(strings + symbols[ELF64_R_SYM(rela->r_info)].st_name, name) == 0)
				return (void **)(base + rela->r_offset);
		}
	}
	fprintf(stderr, "no GOT slot for %s\n", name);
	exit(3);
}

static void point(const char *name, void *where)
{
	void **slot = got_slot(name);
	void *page = (void *)((uintptr_t)slot & ~(uintptr_t)4095);
	if (mprotect(page, 4096, PROT_READ | PROT_WRITE) != 0) {
		perror("mprotect");
		exit(3);
	}
	*slot = where;
}

int main(int argc, char **argv)
{
	char buffer[64];
	void *(*volatile copy)(void *, const void *, size_t) = memcpy; /* a GLOB_DAT slot */
	const char *plugin = 0, *isolated = 0;
	int hook_own = 0, hook_anon = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--plugin") == 0 && i + 1 < argc)
			plugin = argv[++i];
		else if (strcmp(argv[i], "--dlmopen") == 0 && i + 1 < argc)
			isolated = argv[++i];
		else if (strcmp(argv[i], "--hook-own") == 0)
			hook_own = 1;
		else if (strcmp(argv[i], "--hook-anon") == 0)
			hook_anon = 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	puts("started");
	size_t length = strlen(argv[0]) % sizeof buffer; /* calls, not inlined: IFUNC slots */
	copy(buffer, argv[0], length);
	memcpy(buffer, "linked", 7);
	void *block = allocate(strlen(buffer) + 16);
	printf("%s %ld %d %p\n", buffer, (long)time(NULL) > 0, getpid() > 0, block);
	fsync(1);
	free(block);
	for (int round = 0; round < 2; round++) {
		const char *path = round == 0 ? plugin : isolated;
		if (path == 0)
			continue;
		void *handle = round == 0 ? dlopen(path, RTLD_NOW)
					  : dlmopen(LM_ID_NEWLM, path, RTLD_NOW);
		if (handle == 0) {
			fprintf(stderr, "%s\n", dlerror());
			return 3;
		}
		double (*work)(double) = (double (*)(double))dlsym(handle, "plugin_work");
		printf("plugin %g\n", work(0.0));
	}
	if (hook_own) {
		point("puts", (void *)hooked_puts);
		allocate = hooked_allocate; /* a variable the program may set: not a hook */
	}
	if (hook_anon) {
		unsigned char *page = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
					   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		page[0] = 0xc3; /* ret */
		point("getpid", page);
	}
	fflush(stdout);
	if (write(1, "ready\n", 6) != 6) /* not puts: its slot may be hooked */
		return 3;
	if (fgets(buffer, sizeof buffer, stdin) == 0)
		return 0;
	return 0;
}
