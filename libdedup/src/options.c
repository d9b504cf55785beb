/* SPDX-License-Identifier: MIT */
/*
 * options.c - the option table: one place for name, default, environment
 * variable, range and help text (DD_OPTIONS in options.h).
 *
 * Precedence: a non-zero field of struct dedup_config, then the DEDUP_*
 * environment variable, then the built-in default. A bad environment value
 * prints one line on stderr and the default is used. Runs in the thread
 * calling dedup_init() (or the preload constructor): no malloc, getenv only.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct dd_options dd_opt = {
#define X(name, type, env, def, lo, hi, sz, help) .name = (def),
	DD_OPTIONS(X)
#undef X
};

/* Parse a decimal number with an optional K/M/G/T (x1024) suffix. */
int dd_parse_u64(const char *s, bool size_suffix, uint64_t *out)
{
	uint64_t v = 0, mul = 1;
	const char *p = s;

	if (!s || !*s)
		return -EINVAL;
	while (isspace((unsigned char)*p))
		p++;
	if (!isdigit((unsigned char)*p))
		return -EINVAL;
	for (; isdigit((unsigned char)*p); p++) {
		uint64_t d = (uint64_t)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	if (*p && size_suffix && !isspace((unsigned char)*p)) {
		switch (toupper((unsigned char)*p)) {
		case 'K': mul = 1ULL << 10; break;
		case 'M': mul = 1ULL << 20; break;
		case 'G': mul = 1ULL << 30; break;
		case 'T': mul = 1ULL << 40; break;
		default: return -EINVAL;
		}
		p++;
		if (*p == 'i' || *p == 'I')
			p++;
		if (*p == 'b' || *p == 'B')
			p++;
	}
	while (isspace((unsigned char)*p))
		p++;
	if (*p)
		return -EINVAL;
	if (mul > 1 && v > UINT64_MAX / mul)
		return -ERANGE;
	*out = v * mul;
	return 0;
}

/*
 * Options that take words. DEDUP_LOG takes its level names or a number;
 * DEDUP_FORK only its mode names (a number would mean nothing to a user).
 * Every other 0/1 option is a switch: on/off, yes/no, true/false or 1/0.
 */
static const char *const log_names[] = { "quiet", "error", "warn", "info", "debug", "stats" };
static const char *const fork_names[] = { "off", "restart" };
static const struct {
	const char *env;
	const char *const *names;
	size_t n;
	bool numbers;          /* numbers are accepted too */
	const char *expect;    /* for the warning when words only */
} word_opts[] = {
	{ "DEDUP_LOG", log_names, DD_ARRAY_SIZE(log_names), true, NULL },
	{ "DEDUP_FORK", fork_names, DD_ARRAY_SIZE(fork_names), false, "off or restart" },
};

static int parse_switch(const char *s)
{
	if (!strcasecmp(s, "on") || !strcasecmp(s, "yes") || !strcasecmp(s, "true"))
		return 1;
	if (!strcasecmp(s, "off") || !strcasecmp(s, "no") || !strcasecmp(s, "false"))
		return 0;
	return -1;
}

static int parse_env(const char *env, bool sz, uint64_t lo, uint64_t hi, uint64_t *out)
{
	const char *s = getenv(env);
	bool words = false;
	uint64_t v;
	int b;

	if (!s)
		return 0;
	for (size_t k = 0; k < DD_ARRAY_SIZE(word_opts); k++) {
		if (strcmp(env, word_opts[k].env))
			continue;
		for (size_t i = 0; i < word_opts[k].n; i++) {
			if (strcasecmp(s, word_opts[k].names[i]) == 0) {
				*out = i;
				return 1;
			}
		}
		if (!word_opts[k].numbers) {
			dd_warn("ignoring %s=\"%s\": expected %s; using the default", env, s,
				word_opts[k].expect);
			return -1;
		}
		words = true;
	}
	if (!words && lo == 0 && hi == 1 && !sz && (b = parse_switch(s)) >= 0) {
		*out = (uint64_t)b;
		return 1;
	}
	if (dd_parse_u64(s, sz, &v) < 0 || v < lo || v > hi) {
		const char *what = !strcmp(env, "DEDUP_LOG")
			? "quiet|error|warn|info|debug|stats or a number"
			: !strcmp(env, "DEDUP_ZERO_PAGES") ? "on/off, yes/no, true/false or a number"
			: sz ? "a size (K/M/G suffix allowed)" : "a number";
		dd_warn("ignoring %s=\"%s\": expected %s in [%llu, %llu]; using the default",
			env, s, what, (unsigned long long)lo, (unsigned long long)hi);
		return -1;
	}
	*out = v;
	return 1;
}

static inline bool in_range(uint64_t v, uint64_t lo, uint64_t hi)
{
	return v >= lo && v <= hi;
}

int dd_options_load(const struct dedup_config *cfg)
{
	struct dd_options o = {
#define X(name, type, env, def, lo, hi, sz, help) .name = (def),
		DD_OPTIONS(X)
#undef X
	};
	uint64_t v;

	/* DEDUP_LOG first, so that the warnings below obey it. */
	dd_opt.log_level = o.log_level;
	if (parse_env("DEDUP_LOG", false, 0, 5, &v) > 0)
		dd_opt.log_level = o.log_level = v;

#define X(name, type, env, def, lo, hi, sz, help) \
	if (strcmp(env, "DEDUP_LOG") && parse_env(env, sz, lo, hi, &v) > 0) \
		o.name = (type)v;
	DD_OPTIONS(X)
#undef X

	if (cfg) {
		if (cfg->size < sizeof(uint32_t))
			return -EINVAL;   /* .size not set */
#define CFG(field, lo, hi)                                                           \
	if (cfg->size >= offsetof(struct dedup_config, field) + sizeof(cfg->field) && \
	    cfg->field) {                                                             \
		if (!in_range((uint64_t)cfg->field, (lo), (hi)))                      \
			return -EINVAL;                                               \
		o.field = (uint64_t)cfg->field;                                       \
	}
		CFG(scan_interval_ms, 0, 3600000)
		CFG(pages_per_sec, 0, UINT64_MAX / 2)
		CFG(cpu_percent, 1, 100)
		CFG(vma_budget, 0, UINT64_MAX / 2)
		CFG(min_region, 4096, UINT64_MAX / 2)
		CFG(batch_pages, 1, DD_MAX_BATCH)
#undef CFG
		if (cfg->size >= offsetof(struct dedup_config, zero_pages) + sizeof(cfg->zero_pages) &&
		    cfg->zero_pages)
			o.zero_pages = cfg->zero_pages > 0;
		if (cfg->size >= offsetof(struct dedup_config, log_level) + sizeof(cfg->log_level) &&
		    cfg->log_level) {
			if (cfg->log_level < 1 || cfg->log_level > 6)
				return -EINVAL;
			o.log_level = (uint64_t)(cfg->log_level - 1);
		}
	}
	/* The group: the config's, else DEDUP_SHARE (not for a set-uid program:
	 * it would join the invoking user's group). A bad name is an error, not
	 * a quiet "alone": the user asked for sharing. */
	const char *share = NULL;
	if (cfg && cfg->size >= offsetof(struct dedup_config, share) + sizeof(cfg->share))
		share = cfg->share;
	if (!share || !*share)
		share = secure_getenv("DEDUP_SHARE");
	if (share && *share && !dd_share_name_ok(share)) {
		char shown[81];   /* one line, whatever the name holds */
		size_t i;
		for (i = 0; share[i] && i < sizeof(shown) - 1; i++)
			shown[i] = share[i] >= 0x20 && share[i] < 0x7f ? share[i] : '?';
		shown[i] = 0;
		dd_err("DEDUP_SHARE: \"%s\" is not a group name ([A-Za-z0-9_.-], at most %d, "
		       "no leading '.')", shown, DD_SHARE_NAME_MAX);
		return -EINVAL;
	}
	dd_share_name[0] = 0;
	if (share)
		strcpy(dd_share_name, share);   /* checked: at most DD_SHARE_NAME_MAX */
	dd_opt = o;
	return 0;
}

char dd_share_name[DD_SHARE_NAME_MAX + 1];

bool dd_share_name_ok(const char *name)
{
	size_t n = 0;

	if (!name || name[0] == '.')
		return false;
	for (; name[n]; n++) {
		char c = name[n];
		if (n >= DD_SHARE_NAME_MAX ||
		    !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-'))
			return false;
	}
	return n > 0;
}

/*
 * DEDUP_EXCLUDE: memory the preload library never registers, a comma- or
 * space-separated list of
 *   heap       the brk heap ([heap] in /proc/self/maps)
 *   mmap       every other anonymous mapping (malloc arenas and chunks,
 *              jemalloc extents, runtime heaps)
 *   LO-HI      an address range in hex (0x optional), LO < HI
 * Returns 0, or -EINVAL with *bad and *badlen naming the first bad word
 * (nothing is kept from a list with a bad word). No malloc (preload).
 */
int dd_parse_exclude(const char *s, struct dd_exclude *out, const char **bad, size_t *badlen)
{
	struct dd_exclude x = { 0 };

	while (s && *s) {
		size_t n = strcspn(s, ", \t");
		if (n == 0) {
			s++;
			continue;
		}
		char *end;
		if (n == 4 && !strncmp(s, "heap", 4)) {
			x.kinds |= DD_EXCL_HEAP;
		} else if (n == 4 && !strncmp(s, "mmap", 4)) {
			x.kinds |= DD_EXCL_MMAP;
		} else if (isxdigit((unsigned char)*s)) {
			errno = 0;
			unsigned long long lo = strtoull(s, &end, 16), hi = 0;
			bool ok = !errno && *end == '-' && isxdigit((unsigned char)end[1]);
			if (ok) {
				hi = strtoull(end + 1, &end, 16);
				ok = !errno && end == s + n && lo < hi && x.n < DD_ARRAY_SIZE(x.r);
			}
			if (!ok)
				goto bad_word;
			x.r[x.n].lo = (uintptr_t)lo & ~(uintptr_t)(DD_PAGE - 1);
			x.r[x.n].hi = ((uintptr_t)hi + DD_PAGE - 1) & ~(uintptr_t)(DD_PAGE - 1);
			x.n++;
		} else {
			goto bad_word;
		}
		s += n;
		continue;
bad_word:
		*bad = s;
		*badlen = n;
		return -EINVAL;
	}
	*out = x;
	return 0;
}
