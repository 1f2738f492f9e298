/* A small self-unpacking loader, the way packers such as UPX start a program:
 * the code that runs is copied into anonymous memory at its link addresses,
 * and no file backs it.
 *
 *     selfunpack PROGRAM [ARG...]
 *
 * PROGRAM is a static, non-PIE executable.  Its PT_LOAD segments are read into
 * anonymous mappings at their link addresses, protected as the program headers
 * say, and PROGRAM's entry point is entered on a fresh initial stack (argc,
 * argv, envp and an auxiliary vector that describes PROGRAM), as the kernel
 * would have done.  Nothing of PROGRAM is mapped from its file.
 */
#include <elf.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE 4096UL
#define STACK_SIZE (8UL << 20)

static void die(const char *what)
{
	perror(what);
	exit(127);
}

static int protection(uint32_t flags)
{
	return (flags & PF_R ? PROT_READ : 0) | (flags & PF_W ? PROT_WRITE : 0) |
	       (flags & PF_X ? PROT_EXEC : 0);
}

int main(int argc, char **argv, char **envp)
{
	if (argc < 2) {
		fprintf(stderr, "usage: selfunpack PROGRAM [ARG...]\n");
		return 2;
	}
	int fd = open(argv[1], O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0)
		die(argv[1]);
	unsigned char *image = malloc(st.st_size);
	if (image == NULL || read(fd, image, st.st_size) != st.st_size)
		die("read");
	close(fd);

	const Elf64_Ehdr *header = (const Elf64_Ehdr *)image;
	if (memcmp(header->e_ident, ELFMAG, SELFMAG) != 0 || header->e_type != ET_EXEC) {
		fprintf(stderr, "%s: not a static non-PIE executable\n", argv[1]);
		return 2;
	}
	const Elf64_Phdr *phdrs = (const Elf64_Phdr *)(image + header->e_phoff);
	uintptr_t phdr_address = 0;
	for (int i = 0; i < header->e_phnum; i++) {
		const Elf64_Phdr *ph = &phdrs[i];
		if (ph->p_type != PT_LOAD)
			continue;
		uintptr_t start = ph->p_vaddr & ~(PAGE - 1);
		uintptr_t end = (ph->p_vaddr + ph->p_memsz + PAGE - 1) & ~(PAGE - 1);
		void *at = mmap((void *)start, end - start, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (at != (void *)start)
			die("mmap at the program's link address");
		memcpy((void *)ph->p_vaddr, image + ph->p_offset, ph->p_filesz);
		if (header->e_phoff >= ph->p_offset && header->e_phoff < ph->p_offset + ph->p_filesz)
			phdr_address = ph->p_vaddr + header->e_phoff - ph->p_offset;
		if (mprotect(at, end - start, protection(ph->p_flags)) != 0)
			die("mprotect");
	}

	/* The new initial stack: argc, argv (PROGRAM's own), envp, the auxiliary
	 * vector (ours, describing PROGRAM instead), from the top of a fresh
	 * mapping, 16-byte aligned at argc. */
	char **env_end = envp;
	while (*env_end != NULL)
		env_end++;
	Elf64_auxv_t *auxv = (Elf64_auxv_t *)(env_end + 1);
	size_t nauxv = 0;
	while (auxv[nauxv].a_type != AT_NULL)
		nauxv++;
	size_t nenv = env_end - envp;
	size_t words = 1 + (argc - 1) + 1 + nenv + 1 + 2 * (nauxv + 1);
	char *stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	if (stack == MAP_FAILED)
		die("mmap stack");
	uintptr_t *sp = (uintptr_t *)(((uintptr_t)stack + STACK_SIZE - 8 * words - 64) & ~15UL);
	uintptr_t *out = sp;
	*out++ = argc - 1;
	for (int i = 1; i < argc; i++)
		*out++ = (uintptr_t)argv[i];
	*out++ = 0;
	for (size_t i = 0; i < nenv; i++)
		*out++ = (uintptr_t)envp[i];
	*out++ = 0;
	for (size_t i = 0; i <= nauxv; i++) {
		uintptr_t value = auxv[i].a_un.a_val;
		switch (auxv[i].a_type) {
		case AT_PHDR: value = phdr_address; break;
		case AT_PHNUM: value = header->e_phnum; break;
		case AT_ENTRY: value = header->e_entry; break;
		case AT_BASE: value = 0; break;
		}
		*out++ = auxv[i].a_type;
		*out++ = value;
	}
	uintptr_t entry = header->e_entry;
	free(image);
	/* %rdx = 0: no function for the program to register with atexit. */
	__asm__ volatile("mov %0, %%rsp\n\txor %%edx, %%edx\n\txor %%ebp, %%ebp\n\tjmp *%1"
			 :
			 : "r"(sp), "r"(entry)
			 : "memory");
	__builtin_unreachable();
}
