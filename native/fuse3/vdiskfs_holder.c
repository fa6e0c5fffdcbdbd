/*
 * vdiskfs-holder: keeps a FUSE 3 mount's /dev/fuse descriptor open while its daemon runs, so that the
 * mount outlives the daemon (docs/TRANSPORT.md, "A mount that outlives its daemon").
 *
 *   vdiskfs-holder DAEMON_PID [--log FILE] -- COMMAND [ARG...]
 *
 * The daemon starts it (detached, its own session) with the descriptor as fd 3, right after mounting.
 * It waits on two things: the daemon's exit (a pidfd) and the connection's end (poll on the descriptor
 * reports POLLERR once the kernel has dropped the connection: unmounted). When the daemon is gone and
 * the connection is not, it starts COMMAND (a new daemon: vdiskfs mount ... --takeover-fd 3) with the
 * descriptor as fd 3, and watches that one. The kernel keeps every request meanwhile (the holder's
 * descriptor is the daemon's open file: nothing the dead daemon had read is lost); the new daemon asks
 * for them again with FUSE_NOTIFY_RESEND.
 *
 * It gives up (closes the descriptor: the mount then reports ENOTCONN, as without a holder) after
 * restartsMax restarts within restartWindowSeconds. SIGTERM (a clean stop: vdiskfs umount, the
 * daemon's SIGTERM) ends it at once. It holds nothing else: no pool file, no socket.
 *
 * Notifications. The daemon gives it a socket as fd 4 (SOCK_SEQPACKET): the holder forks a notifier
 * for it, a process that writes each message it receives (a notification: fuse_out_header with unique 0)
 * to /dev/fuse and answers with the errno of that write (0: taken). A notification can wait in the kernel
 * for a lock that a request the daemon has not answered holds; written by the daemon itself, a daemon
 * killed meanwhile would never fully exit (that thread stays in the kernel, the process keeps its files
 * and the catalog's lock) and the request would never be answered. Written by the notifier, the daemon
 * dies whole, the next daemon answers the request, and the notifier's write then completes; it exits
 * when its daemon's end of the socket is closed. Each daemon the holder starts gets a new socket (its
 * fd 4) and a notifier of its own.
 *
 * With --log FILE (the daemon's daemon.log), each of its lines is appended to FILE opened anew, and each
 * daemon it starts gets FILE opened anew as its stderr: the daemon rotates daemon.log, and a descriptor
 * kept from the start would go on writing into the rotated-away file. Without it, lines go to stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FUSE_FD 3
#define NOTIFY_FD 4
#define restartsMax 5
#define restartWindowSeconds 60

static volatile sig_atomic_t stop = 0;
static void on_term(int sig) { (void)sig; stop = 1; }

static int pidfd_of(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

/* 1 when the kernel has dropped the connection (unmounted, aborted). */
static int connection_gone(void) {
  struct pollfd p = { .fd = FUSE_FD, .events = 0 };
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLERR | POLLHUP | POLLNVAL)) != 0;
}

static const char *logPath = NULL;

/* The notifier: writes each notification `sock` brings to /dev/fuse, answers with its errno. Never returns. */
static void notifier(int sock) {
  static char buf[65536];
  for (;;) {
    ssize_t n = recv(sock, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) _exit(0);
    ssize_t w = write(FUSE_FD, buf, (size_t)n);
    int err = w == n ? 0 : (w < 0 ? errno : EIO);
    if (send(sock, &err, sizeof(err), MSG_NOSIGNAL) < 0) _exit(0);
  }
}

/*
 * Forks a notifier on `sock` (closed here afterwards); its pid, or -1. It runs this program again as
 * `vdiskfs-notifier --notifier` (the socket as its fd 4), so that its command line is not a holder's
 * (the CLI and the tests find holders by theirs).
 */
static pid_t start_notifier(int sock) {
  pid_t pid = fork();
  if (pid == 0) {
    if (sock != NOTIFY_FD) { dup2(sock, NOTIFY_FD); close(sock); } else fcntl(NOTIFY_FD, F_SETFD, 0);
    for (int fd = 5; fd < 1024; fd++) close(fd);
    execl("/proc/self/exe", "vdiskfs-notifier", "--notifier", (char *)NULL);
    notifier(NOTIFY_FD); /* exec failed: serve from this copy of the holder */
  }
  if (sock != NOTIFY_FD) close(sock); else close(NOTIFY_FD);
  return pid;
}

/* FILE opened for appending (created 0600), or -1. */
static int open_log(void) {
  return logPath == NULL ? -1 : open(logPath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
}

/* One line, in daemon.log's form (ISO time, then the message) when logging to FILE. */
static void say(const char *what, long value) {
  int fd = open_log();
  if (fd < 0) { fprintf(stderr, "vdiskfs-holder[%ld]: %s %ld\n", (long)getpid(), what, value); return; }
  char stamp[32];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
  dprintf(fd, "%s.%03ldZ holder (pid %ld): %s %ld\n", stamp, ts.tv_nsec / 1000000, (long)getpid(), what, value);
  close(fd);
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--notifier") == 0) notifier(NOTIFY_FD);
  int command = 3;
  if (argc >= 4 && strcmp(argv[2], "--log") == 0) { logPath = argv[3]; command = 5; }
  if (argc < command + 1 || strcmp(argv[command - 1], "--") != 0) {
    fprintf(stderr, "usage: vdiskfs-holder DAEMON_PID [--log FILE] -- COMMAND [ARG...] (with /dev/fuse as fd 3)\n");
    return 2;
  }
  if (fcntl(FUSE_FD, F_GETFD) == -1) { fprintf(stderr, "vdiskfs-holder: fd 3 is not open\n"); return 2; }
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  /* The first daemon's notification socket: its notifier. */
  if (fcntl(NOTIFY_FD, F_GETFD) != -1) start_notifier(NOTIFY_FD);
  pid_t daemon = (pid_t)atol(argv[1]);
  int watched = pidfd_of(daemon);
  time_t restarts[restartsMax];
  int restartCount = 0;
  for (;;) {
    if (stop) return 0;
    struct pollfd p[2] = { { .fd = watched, .events = POLLIN }, { .fd = FUSE_FD, .events = 0 } };
    int n = poll(p, 2, 1000); /* a negative fd (no daemon watched) is skipped by poll */
    if (n < 0 && errno != EINTR) return 1;
    if (stop) return 0;
    if (connection_gone()) return 0;
    int daemonGone = watched < 0 || (n > 0 && (p[0].revents & POLLIN) != 0);
    /* Reap what is ours (restarted daemons are our children). */
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
    if (!daemonGone) continue;
    if (watched >= 0) close(watched);
    watched = -1;
    /* A daemon that stopped because the mount went away: the connection ends within moments. */
    for (int i = 0; i < 10 && !connection_gone() && !stop; i++) usleep(50000);
    if (stop || connection_gone()) return 0;
    time_t now = time(NULL);
    if (restartCount == restartsMax) {
      if (now - restarts[0] < restartWindowSeconds) { say("giving up after restarts:", restartsMax); return 1; }
      memmove(restarts, restarts + 1, sizeof(time_t) * (restartsMax - 1));
      restartCount--;
    }
    restarts[restartCount++] = now;
    int pair[2] = { -1, -1 };
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) say("no notification socket for the new daemon, errno", errno);
    pid_t child = fork();
    if (child < 0) { say("fork failed, errno", errno); if (pair[0] >= 0) { close(pair[0]); close(pair[1]); } sleep(1); continue; }
    if (child == 0) {
      /* The daemon's end as its fd 4 (without close-on-exec); without one, it writes notifications itself. */
      if (pair[1] == NOTIFY_FD) fcntl(NOTIFY_FD, F_SETFD, 0);
      else if (pair[1] >= 0) dup2(pair[1], NOTIFY_FD);
      else close(NOTIFY_FD);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, NULL);
      signal(SIGTERM, SIG_DFL);
      signal(SIGINT, SIG_DFL);
      signal(SIGHUP, SIG_DFL);
      signal(SIGPIPE, SIG_DFL);
      int log = open_log();
      if (log > 2) { dup2(log, 2); close(log); }
      execvp(argv[command], argv + command);
      _exit(127);
    }
    if (pair[0] >= 0) { close(pair[1]); start_notifier(pair[0]); }
    say("started a new daemon, pid", child);
    watched = pidfd_of(child);
  }
}
