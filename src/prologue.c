/*
 * pytest-fast -- a resident, fork-based pytest accelerator.
 *
 * One translation unit, read top to bottom: the sections below are the
 * files of src/ (this one is prologue.c), which src/amalgamate.py joins
 * into pytest_fast.c, the one file a user compiles:
 *
 *   util.c      Utilities      logging, memory, time, fds, paths, vectors
 *   codec.c     Values, codec  the pickle subset spoken on every socket
 *   frame.c     Framing        4-byte length frames, SCM_RIGHTS
 *   sha256.c    SHA-256        identity and fingerprint hashing
 *   cores.c     Worker count   performance cores, affinity, cgroup quota
 *   args.c      Arguments      which pytest arguments are per run
 *   identity.c  Identity       environment fingerprint, address, directory
 *   tree.c      Tree           what --watch watches: the project's files
 *   zygote.c    Zygote         embedded CPython: collects once, then forks;
 *                              its Python is glue.py, inlined as a string
 *   daemon.c    Daemon         accept loop, staleness, dispatcher, summary
 *   client.c    Client         starts the daemon, sends a run, prints it
 *   main.c      main           role dispatch
 *
 * Each section only calls the sections above it.  Processes: the client
 * (never starts Python) talks to the daemon (pure C, owns the socket); the
 * daemon execs the zygote (this binary with an embedded interpreter), which
 * collects once and forks a *leader* per run; the leader forks the workers.
 * Every process below the daemon talks to it over socketpairs made before
 * the fork, in frames that the daemon decodes with a data-only decoder.
 *
 * Build: cc pytest_fast.c $(python3.X-config --cflags --embed --ldflags)
 */
#define _GNU_SOURCE 1    /* as pyconfig.h defines it: an identical redefinition is silent */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sched.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#endif
#ifdef __APPLE__
#include <mach-o/dyld.h>
#include <sys/sysctl.h>
#include <sys/ucred.h>
#endif

#include "pytest_fast.h"

/* Portability.  Linux has all of these; macOS and the BSDs lack some, and
 * the helpers below set the same flags with fcntl instead. */
#ifdef __APPLE__
#define st_mtim st_mtimespec
#define st_ctim st_ctimespec
#endif
#ifndef SOCK_CLOEXEC
#define PF_NO_SOCK_FLAGS 1
#define SOCK_CLOEXEC 0
#define SOCK_NONBLOCK 0
#endif
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0        /* SIGPIPE is ignored in every process that sends */
#endif
#ifndef MSG_CMSG_CLOEXEC
#define MSG_CMSG_CLOEXEC 0    /* received fds are set close-on-exec afterwards */
#endif

/* Room for a message that quotes a path. */
#define PF_ERRLEN (PATH_MAX + 512)

#ifndef PF_BUILD_PYTHON
#define PF_BUILD_PYTHON ""   /* build.sh records the interpreter it built for */
#endif
