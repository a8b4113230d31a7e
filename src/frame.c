/* ==========================================================================
 * Framing
 *
 * Owns the wire format: a 4-byte big-endian payload length, then the
 * payload, with optional SCM_RIGHTS fds riding on the first byte.  Calls
 * pf_encode and pf_buf_* from the codec section, and libc.  Works on
 * sockets and, without fds, on pipes and files; the reader never reads
 * past the frame it is on, so the bytes and fds of the next frame stay in
 * the kernel for whoever reads next.
 * ========================================================================== */

#define FRAME_CHUNK (64u * 1024u) /* body buffer grows by about this as bytes arrive */

/* Internal feed result: bytes arrived but the frame is not complete. */
#define FRAME_PROGRESS 2

static int frame_wait(int fd, short events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int n = poll(&p, 1, timeout_ms);
    if (n > 0 && (p.revents & POLLNVAL)) {
        errno = EBADF;
        return -1;
    }
    return n;
}

int pf_frame_write(int fd, const void *payload, size_t len, const int *fds, int nfds)
{
    if (len > PF_MAX_FRAME) {
        errno = EMSGSIZE;
        return -1;
    }
    if (nfds < 0 || nfds > PF_MAX_FDS || (nfds && !fds) || (len && !payload)) {
        errno = EINVAL;
        return -1;
    }
    uint8_t hdr[PF_FRAME_HEADER] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16),
                                    (uint8_t)(len >> 8), (uint8_t)len};
    struct iovec iov[2] = {{hdr, sizeof hdr}, {(void *)payload, len}};
    struct iovec *v = iov;
    int niov = len ? 2 : 1;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * PF_MAX_FDS)];
    } ctl;
    struct msghdr m = {0};
    if (nfds) {
        memset(&ctl, 0, sizeof ctl);
        m.msg_control = ctl.buf;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    bool sock = true;
    while (niov) {
        ssize_t n;
        if (sock) {
            m.msg_iov = v;
            m.msg_iovlen = (size_t)niov;
            n = sendmsg(fd, &m, MSG_NOSIGNAL); /* a dead peer is EPIPE, not a signal */
            if (n < 0 && errno == ENOTSOCK && !nfds) {
                sock = false; /* a pipe or file; fds could not travel anyway */
                continue;
            }
        } else {
            n = writev(fd, v, niov);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if ((errno == EAGAIN || errno == EWOULDBLOCK) &&
                (frame_wait(fd, POLLOUT, -1) >= 0 || errno == EINTR))
                continue; /* non-blocking fd: the whole frame still goes out */
            return -1;
        }
        m.msg_control = NULL; /* the fds went with the first byte */
        m.msg_controllen = 0;
        size_t done = (size_t)n;
        for (; niov && done >= v->iov_len; niov--, v++)
            done -= v->iov_len;
        if (niov) {
            v->iov_base = (char *)v->iov_base + done;
            v->iov_len -= done;
        }
    }
    return 0;
}

int pf_send_value(int fd, const pf_value *v)
{
    pf_buf b = {0};
    int rc = pf_encode(&b, v);
    if (rc == 0)
        rc = pf_frame_write(fd, b.data, b.len, NULL, 0);
    int saved = errno;
    pf_buf_free(&b);
    errno = saved;
    return rc;
}

void pf_reader_init(pf_reader *r)
{
    memset(r, 0, sizeof *r);
    for (int i = 0; i < PF_MAX_FDS; i++)
        r->fds[i] = -1;
}

/* fds[0..nfds) still in the reader were not claimed (a caller claims them
 * by copying them and setting nfds to 0); close them rather than leak. */
static void frame_close_fds(pf_reader *r)
{
    for (int i = 0; i < r->nfds; i++)
        if (r->fds[i] >= 0)
            close(r->fds[i]);
    r->nfds = 0;
    for (int i = 0; i < PF_MAX_FDS; i++)
        r->fds[i] = -1;
}

void pf_reader_reset(pf_reader *r)
{
    frame_close_fds(r);
    r->hdr_have = 0;
    r->need = 0;
    r->body.len = 0;
}

void pf_reader_free(pf_reader *r)
{
    frame_close_fds(r);
    pf_buf_free(&r->body);
    pf_reader_init(r);
}

static size_t frame_len(const pf_reader *r)
{
    return (size_t)r->hdr[0] << 24 | (size_t)r->hdr[1] << 16 | (size_t)r->hdr[2] << 8 | r->hdr[3];
}

static void frame_take_fds(pf_reader *r, struct msghdr *m)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof fd, sizeof fd);
            if (r->nfds < PF_MAX_FDS)
                r->fds[r->nfds++] = fd;
            else
                close(fd); /* more than a frame may carry */
        }
    }
}

/* One recvmsg(2) (read(2) on a non-socket), retried on EINTR.  A control
 * buffer for PF_MAX_FDS: the kernel discards any fds beyond it. */
static ssize_t frame_recv(pf_reader *r, int fd, void *dst, size_t want, int flags)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * PF_MAX_FDS)];
    } ctl;
    for (;;) {
        struct iovec iov = {dst, want};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                           .msg_controllen = sizeof ctl.buf};
        ssize_t n = recvmsg(fd, &m, flags | MSG_CMSG_CLOEXEC);
        if (n >= 0)
            frame_take_fds(r, &m);
        else if (errno == ENOTSOCK)
            n = read(fd, dst, want);
        if (n >= 0 || errno != EINTR)
            return n;
    }
}

/* The state needs no read: a complete frame, or a header already refused. */
static int frame_ready(const pf_reader *r)
{
    if (r->hdr_have < PF_FRAME_HEADER)
        return PF_READ_AGAIN;
    if (frame_len(r) > PF_MAX_FRAME) {
        errno = EMSGSIZE;
        return PF_READ_ERROR;
    }
    return r->body.len == r->need ? PF_READ_FRAME : PF_READ_AGAIN;
}

/* One read of at most what the current frame still lacks. */
static int frame_step(pf_reader *r, int fd, int flags)
{
    int rc = frame_ready(r);
    if (rc != PF_READ_AGAIN)
        return rc;
    uint8_t *dst;
    size_t want;
    if (r->hdr_have < PF_FRAME_HEADER) {
        dst = r->hdr + r->hdr_have;
        want = PF_FRAME_HEADER - r->hdr_have;
    } else {
        size_t left = r->need - r->body.len;
        if (r->body.cap == r->body.len) {
            /* Grow with what arrives, not with what the header claims. */
            size_t grow = r->body.len > FRAME_CHUNK ? r->body.len : FRAME_CHUNK;
            if (pf_buf_reserve(&r->body, left < grow ? left : grow) < 0)
                return PF_READ_ERROR;
        }
        dst = r->body.data + r->body.len;
        want = r->body.cap - r->body.len < left ? r->body.cap - r->body.len : left;
    }
    ssize_t n = frame_recv(r, fd, dst, want, flags);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? PF_READ_AGAIN : PF_READ_ERROR;
    if (n == 0) {
        if (r->hdr_have == 0)
            return PF_READ_EOF;
        errno = EPROTO; /* the peer closed inside a frame */
        return PF_READ_ERROR;
    }
    if (r->hdr_have < PF_FRAME_HEADER) {
        r->hdr_have += (size_t)n;
        if (r->hdr_have == PF_FRAME_HEADER) {
            r->need = frame_len(r);
            r->body.len = 0;
            /* Checked before the body buffer is touched; and a zero-length
               payload still gets a non-NULL body.data. */
            if (r->need <= PF_MAX_FRAME && pf_buf_reserve(&r->body, 1) < 0)
                return PF_READ_ERROR;
        }
    } else {
        r->body.len += (size_t)n;
    }
    rc = frame_ready(r);
    return rc == PF_READ_AGAIN ? FRAME_PROGRESS : rc;
}

int pf_reader_feed(pf_reader *r, int fd)
{
    int rc;
    while ((rc = frame_step(r, fd, 0)) == FRAME_PROGRESS)
        ;
    return rc;
}

static int64_t frame_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Polls before every read, so a peer that stalls mid-frame cannot block us
 * past the deadline even when fd is in blocking mode. */
int pf_read_frame(pf_reader *r, int fd, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? 0 : frame_now_ms() + timeout_ms;
    for (;;) {
        int rc = frame_ready(r);
        if (rc != PF_READ_AGAIN)
            return rc;
        int ms = -1;
        if (timeout_ms >= 0) {
            int64_t left = deadline - frame_now_ms();
            ms = left > 0 ? (int)(left < INT32_MAX ? left : INT32_MAX) : 0;
        }
        int n = frame_wait(fd, POLLIN, ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return PF_READ_ERROR;
        if (n == 0) {
            errno = ETIMEDOUT;
            return PF_READ_ERROR;
        }
        rc = frame_step(r, fd, MSG_DONTWAIT);
        if (rc != FRAME_PROGRESS && rc != PF_READ_AGAIN)
            return rc;
    }
}
