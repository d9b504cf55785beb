/* SPDX-License-Identifier: MIT */
/*
 * plot.c - memory saved over time, one panel per workload, one line per
 * mode, from series.csv into DIR/saved.png.
 *
 * gnuplot first (Debian gnuplot-nox: pngcairo, else png): we write
 * DIR/plot.gp, which filters series.csv by workload and mode, and run it.
 * If gnuplot is missing or fails, python3 with matplotlib runs plot.py
 * (from the source tree: DEDUP_BENCH_SRC_DIR). If neither works, there is no PNG and
 * dedup-bench says so; the numbers are unaffected.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

static int run(char *const argv[])
{
	pid_t pid = fork();
	int st;

	if (pid < 0)
		return -1;
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		if (null >= 0)
			dup2(null, 1);
		execvp(argv[0], argv);
		_exit(127);
	}
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool nonempty(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && st.st_size > 0;
}

static bool plotted(struct result *rs, size_t n, const struct workload *w, const struct mode *m)
{
	for (size_t i = 0; i < n; i++)
		if (rs[i].w == w && rs[i].m == m && !is_na(rs[i].saved_kib))
			return true;
	return false;
}

static int gnuplot(const char *dir, struct result *rs, size_t n, const char *png)
{
	char gp[4096], term[64] = "pngcairo size 1500,900 font ',10'";
	size_t panels = 0;

	for (size_t wi = 0; wi < nworkloads; wi++)
		for (size_t mi = 0; mi < nmodes; mi++)
			if (plotted(rs, n, &workloads[wi], &modes[mi])) {
				panels++;
				break;
			}
	if (!panels)
		return -1;
	char *const probe[] = { (char *)"gnuplot", (char *)"-e", (char *)"set terminal pngcairo",
				NULL };
	if (run(probe) != 0)
		snprintf(term, sizeof(term), "png size 1500,900");
	snprintf(gp, sizeof(gp), "%s/plot.gp", dir);
	FILE *f = fopen(gp, "w");
	if (!f)
		return -1;
	size_t cols = panels < 3 ? panels : 3, rows = (panels + cols - 1) / cols;
	fprintf(f, "# dedup-bench: memory saved over time (generated)\n"
		   "set terminal %s\nset output '%s'\nset datafile separator ','\n"
		   "set key top left font ',8'\nset grid\n"
		   "set logscale x\nset xrange [0.05:*]\n"
		   "set xlabel 'seconds since go (log scale)'\n"
		   "set ylabel 'saved MiB (Pss)'\n"
		   "set multiplot layout %zu,%zu title 'dedup-bench: memory saved over time, %zu MiB per "
		   "workload'\n",
		term, png, rows, cols, opt.size_mib);
	for (size_t wi = 0; wi < nworkloads; wi++) {
		const struct workload *w = &workloads[wi];
		bool first = true;
		for (size_t mi = 0; mi < nmodes; mi++) {
			const struct mode *m = &modes[mi];
			if (!plotted(rs, n, w, m))
				continue;
			if (first)
				fprintf(f, "set title '%s'\nplot ", w->name);
			fprintf(f, "%s'%s/series.csv' using 1:((strcol(2) eq '%s' && strcol(3) eq '%s') ? "
				   "$5/1024 : 1/0) with lines lw 2 title '%s'",
				first ? "" : ", \\\n     ", dir, w->name, m->name, m->name);
			first = false;
		}
		if (!first)
			fprintf(f, "\n");
	}
	fprintf(f, "unset multiplot\n");
	if (fclose(f) != 0)
		return -1;
	char *const argv[] = { (char *)"gnuplot", gp, NULL };
	return run(argv) == 0 && nonempty(png) ? 0 : -1;
}

int plot_png(const char *dir, struct result *rs, size_t n)
{
	char png[4096], series[4096];

	snprintf(png, sizeof(png), "%s/saved.png", dir);
	snprintf(series, sizeof(series), "%s/series.csv", dir);
	unlink(png);
	if (gnuplot(dir, rs, n, png) == 0)
		return 0;
	/* Debian's python3-matplotlib is for /usr/bin/python3; a python3 found
	 * first in PATH (pyenv, venv) may not have it */
	static const char *const pythons[] = { "/usr/bin/python3", "python3" };
	for (size_t i = 0; i < B_ARRAY_SIZE(pythons); i++) {
		char *const py[] = { (char *)pythons[i], (char *)DEDUP_BENCH_SRC_DIR "/plot.py", series,
				     png, NULL };
		if (run(py) == 0 && nonempty(png))
			return 0;
	}
	return -1;
}
