/* SPDX-License-Identifier: MIT */
/*
 * test_unit_options: options.c driven directly, without the engine.
 *
 *   - dd_parse_u64: decimal numbers, leading/trailing white space, K/M/G/T
 *     suffixes (x1024, either case, optional "i" and "B") only where sizes
 *     are allowed, overflow (-ERANGE), and -EINVAL for empty, garbage, signs,
 *     fractions, hex; *out untouched on error;
 *   - dd_options_load(NULL): the built-in defaults; every DEDUP_* variable
 *     with good values (range edges, log names, on/off words);
 *   - a bad value (garbage, empty, negative, out of [min, max], overflow,
 *     a suffix on a plain number) prints exactly one line on stderr that
 *     names the variable, the value and the valid range, and the option
 *     keeps its built-in default; two bad variables give two lines;
 *   - the warnings obey DEDUP_LOG (quiet and error silence them);
 *   - struct dedup_config: the precedence the code implements is
 *         non-zero config field  >  DEDUP_* variable  >  built-in default;
 *     a zero field means "not set" (so the config cannot force a 0 over
 *     the environment), fields beyond cfg->size are not read, cfg->size < 4
 *     and out-of-range fields give -EINVAL without touching the options,
 *     zero_pages takes the sign (1 on, -1 off), log_level is the enum + 1.
 *     A bad variable is still reported when a config field overrides it.
 *     store_max and the test hooks have no config field: environment only.
 *
 * stderr is captured around each call by pointing fd 2 at a memfd (dd_log
 * writes with one write(2), no stdio).
 */
#include "tcommon.h"
#include "internal.h"

static const struct dd_options defaults = {
#define X(name, type, env, def, lo, hi, sz, help) .name = (def),
	DD_OPTIONS(X)
#undef X
};

static const struct opt_desc {
	const char *env;
	size_t off;
	uint64_t def, lo, hi;
	bool sz;
} opts[] = {
#define X(name, type, env, def, lo, hi, sz, help) \
	{ env, offsetof(struct dd_options, name), (def), (lo), (hi), (sz) },
	DD_OPTIONS(X)
#undef X
};

static uint64_t *field(const struct opt_desc *o) { return (uint64_t *)((char *)&dd_opt + o->off); }

static const struct opt_desc *desc(const char *env)
{
	for (size_t i = 0; i < DD_ARRAY_SIZE(opts); i++)
		if (!strcmp(opts[i].env, env))
			return &opts[i];
	fprintf(stderr, "no option %s\n", env);
	exit(T_FAIL);
}

static void clear_env(void)
{
	for (size_t i = 0; i < DD_ARRAY_SIZE(opts); i++)
		CHECK(unsetenv(opts[i].env) == 0);
}

/* ---- stderr capture ---------------------------------------------------- */

static char err[8192];

static int load(const struct dedup_config *cfg)
{
	int tmp = memfd_create("stderr", MFD_CLOEXEC), saved = dup(2);
	CHECK(tmp >= 0 && saved >= 0);
	CHECK(dup2(tmp, 2) == 2);
	int r = dd_options_load(cfg);
	CHECK(dup2(saved, 2) == 2);
	close(saved);
	ssize_t n = pread(tmp, err, sizeof(err) - 1, 0);
	CHECK(n >= 0);
	err[n] = 0;
	close(tmp);
	if (n)
		fprintf(stderr, "    stderr: %s", err);
	return r;
}

static int nlines(void)
{
	int n = 0;
	for (const char *p = err; *p; p++)
		n += *p == '\n';
	return n;
}

/* Exactly one warning line, for @env="@val": it ends in a newline, starts
 * with "libdedup[pid]: ", names the variable, the value and the range, and
 * says the default is used. */
static void check_one_warning(const char *env, const char *val)
{
	const struct opt_desc *o = desc(env);
	char want[256];

	if (nlines() != 1 || err[strlen(err) - 1] != '\n') {
		fprintf(stderr, "%s=\"%s\": want one line on stderr, got %d\n", env, val, nlines());
		exit(T_FAIL);
	}
	snprintf(want, sizeof(want), "libdedup[%d]: ", (int)getpid());
	CHECK(strncmp(err, want, strlen(want)) == 0);
	snprintf(want, sizeof(want), "%s=\"%s\"", env, val);
	CHECK(strstr(err, want) != NULL);
	snprintf(want, sizeof(want), "[%llu, %llu]", (unsigned long long)o->lo,
		 (unsigned long long)o->hi);
	CHECK(strstr(err, want) != NULL);
	CHECK(strstr(err, "default") != NULL);
}

/* ---- dd_parse_u64 ------------------------------------------------------ */

struct pcase {
	const char *s;
	bool sz;
	int ret;
	uint64_t v;
};

static const struct pcase parse_cases[] = {
	{ "0", false, 0, 0 },
	{ "1", false, 0, 1 },
	{ "4096", false, 0, 4096 },
	{ "007", false, 0, 7 },
	{ " 42", false, 0, 42 },
	{ "42 ", false, 0, 42 },
	{ "\t42\n", false, 0, 42 },
	{ "18446744073709551609", false, 0, 18446744073709551609ULL },
	/* the overflow check must not reject the last few values below 2^64 */
	{ "18446744073709551610", false, 0, 18446744073709551610ULL },
	{ "18446744073709551615", false, 0, UINT64_MAX },
	{ "18446744073709551615", true, 0, UINT64_MAX },
	{ "018446744073709551615", false, 0, UINT64_MAX },
	{ "18446744073709551616", false, -ERANGE, 0 },
	{ "99999999999999999999", false, -ERANGE, 0 },
	{ "184467440737095516150", false, -ERANGE, 0 },
	{ "", false, -EINVAL, 0 },
	{ " ", false, -EINVAL, 0 },
	{ "abc", false, -EINVAL, 0 },
	{ "-1", false, -EINVAL, 0 },
	{ "+1", false, -EINVAL, 0 },
	{ "1.5", false, -EINVAL, 0 },
	{ "0x10", false, -EINVAL, 0 },
	{ "12abc", false, -EINVAL, 0 },
	{ "1 2", false, -EINVAL, 0 },
	{ "1K", false, -EINVAL, 0 },        /* no suffix on a plain number */
	{ "1k", false, -EINVAL, 0 },
	/* sizes */
	{ "4096", true, 0, 4096 },
	{ "0K", true, 0, 0 },
	{ "1K", true, 0, 1024 },
	{ "1k", true, 0, 1024 },
	{ "2M", true, 0, 2ULL << 20 },
	{ "2m", true, 0, 2ULL << 20 },
	{ "3G", true, 0, 3ULL << 30 },
	{ "3g", true, 0, 3ULL << 30 },
	{ "5T", true, 0, 5ULL << 40 },
	{ "5t", true, 0, 5ULL << 40 },
	{ "4KiB", true, 0, 4096 },
	{ "4kib", true, 0, 4096 },
	{ "4KB", true, 0, 4096 },
	{ "4kB", true, 0, 4096 },
	{ "4Ki", true, 0, 4096 },
	{ " 64K ", true, 0, 65536 },
	/* white space after a plain number, as for the non-size options */
	{ "65536 ", true, 0, 65536 },
	{ "\t65536\n", true, 0, 65536 },
	{ "\t64K\n", true, 0, 65536 },
	{ "17179869183G", true, 0, 17179869183ULL << 30 },
	{ "17179869184G", true, -ERANGE, 0 },   /* 2^64 */
	{ "16777215T", true, 0, 16777215ULL << 40 },
	{ "16777216T", true, -ERANGE, 0 },
	{ "18014398509481983K", true, 0, 18014398509481983ULL << 10 },
	{ "18014398509481984K", true, -ERANGE, 0 },
	{ "99999999999999999999K", true, -ERANGE, 0 },
	{ "", true, -EINVAL, 0 },
	{ "K", true, -EINVAL, 0 },
	{ "-1K", true, -EINVAL, 0 },
	{ "1P", true, -EINVAL, 0 },
	{ "1B", true, -EINVAL, 0 },
	{ "1iB", true, -EINVAL, 0 },
	{ "1KK", true, -EINVAL, 0 },
	{ "1KiBx", true, -EINVAL, 0 },
	{ "1 K", true, -EINVAL, 0 },
	{ "1.5G", true, -EINVAL, 0 },
};

static void check_parse(const struct pcase *c)
{
	uint64_t v = 0xdeadbeef;
	int r = dd_parse_u64(c->s, c->sz, &v);
	uint64_t want = c->ret ? 0xdeadbeef : c->v;   /* untouched on error */
	if (r != c->ret || v != want) {
		fprintf(stderr, "dd_parse_u64(\"%s\", %d): %d %llu, want %d %llu\n", c->s, c->sz,
			r, (unsigned long long)v, c->ret, (unsigned long long)want);
		exit(T_FAIL);
	}
}

static void test_parse(void)
{
	uint64_t v = 5;
	for (size_t i = 0; i < DD_ARRAY_SIZE(parse_cases); i++)
		check_parse(&parse_cases[i]);
	CHECK(dd_parse_u64(NULL, false, &v) == -EINVAL && v == 5);
	CHECK(dd_parse_u64(NULL, true, &v) == -EINVAL && v == 5);
}

/* ---- environment ------------------------------------------------------- */

static void check_defaults(void)
{
#define X(name, type, env, def, lo, hi, sz, help)                                    \
	if (dd_opt.name != defaults.name) {                                           \
		fprintf(stderr, "%s: %llu, want the default %llu\n", env,             \
			(unsigned long long)dd_opt.name, (unsigned long long)defaults.name); \
		exit(T_FAIL);                                                         \
	}
	DD_OPTIONS(X)
#undef X
}

static void test_defaults(void)
{
	clear_env();
	memset(&dd_opt, 0x5a, sizeof(dd_opt));
	CHECK(load(NULL) == 0 && err[0] == 0);
	check_defaults();
	/* the documented defaults (README) */
	CHECK(dd_opt.scan_interval_ms == 200 && dd_opt.cpu_percent == 25 &&
	      dd_opt.pages_per_sec == 0 && dd_opt.zero_pages == 1 && dd_opt.vma_budget == 0 &&
	      dd_opt.batch_pages == 64 && dd_opt.min_region == 65536 &&
	      dd_opt.log_level == DEDUP_LOG_WARN && dd_opt.store_max == 64ULL << 30 &&
	      dd_opt.test_hash_bits == 64 && dd_opt.test_unsafe_no_move == 0);
}

struct ecase {
	const char *env, *val;
	uint64_t want;
};

static const struct ecase good[] = {
	{ "DEDUP_INTERVAL", "0", 0 },
	{ "DEDUP_INTERVAL", "3600000", 3600000 },
	{ "DEDUP_INTERVAL", " 300 ", 300 },
	{ "DEDUP_PAGES_PER_SEC", "10K", 10240 },
	{ "DEDUP_PAGES_PER_SEC", "9223372036854775807", UINT64_MAX / 2 },
	{ "DEDUP_CPU", "1", 1 },
	{ "DEDUP_CPU", "100", 100 },
	{ "DEDUP_ZERO_PAGES", "0", 0 },
	{ "DEDUP_ZERO_PAGES", "1", 1 },
	{ "DEDUP_ZERO_PAGES", "off", 0 },
	{ "DEDUP_ZERO_PAGES", "OFF", 0 },
	{ "DEDUP_ZERO_PAGES", "no", 0 },
	{ "DEDUP_ZERO_PAGES", "False", 0 },
	{ "DEDUP_ZERO_PAGES", "on", 1 },
	{ "DEDUP_ZERO_PAGES", "Yes", 1 },
	{ "DEDUP_ZERO_PAGES", "TRUE", 1 },
	{ "DEDUP_VMA_BUDGET", "1000", 1000 },
	{ "DEDUP_VMA_BUDGET", "2K", 2048 },
	{ "DEDUP_MIN_REGION", "4096", 4096 },
	{ "DEDUP_MIN_REGION", "4K", 4096 },
	{ "DEDUP_MIN_REGION", " 8K ", 8192 },
	{ "DEDUP_MIN_REGION", "8192 ", 8192 },
	{ "DEDUP_STORE_MAX", "1048576\n", 1 << 20 },
	{ "DEDUP_MIN_REGION", "2MiB", 2 << 20 },
	{ "DEDUP_LOG", "quiet", DEDUP_LOG_QUIET },
	{ "DEDUP_LOG", "error", DEDUP_LOG_ERROR },
	{ "DEDUP_LOG", "warn", DEDUP_LOG_WARN },
	{ "DEDUP_LOG", "info", DEDUP_LOG_INFO },
	{ "DEDUP_LOG", "debug", DEDUP_LOG_DEBUG },
	{ "DEDUP_LOG", "stats", DEDUP_LOG_STATS },
	{ "DEDUP_LOG", "DEBUG", DEDUP_LOG_DEBUG },
	{ "DEDUP_LOG", "Info", DEDUP_LOG_INFO },
	{ "DEDUP_LOG", "0", DEDUP_LOG_QUIET },
	{ "DEDUP_LOG", "5", DEDUP_LOG_STATS },
	{ "DEDUP_BATCH", "1", 1 },
	{ "DEDUP_BATCH", "512", DD_MAX_BATCH },
	{ "DEDUP_TEST_HASH_BITS", "1", 1 },
	{ "DEDUP_TEST_HASH_BITS", "3", 3 },
	{ "DEDUP_TEST_UNSAFE_NO_PIN_CHECK", "1", 1 },
	{ "DEDUP_STORE_MAX", "1M", 1 << 20 },
	{ "DEDUP_STORE_MAX", "1024K", 1 << 20 },
	{ "DEDUP_STORE_MAX", "1048576", 1 << 20 },
	{ "DEDUP_STORE_MAX", "16T", 1ULL << 44 },
	{ "DEDUP_STORE_MAX", "16384G", 1ULL << 44 },
	{ "DEDUP_STORE_MAX", "2g", 2ULL << 30 },
};

static const struct ecase bad[] = {
	{ "DEDUP_INTERVAL", "abc", 0 },
	{ "DEDUP_INTERVAL", "", 0 },
	{ "DEDUP_INTERVAL", "-1", 0 },
	{ "DEDUP_INTERVAL", "3600001", 0 },
	{ "DEDUP_INTERVAL", "1K", 0 },          /* 1024 is in range, but no suffix here */
	{ "DEDUP_INTERVAL", "10ms", 0 },
	{ "DEDUP_PAGES_PER_SEC", "9223372036854775808", 0 },
	{ "DEDUP_PAGES_PER_SEC", "99999999999999999999", 0 },
	{ "DEDUP_PAGES_PER_SEC", "1E", 0 },
	{ "DEDUP_CPU", "0", 0 },
	{ "DEDUP_CPU", "101", 0 },
	{ "DEDUP_CPU", "50%", 0 },
	{ "DEDUP_CPU", "2.5", 0 },
	{ "DEDUP_ZERO_PAGES", "2", 0 },
	{ "DEDUP_ZERO_PAGES", "maybe", 0 },
	{ "DEDUP_ZERO_PAGES", "", 0 },
	{ "DEDUP_VMA_BUDGET", "-5", 0 },
	{ "DEDUP_MIN_REGION", "4095", 0 },
	{ "DEDUP_MIN_REGION", "3K", 0 },
	{ "DEDUP_MIN_REGION", "64 K", 0 },
	{ "DEDUP_LOG", "verbose", 0 },
	{ "DEDUP_LOG", "warning", 0 },
	{ "DEDUP_LOG", "6", 0 },
	{ "DEDUP_LOG", "", 0 },
	{ "DEDUP_BATCH", "0", 0 },
	{ "DEDUP_BATCH", "513", 0 },
	{ "DEDUP_TEST_HASH_BITS", "0", 0 },
	{ "DEDUP_TEST_HASH_BITS", "65", 0 },
	{ "DEDUP_TEST_UNSAFE_NO_PIN_CHECK", "2", 0 },
	{ "DEDUP_TEST_UNSAFE_NO_PIN_CHECK", "maybe", 0 },
	{ "DEDUP_STORE_MAX", "1023K", 0 },
	{ "DEDUP_STORE_MAX", "1048575", 0 },
	{ "DEDUP_STORE_MAX", "17T", 0 },
	{ "DEDUP_STORE_MAX", "16385G", 0 },
	{ "DEDUP_STORE_MAX", "lots", 0 },
};

static void test_env_good(void)
{
	for (size_t i = 0; i < DD_ARRAY_SIZE(good); i++) {
		const struct ecase *c = &good[i];
		clear_env();
		CHECK(setenv(c->env, c->val, 1) == 0);
		CHECK(load(NULL) == 0);
		uint64_t got = *field(desc(c->env));
		if (got != c->want || err[0]) {
			fprintf(stderr, "%s=\"%s\": %llu, want %llu (and no message)\n", c->env,
				c->val, (unsigned long long)got, (unsigned long long)c->want);
			exit(T_FAIL);
		}
	}
}

static void test_env_bad(void)
{
	for (size_t i = 0; i < DD_ARRAY_SIZE(bad); i++) {
		const struct ecase *c = &bad[i];
		const struct opt_desc *o = desc(c->env);
		clear_env();
		CHECK(setenv(c->env, c->val, 1) == 0);
		*field(o) = o->def + 1;   /* the default comes back, not the old value */
		CHECK(load(NULL) == 0);
		check_one_warning(c->env, c->val);
		if (*field(o) != o->def) {
			fprintf(stderr, "%s=\"%s\": %llu, want the default %llu\n", c->env, c->val,
				(unsigned long long)*field(o), (unsigned long long)o->def);
			exit(T_FAIL);
		}
		check_defaults();
	}

	/* the line says which words are accepted where a number is not all */
	clear_env();
	CHECK(setenv("DEDUP_LOG", "verbose", 1) == 0);
	CHECK(load(NULL) == 0 && nlines() == 1);
	CHECK(strstr(err, "expected quiet|error|warn|info|debug|stats or a number in [0, 5]"));
	clear_env();
	CHECK(setenv("DEDUP_ZERO_PAGES", "maybe", 1) == 0);
	CHECK(load(NULL) == 0 && nlines() == 1);
	CHECK(strstr(err, "expected on/off, yes/no, true/false or a number in [0, 1]"));
	clear_env();
	CHECK(setenv("DEDUP_MIN_REGION", "big", 1) == 0);
	CHECK(load(NULL) == 0 && nlines() == 1);
	CHECK(strstr(err, "expected a size (K/M/G suffix allowed) in [4096, "));
	clear_env();
	CHECK(setenv("DEDUP_CPU", "all", 1) == 0);
	CHECK(load(NULL) == 0 && nlines() == 1);
	CHECK(strstr(err, ": ignoring DEDUP_CPU=\"all\": expected a number in [1, 100]; "
			  "using the default\n"));

	/* two bad variables, one good: two lines, one each; the good one counts */
	clear_env();
	CHECK(setenv("DEDUP_CPU", "lots", 1) == 0);
	CHECK(setenv("DEDUP_BATCH", "9999", 1) == 0);
	CHECK(setenv("DEDUP_INTERVAL", "1000", 1) == 0);
	CHECK(load(NULL) == 0);
	CHECK(nlines() == 2);
	CHECK(strstr(err, "DEDUP_CPU=\"lots\"") && strstr(err, "DEDUP_BATCH=\"9999\""));
	CHECK(strchr(err, '\n') < strstr(err, "DEDUP_BATCH"));   /* on separate lines */
	CHECK(dd_opt.cpu_percent == 25 && dd_opt.batch_pages == 64);
	CHECK(dd_opt.scan_interval_ms == 1000);
}

/* The warnings follow DEDUP_LOG, which is read first. */
static void test_env_log_level(void)
{
	static const struct {
		const char *log;
		int lines;
		uint64_t level;
	} cases[] = {
		{ "quiet", 0, DEDUP_LOG_QUIET }, { "0", 0, DEDUP_LOG_QUIET },
		{ "error", 0, DEDUP_LOG_ERROR }, { "warn", 1, DEDUP_LOG_WARN },
		{ "info", 1, DEDUP_LOG_INFO },   { "debug", 1, DEDUP_LOG_DEBUG },
		{ "stats", 1, DEDUP_LOG_STATS }, /* "stats" logs like "warn" */
	};
	for (size_t i = 0; i < DD_ARRAY_SIZE(cases); i++) {
		clear_env();
		CHECK(setenv("DEDUP_LOG", cases[i].log, 1) == 0);
		CHECK(setenv("DEDUP_CPU", "abc", 1) == 0);
		CHECK(load(NULL) == 0);
		CHECK(nlines() == cases[i].lines);
		if (cases[i].lines)
			check_one_warning("DEDUP_CPU", "abc");
		CHECK(dd_opt.log_level == cases[i].level && dd_opt.cpu_percent == 25);
	}
	/* a bad DEDUP_LOG is reported at the default level, and so are the others */
	clear_env();
	CHECK(setenv("DEDUP_LOG", "loud", 1) == 0);
	CHECK(setenv("DEDUP_CPU", "abc", 1) == 0);
	CHECK(load(NULL) == 0);
	CHECK(nlines() == 2 && strstr(err, "DEDUP_LOG=\"loud\"") && strstr(err, "DEDUP_CPU=\"abc\""));
	CHECK(dd_opt.log_level == DEDUP_LOG_WARN);
}

/* ---- struct dedup_config ----------------------------------------------- */

static void set_env_all(void)
{
	clear_env();
	CHECK(setenv("DEDUP_INTERVAL", "1000", 1) == 0);
	CHECK(setenv("DEDUP_PAGES_PER_SEC", "1K", 1) == 0);
	CHECK(setenv("DEDUP_CPU", "50", 1) == 0);
	CHECK(setenv("DEDUP_ZERO_PAGES", "off", 1) == 0);
	CHECK(setenv("DEDUP_VMA_BUDGET", "77", 1) == 0);
	CHECK(setenv("DEDUP_MIN_REGION", "8K", 1) == 0);
	CHECK(setenv("DEDUP_LOG", "error", 1) == 0);
	CHECK(setenv("DEDUP_BATCH", "32", 1) == 0);
	CHECK(setenv("DEDUP_STORE_MAX", "2M", 1) == 0);
	CHECK(setenv("DEDUP_TEST_HASH_BITS", "7", 1) == 0);
}

static void check_env_all(void)
{
	CHECK(dd_opt.scan_interval_ms == 1000 && dd_opt.pages_per_sec == 1024 &&
	      dd_opt.cpu_percent == 50 && dd_opt.zero_pages == 0 && dd_opt.vma_budget == 77 &&
	      dd_opt.min_region == 8192 && dd_opt.log_level == DEDUP_LOG_ERROR &&
	      dd_opt.batch_pages == 32 && dd_opt.store_max == 2 << 20 &&
	      dd_opt.test_hash_bits == 7 && dd_opt.test_unsafe_no_move == 0);
}

static void test_config(void)
{
	struct dedup_config cfg = { .size = sizeof(cfg) };

	/* all zero: the environment */
	set_env_all();
	CHECK(load(&cfg) == 0 && err[0] == 0);
	check_env_all();
	clear_env();
	CHECK(load(&cfg) == 0 && err[0] == 0);
	check_defaults();

	/* every field set: it wins over the environment */
	set_env_all();
	cfg = (struct dedup_config){ .size = sizeof(cfg), .scan_interval_ms = 2000,
				     .pages_per_sec = 5, .cpu_percent = 75, .zero_pages = 1,
				     .vma_budget = 88, .min_region = 16384,
				     .log_level = DEDUP_LOG_DEBUG + 1, .batch_pages = 16 };
	CHECK(load(&cfg) == 0 && err[0] == 0);
	CHECK(dd_opt.scan_interval_ms == 2000 && dd_opt.pages_per_sec == 5 &&
	      dd_opt.cpu_percent == 75 && dd_opt.zero_pages == 1 && dd_opt.vma_budget == 88 &&
	      dd_opt.min_region == 16384 && dd_opt.log_level == DEDUP_LOG_DEBUG &&
	      dd_opt.batch_pages == 16);
	/* no config field for these: the environment still counts */
	CHECK(dd_opt.store_max == 2 << 20 && dd_opt.test_hash_bits == 7);

	/* zero_pages: the sign counts; log_level: the enum + 1 */
	clear_env();
	CHECK(setenv("DEDUP_ZERO_PAGES", "on", 1) == 0);
	cfg = (struct dedup_config){ .size = sizeof(cfg), .zero_pages = -1 };
	CHECK(load(&cfg) == 0 && dd_opt.zero_pages == 0);
	cfg.zero_pages = -7;
	CHECK(load(&cfg) == 0 && dd_opt.zero_pages == 0);
	CHECK(setenv("DEDUP_ZERO_PAGES", "off", 1) == 0);
	cfg.zero_pages = 7;
	CHECK(load(&cfg) == 0 && dd_opt.zero_pages == 1);
	cfg.zero_pages = 0;
	CHECK(load(&cfg) == 0 && dd_opt.zero_pages == 0);
	for (int l = DEDUP_LOG_QUIET; l <= DEDUP_LOG_STATS; l++) {
		cfg = (struct dedup_config){ .size = sizeof(cfg), .log_level = l + 1 };
		CHECK(load(&cfg) == 0 && dd_opt.log_level == (uint64_t)l);
	}

	/* range edges are accepted */
	clear_env();
	cfg = (struct dedup_config){ .size = sizeof(cfg), .scan_interval_ms = 3600000,
				     .cpu_percent = 100, .min_region = 4096,
				     .batch_pages = DD_MAX_BATCH, .pages_per_sec = UINT64_MAX / 2,
				     .vma_budget = UINT64_MAX / 2 };
	CHECK(load(&cfg) == 0 && err[0] == 0);
	CHECK(dd_opt.scan_interval_ms == 3600000 && dd_opt.cpu_percent == 100 &&
	      dd_opt.min_region == 4096 && dd_opt.batch_pages == DD_MAX_BATCH &&
	      dd_opt.pages_per_sec == UINT64_MAX / 2 && dd_opt.vma_budget == UINT64_MAX / 2);
	cfg = (struct dedup_config){ .size = sizeof(cfg), .cpu_percent = 1, .batch_pages = 1 };
	CHECK(load(&cfg) == 0 && dd_opt.cpu_percent == 1 && dd_opt.batch_pages == 1);

	/* out of range: -EINVAL, nothing printed, the options as they were
	 * (except log_level, which dd_options_load sets before it checks cfg) */
	static const struct dedup_config badcfg[] = {
		{ .scan_interval_ms = 3600001 },
		{ .pages_per_sec = UINT64_MAX / 2 + 1 },
		{ .cpu_percent = 101 },
		{ .vma_budget = UINT64_MAX / 2 + 1 },
		{ .min_region = 4095 },
		{ .batch_pages = DD_MAX_BATCH + 1 },
		{ .log_level = DEDUP_LOG_STATS + 2 },
		{ .log_level = -1 },
		{ .cpu_percent = 50, .batch_pages = 100000 },
	};
	for (size_t i = 0; i < DD_ARRAY_SIZE(badcfg); i++) {
		set_env_all();
		CHECK(load(NULL) == 0);
		struct dd_options before = dd_opt;
		cfg = badcfg[i];
		cfg.size = sizeof(cfg);
		CHECK(load(&cfg) == -EINVAL && err[0] == 0);
		dd_opt.log_level = before.log_level;
		CHECK(memcmp(&dd_opt, &before, sizeof(before)) == 0);
	}

	/* cfg->size: below 4 is an error; fields beyond it are not read */
	set_env_all();
	for (uint32_t sz = 0; sz < 4; sz++) {
		cfg = (struct dedup_config){ .size = sz, .cpu_percent = 75 };
		CHECK(load(&cfg) == -EINVAL);
	}
	cfg = (struct dedup_config){ .size = 4, .scan_interval_ms = 2000, .cpu_percent = 75,
				     .batch_pages = 16, .log_level = DEDUP_LOG_DEBUG + 1 };
	CHECK(load(&cfg) == 0);
	check_env_all();
	cfg.size = offsetof(struct dedup_config, cpu_percent);
	CHECK(load(&cfg) == 0);
	CHECK(dd_opt.scan_interval_ms == 2000 && dd_opt.cpu_percent == 50);
	cfg.size = offsetof(struct dedup_config, batch_pages);   /* an older caller */
	CHECK(load(&cfg) == 0);
	CHECK(dd_opt.cpu_percent == 75 && dd_opt.log_level == DEDUP_LOG_DEBUG &&
	      dd_opt.batch_pages == 32);
	cfg.size = sizeof(cfg);
	CHECK(load(&cfg) == 0 && dd_opt.batch_pages == 16);

	/* A bad variable is reported even when a config field overrides it
	 * (the environment is read first), and the config value is used. */
	clear_env();
	CHECK(setenv("DEDUP_CPU", "abc", 1) == 0);
	cfg = (struct dedup_config){ .size = sizeof(cfg), .cpu_percent = 60 };
	CHECK(load(&cfg) == 0);
	check_one_warning("DEDUP_CPU", "abc");
	CHECK(dd_opt.cpu_percent == 60);
	/* A zero field cannot force 0 over the environment: 0 means "not set". */
	CHECK(setenv("DEDUP_INTERVAL", "500", 1) == 0);
	cfg = (struct dedup_config){ .size = sizeof(cfg), .scan_interval_ms = 0 };
	CHECK(load(&cfg) == 0 && dd_opt.scan_interval_ms == 500);
}

/*
 * DEDUP_SHARE and dedup_config.share: a good name is kept; the config's
 * wins over the variable; a bad one is an error with one line (the user
 * asked for sharing: not a quiet "alone"); none is "".
 */
static void test_share(void)
{
	static const char *const good_names[] = { "a", "web", "ok_name-1.2", "A.b",
		"0123456789012345678901234567890123456789012345678901234567890123" };
	static const char *const bad_names[] = { ".x", "a/b", "../x", "a b", "x\n", "n\xc3\xa9",
		"01234567890123456789012345678901234567890123456789012345678901234" };
	struct dedup_config cfg = { .size = sizeof(cfg) };

	clear_env();
	unsetenv("DEDUP_SHARE");
	CHECK(load(NULL) == 0 && dd_share_name[0] == 0);
	for (size_t i = 0; i < DD_ARRAY_SIZE(good_names); i++) {
		CHECK(dd_share_name_ok(good_names[i]));
		setenv("DEDUP_SHARE", good_names[i], 1);
		CHECK(load(NULL) == 0 && strcmp(dd_share_name, good_names[i]) == 0 && nlines() == 0);
	}
	for (size_t i = 0; i < DD_ARRAY_SIZE(bad_names); i++) {
		CHECK(!dd_share_name_ok(bad_names[i]));
		setenv("DEDUP_SHARE", bad_names[i], 1);
		CHECK(load(NULL) == -EINVAL && nlines() == 1 && strstr(err, "DEDUP_SHARE"));
		unsetenv("DEDUP_SHARE");
		cfg.share = bad_names[i];
		CHECK(load(&cfg) == -EINVAL && nlines() == 1);
	}
	CHECK(!dd_share_name_ok(""));
	setenv("DEDUP_SHARE", "fromenv", 1);
	cfg.share = "fromcfg";
	CHECK(load(&cfg) == 0 && strcmp(dd_share_name, "fromcfg") == 0);
	cfg.share = "";   /* empty: the variable's */
	CHECK(load(&cfg) == 0 && strcmp(dd_share_name, "fromenv") == 0);
	/* a caller built against the old struct (no share field) */
	cfg.size = offsetof(struct dedup_config, share);
	cfg.share = "x";
	CHECK(load(&cfg) == 0 && strcmp(dd_share_name, "fromenv") == 0);
	setenv("DEDUP_SHARE", "", 1);
	CHECK(load(NULL) == 0 && dd_share_name[0] == 0);
	unsetenv("DEDUP_SHARE");
}

int main(void)
{
	test_share();
	test_parse();
	test_defaults();
	test_env_good();
	test_env_bad();
	test_env_log_level();
	test_config();
	clear_env();
	CHECK(load(NULL) == 0);
	return T_PASS;
}
