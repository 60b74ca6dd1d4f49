/* Shifts the wall clock of the process it is preloaded into (LD_PRELOAD) by the number of
   milliseconds written in the file $SHIFT_FILE, read again every 50 ms: a redis-server
   whose clock steps while it runs (libfaketime hangs redis-server's jemalloc). The
   monotonic clock is left alone. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile long long shift_ns, read_at_ns;

static void read_shift(void) {
  struct timespec m;
  syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &m);
  long long now = m.tv_sec * 1000000000LL + m.tv_nsec;
  if (read_at_ns && now - read_at_ns < 50000000LL) return;
  read_at_ns = now;
  const char *file = getenv("SHIFT_FILE");
  if (!file) return;
  int fd = open(file, O_RDONLY);
  if (fd < 0) return;
  char buf[64];
  int n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n > 0) {
    buf[n] = 0;
    shift_ns = atoll(buf) * 1000000LL;
  }
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
  int r = syscall(SYS_clock_gettime, clock, ts);
  if (r == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
    read_shift();
    long long ns = ts->tv_sec * 1000000000LL + ts->tv_nsec + shift_ns;
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
  }
  return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
  (void)tz;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (tv) {
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
  }
  return 0;
}

time_t time(time_t *t) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (t) *t = ts.tv_sec;
  return ts.tv_sec;
}
