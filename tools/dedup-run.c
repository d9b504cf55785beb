/* SPDX-License-Identifier: MIT */
/*
 * dedup-run - run a program with libdedup preloaded.
 *
 * Sets LD_PRELOAD to the absolute path of libdedup.so (found next to this
 * binary: ../libdedup.so in the build tree, ../lib[/<multiarch>]/libdedup.so
 * when installed, or $DEDUP_LIBRARY), DEDUP_PRELOAD=1, and the DEDUP_*
 * variables given by the options, then execs the program: the exit status is
 * the program's own. Option ranges come from the library's option table
 * (DD_OPTIONS in libdedup/src/options.h), so the two never disagree.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "options.h"

#ifndef DEDUP_LIBDIR
#define DEDUP_LIBDIR "/usr/local/lib"
#endif

static const char *prog = "dedup-run";

static void usage_short(FILE *f)
{
	fprintf(f, "usage: %s [options] [--] program [args...]\n"
		   "Try '%s --help' for more information.\n", prog, prog);
}

static void help(void)
{
	printf(
"NAME\n"
"    dedup-run - run a program with libdedup merging its duplicate memory pages\n"
"\n"
"SYNOPSIS\n"
"    dedup-run [--interval MS] [--pages-per-sec N] [--cpu PCT] [--no-zero-pages]\n"
"              [--vma-budget N] [--batch N] [--min-region SIZE] [--log LEVEL]\n"
"              [--stats] [--fork off|restart] [--reconcile MS] [--exclude LIST]\n"
"              [--start SIZE] [--share NAME]\n"
"              [--] program [args...]\n"
"\n"
"DESCRIPTION\n"
"    dedup-run starts program with libdedup.so preloaded (LD_PRELOAD). The\n"
"    program needs no change: libdedup finds its heap (the brk heap, malloc\n"
"    arenas and mmap'd chunks, jemalloc extents, any anonymous private\n"
"    read-write mapping of at least --min-region bytes) and a background\n"
"    thread merges pages with identical content into one shared read-only\n"
"    copy. A later write gets a private copy from the kernel, so the program\n"
"    only sees a smaller memory footprint (Pss, Rss).\n"
"\n"
"    If userfaultfd cannot be used (not root, no CAP_SYS_PTRACE, no access\n"
"    to /dev/userfaultfd, kernel older than 6.8), the program runs unmodified\n"
"    and libdedup prints one line saying why.\n"
"\n"
"    Programs the preloaded one starts inherit LD_PRELOAD and the DEDUP_*\n"
"    variables, and so run under libdedup too. See docs/preload.md.\n"
"\n"
"    A program built with a sanitizer (AddressSanitizer, ThreadSanitizer,\n"
"    LeakSanitizer) runs unmerged: libdedup stays passive (and says so in\n"
"    one line with --start 0). If the program loads the sanitizer's runtime\n"
"    as a library (gcc's default), dedup-run preloads that runtime before\n"
"    libdedup.so, since AddressSanitizer refuses to run when it is not first.\n"
"    A program run by Valgrind runs unmerged the same way.\n"
"\n"
"OPTIONS\n"
"    --interval MS        milliseconds between full passes over memory (%s)\n"
"    --pages-per-sec N    cap on pages scanned per second, K/M suffixes, 0 = none (%s)\n"
"    --cpu PCT            engine CPU budget, percent of one core, 1-100 (%s)\n"
"    --no-zero-pages      do not merge zero-filled pages\n"
"    --vma-budget N       mappings the engine may add (default:\n"
"                         vm.max_map_count - max(4 x own mappings, 4096))\n"
"    --batch N            pages write-protected and merged at once, 1-512 (%s)\n"
"    --min-region SIZE    smallest mapping registered, K/M/G suffixes (%s)\n"
"    --log LEVEL          quiet, error, warn, info, debug or stats (warn)\n"
"    --stats              same as --log stats: a table of counters at exit\n"
"    --fork MODE          in a fork()ed child: off (the child does not merge)\n"
"                         or restart (the child starts its own engine) (off)\n"
"    --reconcile MS       how often /proc/self/maps is re-read to find new\n"
"                         memory, 10-3600000 (1000)\n"
"    --exclude LIST       memory never to merge, comma-separated: heap (the\n"
"                         brk heap), mmap (every other anonymous mapping:\n"
"                         malloc arenas and chunks, jemalloc extents), or\n"
"                         LO-HI (an address range in hex; up to 16) (none)\n"
"    --start SIZE         start merging only once the program has this much\n"
"                         anonymous memory resident, K/M/G suffixes; until\n"
"                         then libdedup has no thread and no descriptor in\n"
"                         it; 0 = at once (64M)\n"
"    --share NAME         merge with every other process of yours that joins\n"
"                         the group NAME ([A-Za-z0-9_.-], at most 64): four\n"
"                         workers holding the same data keep about one copy.\n"
"                         A per-user helper, dedup-share, is started on\n"
"                         demand. Members can learn by timing which pages\n"
"                         other members hold: share only among processes\n"
"                         that trust each other (README: sharing groups)\n"
"                         (none: each process merges alone)\n"
"    -h, --help           this text\n"
"\n"
"ENVIRONMENT\n"
"    dedup-run sets LD_PRELOAD (libdedup.so first - after a sanitizer\n"
"    runtime the program needs, above - and an existing value kept after\n"
"    it), DEDUP_PRELOAD=1, and for each option given the matching\n"
"    variable: DEDUP_INTERVAL, DEDUP_PAGES_PER_SEC, DEDUP_CPU, DEDUP_ZERO_PAGES,\n"
"    DEDUP_VMA_BUDGET, DEDUP_BATCH, DEDUP_MIN_REGION, DEDUP_LOG, DEDUP_FORK,\n"
"    DEDUP_RECONCILE_MS, DEDUP_EXCLUDE, DEDUP_START, DEDUP_SHARE. Variables\n"
"    already set and not overridden by an\n"
"    option are passed on unchanged.\n"
"    DEDUP_LIBRARY   path of libdedup.so to preload (default: found relative\n"
"                    to dedup-run, then %s)\n"
"    DEDUP_SHARE_HELPER  path of the dedup-share helper (default: next to\n"
"                    libdedup.so or in the tools directory of a build)\n"
"    DEDUP_PRELOAD   0 turns preload mode off in the program (libdedup.so is\n"
"                    still loaded, but does nothing)\n"
"\n"
"EXIT STATUS\n"
"    The exit status of program. 2 for a usage error (bad option or value),\n"
"    127 if program cannot be executed (not found, not executable).\n"
"\n"
"EXAMPLES\n"
"    dedup-run -- python3 workload.py\n"
"    dedup-run --stats --interval 100 -- redis-server --port 6400\n"
"    dedup-run --cpu 10 --pages-per-sec 50K -- ./server\n"
"    dedup-stat $(pidof server)       # live counters of a running process\n",
	       "200", "0", "25", "64", "64K", DEDUP_LIBDIR "/libdedup.so");
}

/* Range checks: the library's own option table. */
struct optdesc {
	const char *env;
	uint64_t lo, hi;
	bool size;
};

static const struct optdesc optdescs[] = {
#define X(name, type, env, def, lo, hi, sz, help) { env, lo, hi, sz },
	DD_OPTIONS(X)
#undef X
};

static const struct optdesc *desc_of(const char *env)
{
	for (size_t i = 0; i < sizeof(optdescs) / sizeof(optdescs[0]); i++)
		if (strcmp(optdescs[i].env, env) == 0)
			return &optdescs[i];
	return NULL;
}

static bool parse_u64(const char *s, bool size, uint64_t *out)
{
	char *end;
	uint64_t mul = 1;

	if (!s || !*s || *s == '-' || *s == '+')
		return false;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s)
		return false;
	if (*end && size) {
		switch (*end) {
		case 'k': case 'K': mul = 1ULL << 10; break;
		case 'm': case 'M': mul = 1ULL << 20; break;
		case 'g': case 'G': mul = 1ULL << 30; break;
		case 't': case 'T': mul = 1ULL << 40; break;
		default: return false;
		}
		end++;
		if (*end == 'i' || *end == 'I')
			end++;
		if (*end == 'b' || *end == 'B')
			end++;
	}
	if (*end || (mul > 1 && v > UINT64_MAX / mul))
		return false;
	*out = v * mul;
	return true;
}

static void bad_value(const char *opt, const char *val, const char *what)
{
	fprintf(stderr, "%s: invalid value '%s' for %s: %s\n", prog, val, opt, what);
	usage_short(stderr);
	exit(2);
}

/* Validate val against env's table entry and export it. */
static void set_num(const char *opt, const char *env, const char *val)
{
	const struct optdesc *d = desc_of(env);
	uint64_t v;
	char msg[160];

	if (!d || !parse_u64(val, d->size, &v) || v < d->lo || v > d->hi) {
		snprintf(msg, sizeof(msg), "expected %s in [%llu, %llu]",
			 d && d->size ? "a size (K/M/G suffix allowed)" : "a whole number",
			 (unsigned long long)(d ? d->lo : 0), (unsigned long long)(d ? d->hi : 0));
		bad_value(opt, val, msg);
	}
	setenv(env, val, 1);
}

/* The directory this binary lives in (for finding libdedup.so). */
static bool self_dir(char *out, size_t size)
{
	ssize_t n = readlink("/proc/self/exe", out, size - 1);
	if (n <= 0)
		return false;
	out[n] = 0;
	char *slash = strrchr(out, '/');
	if (!slash)
		return false;
	*slash = 0;
	return true;
}

static bool is_file(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static bool find_library(char *out, size_t size)
{
	static const char *const rel[] = {
		"../libdedup.so",               /* build tree: build/tools/dedup-run */
		"../lib/libdedup.so",           /* installed: <prefix>/bin */
		"../lib64/libdedup.so",
		"../lib/x86_64-linux-gnu/libdedup.so",
		"../lib/aarch64-linux-gnu/libdedup.so",
	};
	const char *env = getenv("DEDUP_LIBRARY");
	char dir[PATH_MAX], cand[PATH_MAX + 64];

	if (env && *env) {
		if (!realpath(env, out) || !is_file(out)) {
			fprintf(stderr, "%s: DEDUP_LIBRARY=%s: no such file\n", prog, env);
			return false;
		}
		return true;
	}
	if (self_dir(dir, sizeof(dir))) {
		for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
			snprintf(cand, sizeof(cand), "%s/%s", dir, rel[i]);
			if (is_file(cand) && realpath(cand, out))
				return true;
		}
	}
	snprintf(cand, sizeof(cand), "%s/libdedup.so", DEDUP_LIBDIR);
	if (is_file(cand) && realpath(cand, out))
		return true;
	(void)size;
	fprintf(stderr, "%s: cannot find libdedup.so (looked next to %s and in %s); "
			"set DEDUP_LIBRARY\n", prog, dir, DEDUP_LIBDIR);
	return false;
}

/* ---- a sanitizer runtime the program needs ----------------------------
 *
 * AddressSanitizer aborts a process whose first library is not its runtime
 * ("ASan runtime does not come first in initial library list"), so with
 * libdedup.so first in LD_PRELOAD an ASan-built program would not start.
 * We read the DT_NEEDED entries of the program (64-bit ELF, found in PATH as
 * execvp() would) and put a sanitizer runtime named there first. Anything
 * unexpected (a script, another class, a short read) means "none": the
 * program is then started as before.
 */
static bool sanitizer_soname(const char *n)
{
	static const char *const pre[] = { "libasan.so", "libtsan.so", "liblsan.so", "libhwasan.so",
					   "libclang_rt.asan", "libclang_rt.tsan", "libclang_rt.lsan",
					   "libclang_rt.hwasan" };
	for (size_t i = 0; i < sizeof(pre) / sizeof(pre[0]); i++)
		if (strncmp(n, pre[i], strlen(pre[i])) == 0)
			return true;
	return false;
}

static bool read_at(int fd, void *buf, size_t len, off_t off)
{
	return len && pread(fd, buf, len, off) == (ssize_t)len;
}

/* The file offset of virtual address v (a PT_LOAD that holds it), or -1. */
static off_t vaddr_off(const Elf64_Phdr *ph, int n, uint64_t v)
{
	for (int i = 0; i < n; i++)
		if (ph[i].p_type == PT_LOAD && v >= ph[i].p_vaddr &&
		    v < ph[i].p_vaddr + ph[i].p_filesz)
			return (off_t)(v - ph[i].p_vaddr + ph[i].p_offset);
	return -1;
}

/* The first DT_NEEDED of the ELF file at path that is a sanitizer runtime,
 * copied to out; false if none (or not a file we understand). */
static bool needed_sanitizer(const char *path, char *out, size_t size)
{
	Elf64_Ehdr eh;
	Elf64_Phdr ph[64];
	Elf64_Dyn dyn[512];
	bool found = false;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return false;
	if (!read_at(fd, &eh, sizeof(eh), 0) || memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
	    eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(Elf64_Phdr) ||
	    eh.e_phnum == 0 || eh.e_phnum > 64 ||
	    !read_at(fd, ph, eh.e_phnum * sizeof(Elf64_Phdr), (off_t)eh.e_phoff))
		goto out;
	for (int i = 0; i < eh.e_phnum && !found; i++) {
		if (ph[i].p_type != PT_DYNAMIC)
			continue;
		size_t nd = ph[i].p_filesz / sizeof(Elf64_Dyn);
		if (nd > 512)
			nd = 512;
		if (!read_at(fd, dyn, nd * sizeof(Elf64_Dyn), (off_t)ph[i].p_offset))
			goto out;
		off_t strtab = -1;
		for (size_t k = 0; k < nd && dyn[k].d_tag != DT_NULL; k++)
			if (dyn[k].d_tag == DT_STRTAB)
				strtab = vaddr_off(ph, eh.e_phnum, dyn[k].d_un.d_ptr);
		for (size_t k = 0; strtab >= 0 && k < nd && dyn[k].d_tag != DT_NULL; k++) {
			char name[128] = "";
			if (dyn[k].d_tag != DT_NEEDED ||
			    pread(fd, name, sizeof(name) - 1, strtab + (off_t)dyn[k].d_un.d_val) <= 0)
				continue;
			if (sanitizer_soname(name) && !strchr(name, ':') && strlen(name) < size) {
				strcpy(out, name);
				found = true;
				break;
			}
		}
	}
out:
	close(fd);
	return found;
}

/* The file execvp() would run for name (a name without '/' is looked up in
 * PATH); false if not found. */
static bool resolve_program(const char *name, char *out, size_t size)
{
	if (strchr(name, '/'))
		return snprintf(out, size, "%s", name) < (int)size;
	const char *path = getenv("PATH");
	if (!path || !*path)
		path = "/usr/local/bin:/bin:/usr/bin";
	while (*path) {
		size_t n = strcspn(path, ":");
		if (n && (int)n < (int)size &&
		    snprintf(out, size, "%.*s/%s", (int)n, path, name) < (int)size &&
		    access(out, X_OK) == 0 && is_file(out))
			return true;
		path += n + (path[n] == ':');
	}
	return false;
}

int main(int argc, char **argv)
{
	enum { O_INTERVAL = 256, O_PPS, O_CPU, O_NOZERO, O_VMA, O_BATCH, O_MINREG, O_LOG,
	       O_STATS, O_FORK, O_RECONCILE, O_EXCLUDE, O_START, O_SHARE };
	static const struct option longopts[] = {
		{ "interval", required_argument, NULL, O_INTERVAL },
		{ "pages-per-sec", required_argument, NULL, O_PPS },
		{ "cpu", required_argument, NULL, O_CPU },
		{ "no-zero-pages", no_argument, NULL, O_NOZERO },
		{ "vma-budget", required_argument, NULL, O_VMA },
		{ "batch", required_argument, NULL, O_BATCH },
		{ "min-region", required_argument, NULL, O_MINREG },
		{ "log", required_argument, NULL, O_LOG },
		{ "stats", no_argument, NULL, O_STATS },
		{ "fork", required_argument, NULL, O_FORK },
		{ "reconcile", required_argument, NULL, O_RECONCILE },
		{ "exclude", required_argument, NULL, O_EXCLUDE },
		{ "start", required_argument, NULL, O_START },
		{ "share", required_argument, NULL, O_SHARE },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const char *const levels[] = { "quiet", "error", "warn", "info", "debug", "stats" };
	char lib[PATH_MAX];
	int c;

	/* '+': stop at the first non-option (the program's own options follow) */
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
		switch (c) {
		case O_INTERVAL: set_num("--interval", "DEDUP_INTERVAL", optarg); break;
		case O_PPS: set_num("--pages-per-sec", "DEDUP_PAGES_PER_SEC", optarg); break;
		case O_CPU: set_num("--cpu", "DEDUP_CPU", optarg); break;
		case O_NOZERO: setenv("DEDUP_ZERO_PAGES", "0", 1); break;
		case O_VMA: set_num("--vma-budget", "DEDUP_VMA_BUDGET", optarg); break;
		case O_BATCH: set_num("--batch", "DEDUP_BATCH", optarg); break;
		case O_MINREG: set_num("--min-region", "DEDUP_MIN_REGION", optarg); break;
		case O_LOG: {
			bool ok = false;
			for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
				ok |= strcasecmp(optarg, levels[i]) == 0;
			if (!ok)
				bad_value("--log", optarg,
					  "expected quiet, error, warn, info, debug or stats");
			setenv("DEDUP_LOG", optarg, 1);
			break;
		}
		case O_STATS: setenv("DEDUP_LOG", "stats", 1); break;
		case O_FORK:
			if (strcasecmp(optarg, "off") && strcasecmp(optarg, "restart"))
				bad_value("--fork", optarg, "expected off or restart");
			setenv("DEDUP_FORK", optarg, 1);
			break;
		case O_RECONCILE: set_num("--reconcile", "DEDUP_RECONCILE_MS", optarg); break;
		case O_START: set_num("--start", "DEDUP_START", optarg); break;
		case O_SHARE:
			if (!dd_share_name_ok(optarg))
				bad_value("--share", optarg, "expected letters, digits, '_', '.' or '-', "
					  "at most 64, not starting with '.'");
			setenv("DEDUP_SHARE", optarg, 1);
			break;
		case O_EXCLUDE: {
			struct dd_exclude x;
			const char *bad;
			size_t badlen;
			char msg[160];
			if (dd_parse_exclude(optarg, &x, &bad, &badlen) < 0) {
				snprintf(msg, sizeof(msg), "'%.*s' is not heap, mmap or LO-HI "
					 "(hex, LO < HI, at most 16 ranges)", (int)badlen, bad);
				bad_value("--exclude", optarg, msg);
			}
			setenv("DEDUP_EXCLUDE", optarg, 1);
			break;
		}
		case 'h':
			help();
			return 0;
		case '?':
		default:
			if (optopt)
				fprintf(stderr, "%s: option '%s' needs a value or is unknown\n", prog,
					argv[optind - 1]);
			else
				fprintf(stderr, "%s: unknown option '%s'\n", prog, argv[optind - 1]);
			usage_short(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "%s: no program given\n", prog);
		usage_short(stderr);
		return 2;
	}
	if (!find_library(lib, sizeof(lib)))
		return 127;

	/* libdedup first - after a sanitizer runtime the program needs - and
	 * keep what was preloaded already (e.g. a jemalloc) */
	char exe[PATH_MAX], san[128] = "";
	if (resolve_program(argv[optind], exe, sizeof(exe)))
		(void)needed_sanitizer(exe, san, sizeof(san));
	const char *old = getenv("LD_PRELOAD");
	size_t n = strlen(san) + strlen(lib) + (old ? strlen(old) : 0) + 3;
	char *all = malloc(n);
	if (!all)
		return 127;
	snprintf(all, n, "%s%s%s%s%s", san, *san ? ":" : "", lib, old && *old ? ":" : "",
		 old && *old ? old : "");
	setenv("LD_PRELOAD", all, 1);
	free(all);
	setenv("DEDUP_PRELOAD", "1", 1);

	execvp(argv[optind], &argv[optind]);
	fprintf(stderr, "%s: cannot execute %s: %s\n", prog, argv[optind], strerror(errno));
	return 127;
}
