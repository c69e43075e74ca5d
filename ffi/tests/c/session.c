/*
 * A player-like C program over the hushgate C ABI, run by ffi/tests/c_abi.rs
 * against a real control plane, gateway and media server.
 *
 *   session download-revoke   sign in, download HG_PATH through the local
 *                             address, compare its sha256 with HG_SHA256,
 *                             print "DOWNLOADED", then wait until the test
 *                             revokes the admission and check the revoked
 *                             state everywhere (event, state, wait, port)
 *   session serve             sign in, print "READY <addr>", keep the
 *                             session until standard input closes, stop
 *   session cycles N          start/stop N times on one handle and on new
 *                             handles, a stop while connecting, a free
 *                             without stop (run under valgrind)
 *
 * Settings come from the environment, never argv (the password is a
 * secret): HG_CONTROL_URL, HG_CA_FILE (read into memory and passed as PEM
 * text), HG_USER, HG_PASSWORD, HG_SERVER. With HG_SIGN_IN=code the
 * sessions sign in by code instead (HG_DEVICE_FILE, if set, keeps the
 * device's credential): each code shown is printed as
 * "CODE <user code> <verification_uri_complete>" for the test to approve.
 * Exit 0 only if every check held; a failed check prints "FAIL: ..." and
 * exits 1.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hushgate.h"

/* ------------------------------------------------------------ checks */

static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("FAIL: ", stdout);
  vprintf(fmt, ap);
  va_end(ap);
  printf(" (last error %s: %s)\n", hg_status_name(hg_last_error_code()),
         hg_last_error_message());
  fflush(stdout);
  exit(1);
}

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) fail(__VA_ARGS__);                                            \
  } while (0)

#define EXPECT_STATUS(call, want)                                              \
  do {                                                                         \
    hg_status got_ = (call);                                                   \
    if (got_ != (want))                                                        \
      fail("%s returned %s, expected %s", #call, hg_status_name(got_),         \
           hg_status_name(want));                                              \
  } while (0)

static const char *env(const char *name) {
  const char *v = getenv(name);
  if (v == NULL || v[0] == '\0') fail("environment variable %s is not set", name);
  return v;
}

static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) fail("cannot open %s: %s", path, strerror(errno));
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  size_t n;
  while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
    len += n;
    if (cap - len - 1 == 0) buf = realloc(buf, cap *= 2);
  }
  fclose(f);
  buf[len] = '\0';
  return buf;
}

/* ------------------------------------------------------------ sha256 */
/* Written out here (FIPS 180-4) so the program needs no crypto library. */

typedef struct {
  uint32_t h[8];
  uint64_t len;
  uint8_t block[64];
  size_t used;
} sha256_ctx;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(sha256_ctx *c, const uint8_t *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
           (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3], e = c->h[4],
           f = c->h[5], g = c->h[6], h = c->h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) +
                  ((e & f) ^ (~e & g)) + K[i] + w[i];
    uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) +
                  ((a & b) ^ (a & cc) ^ (b & cc));
    h = g; g = f; f = e; e = d + t1; d = cc; cc = b; b = a; a = t1 + t2;
  }
  c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d;
  c->h[4] += e; c->h[5] += f; c->h[6] += g; c->h[7] += h;
}

static void sha256_init(sha256_ctx *c) {
  static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372,
                                 0xa54ff53a, 0x510e527f, 0x9b05688c,
                                 0x1f83d9ab, 0x5be0cd19};
  memcpy(c->h, iv, sizeof iv);
  c->len = 0;
  c->used = 0;
}

static void sha256_update(sha256_ctx *c, const uint8_t *p, size_t n) {
  c->len += n;
  while (n > 0) {
    size_t k = 64 - c->used < n ? 64 - c->used : n;
    memcpy(c->block + c->used, p, k);
    c->used += k; p += k; n -= k;
    if (c->used == 64) { sha256_block(c, c->block); c->used = 0; }
  }
}

static void sha256_hex(sha256_ctx *c, char out[65]) {
  uint64_t bits = c->len * 8;
  uint8_t pad = 0x80, zero = 0, lenb[8];
  sha256_update(c, &pad, 1);
  while (c->used != 56) sha256_update(c, &zero, 1);
  for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
  sha256_update(c, lenb, 8);
  for (int i = 0; i < 8; i++) sprintf(out + 8 * i, "%08x", c->h[i]);
}

/* ------------------------------------------------------------ HTTP GET */

/* Connects to "host:port" or "[v6]:port"; -1 on failure. */
static int dial(const char *addr) {
  char host[128];
  const char *colon = strrchr(addr, ':');
  if (colon == NULL || (size_t)(colon - addr) >= sizeof host) return -1;
  memcpy(host, addr, (size_t)(colon - addr));
  host[colon - addr] = '\0';
  char *h = host;
  if (h[0] == '[') { h++; h[strlen(h) - 1] = '\0'; }
  struct addrinfo hints = {0}, *res;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  if (getaddrinfo(h, colon + 1, &hints, &res) != 0) return -1;
  int fd = socket(res->ai_family, SOCK_STREAM, 0);
  if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  return fd;
}

/* GET `path` from `addr`; writes the body's length and sha256. 0 on a
 * complete 200 answer, -1 otherwise. */
static int http_get(const char *addr, const char *path, size_t *len_out,
                    char hex[65]) {
  int fd = dial(addr);
  if (fd < 0) return -1;
  char req[512];
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: media\r\nUser-Agent: "
                   "hushgate-c-test\r\nConnection: close\r\n\r\n",
                   path);
  if (write(fd, req, (size_t)n) != n) { close(fd); return -1; }
  static char buf[256 * 1024];
  size_t have = 0;
  char *end = NULL;
  while (end == NULL) {
    ssize_t k = read(fd, buf + have, sizeof buf - 1 - have);
    if (k <= 0) { close(fd); return -1; }
    have += (size_t)k;
    buf[have] = '\0';
    end = strstr(buf, "\r\n\r\n");
  }
  if (strncmp(buf, "HTTP/1.1 200", 12) != 0) { close(fd); return -1; }
  char *cl = strstr(buf, "Content-Length:");
  if (cl == NULL || cl > end) { close(fd); return -1; }
  size_t want = strtoull(cl + 15, NULL, 10), got = 0;
  sha256_ctx c;
  sha256_init(&c);
  size_t body = have - (size_t)(end + 4 - buf);
  sha256_update(&c, (uint8_t *)end + 4, body);
  got += body;
  while (got < want) {
    ssize_t k = read(fd, buf, sizeof buf);
    if (k <= 0) break;
    sha256_update(&c, (uint8_t *)buf, (size_t)k);
    got += (size_t)k;
  }
  close(fd);
  if (got != want) return -1;
  *len_out = got;
  sha256_hex(&c, hex);
  return 0;
}

/* ------------------------------------------------------------ events */

/* ------------------------------------------------------------ sign-in */

static int code_mode; /* HG_SIGN_IN=code */

/* Checks a sign-in-by-code event's fields (set only on that event) and
 * prints the code for the test to approve. */
static void show_code(const hg_event *ev) {
  if (ev->kind != HG_EVENT_WAITING_FOR_APPROVAL) {
    CHECK(ev->user_code == NULL && ev->verification_uri == NULL &&
              ev->verification_uri_complete == NULL,
          "sign-in-by-code fields are set on event %d", ev->kind);
    return;
  }
  CHECK(code_mode, "a code to approve, but this session signs in by password");
  CHECK(ev->state == HG_STATE_WAITING_FOR_APPROVAL, "state %d while waiting",
        ev->state);
  CHECK(ev->user_code != NULL && strlen(ev->user_code) == 9 &&
            ev->user_code[4] == '-',
        "the user code is not XXXX-XXXX");
  CHECK(ev->verification_uri != NULL &&
            strncmp(ev->verification_uri, "https://", 8) == 0,
        "no https verification_uri");
  CHECK(ev->verification_uri_complete != NULL &&
            strstr(ev->verification_uri_complete, ev->user_code) != NULL,
        "verification_uri_complete lacks the code");
  CHECK(ev->expires_at > 0, "the code's expiry is not set");
  printf("CODE %s %s\n", ev->user_code, ev->verification_uri_complete);
  fflush(stdout);
}

/* A callback that only shows codes (for runs without other checks). */
static void on_code(const hg_event *ev, void *user_data) {
  (void)user_data;
  show_code(ev);
}

/* What the callback saw; checked by the main thread after each stop. */
typedef struct {
  pthread_mutex_t lock;
  pthread_t main_thread;
  int inside;            /* the callback is running now */
  int overlapped;        /* it was entered while running */
  int on_main_thread;    /* it ran on the caller's thread */
  int reentry_refused;   /* hg_session_stop from inside gave HG_ERR_REENTRANT */
  int state_failed;      /* hg_session_state from inside failed */
  int count[16];         /* events by kind */
  hg_session *session;
} seen_t;

static void on_event(const hg_event *ev, void *user_data) {
  seen_t *s = user_data;
  pthread_mutex_lock(&s->lock);
  if (s->inside) s->overlapped = 1;
  s->inside = 1;
  if (pthread_equal(pthread_self(), s->main_thread)) s->on_main_thread = 1;
  if (ev->kind > 0 && ev->kind < 16) s->count[ev->kind]++;
  pthread_mutex_unlock(&s->lock);
  show_code(ev);

  /* Allowed from a callback: reading the state. Refused: stopping. */
  hg_state st;
  if (hg_session_state(s->session, &st) != HG_OK) s->state_failed = 1;
  if (ev->kind == HG_EVENT_READY &&
      hg_session_stop(s->session) == HG_ERR_REENTRANT &&
      hg_last_error_code() == HG_ERR_REENTRANT)
    s->reentry_refused = 1;

  pthread_mutex_lock(&s->lock);
  s->inside = 0;
  pthread_mutex_unlock(&s->lock);
}

static void seen_init(seen_t *s, hg_session *session) {
  memset(s, 0, sizeof *s);
  pthread_mutex_init(&s->lock, NULL);
  s->main_thread = pthread_self();
  s->session = session;
}

static int seen_count(seen_t *s, hg_event_kind k) {
  pthread_mutex_lock(&s->lock);
  int n = s->count[k];
  pthread_mutex_unlock(&s->lock);
  return n;
}

static void seen_check(seen_t *s) {
  CHECK(!s->overlapped, "the callback was entered twice at once");
  CHECK(!s->on_main_thread, "the callback ran on the caller's thread");
  CHECK(!s->state_failed, "hg_session_state failed inside the callback");
}

/* Polls until an event of `kind` comes (other kinds are skipped); fails
 * after `seconds`. Returns its code. */
static hg_status poll_until(hg_session *s, hg_event_kind kind, int seconds) {
  for (int waited = 0; waited < seconds * 10; waited++) {
    hg_event *ev = NULL;
    EXPECT_STATUS(hg_session_poll_event(s, 100, &ev), HG_OK);
    if (ev == NULL) continue;
    CHECK(ev->message != NULL, "an event without a message");
    printf("event %d state %d code %s: %s\n", ev->kind, ev->state,
           hg_status_name(ev->code), ev->message);
    fflush(stdout);
    hg_event_kind got = ev->kind;
    hg_status code = ev->code;
    show_code(ev);
    hg_event_free(ev);
    if (got == kind) return code;
    if (got == HG_EVENT_FAILED) fail("the session failed while waiting");
  }
  fail("no event %d within %d s", kind, seconds);
  return HG_ERR_TIMEOUT;
}

/* ------------------------------------------------------------ sessions */

static char *ca_pem;

static hg_session *new_session(void) {
  hg_session *s = NULL;
  EXPECT_STATUS(hg_session_new(env("HG_CONTROL_URL"), ca_pem,
                               env("HG_SERVER"), &s),
                HG_OK);
  CHECK(s != NULL, "hg_session_new gave no handle");
  if (code_mode) {
    const char *file = getenv("HG_DEVICE_FILE");
    EXPECT_STATUS(hg_session_set_credential(s, HG_CREDENTIAL_DEVICE_CODE,
                                            "c-test player", file),
                  HG_OK);
  } else {
    EXPECT_STATUS(hg_session_set_credential(s, HG_CREDENTIAL_PASSWORD,
                                            env("HG_USER"), env("HG_PASSWORD")),
                  HG_OK);
  }
  return s;
}

/* The checks that need no network: bad arguments get a code and a message. */
static void argument_checks(void) {
  hg_session *s = NULL;
  EXPECT_STATUS(hg_session_new(NULL, NULL, "den", &s), HG_ERR_INVALID_ARGUMENT);
  CHECK(strstr(hg_last_error_message(), "control_url") != NULL,
        "the message does not name the NULL argument");
  EXPECT_STATUS(hg_session_new("https://127.0.0.1:1", "not a certificate",
                               "den", &s),
                HG_ERR_BAD_CA);
  EXPECT_STATUS(hg_session_new("http://127.0.0.1:1", NULL, "den", &s),
                HG_ERR_BAD_CONFIG);
  CHECK(strstr(hg_last_error_message(), "https://") != NULL,
        "the message does not say what to do");
  CHECK(s == NULL, "a failed hg_session_new wrote a handle");

  s = new_session();
  hg_state st = -1;
  EXPECT_STATUS(hg_session_state(s, &st), HG_OK);
  CHECK(st == HG_STATE_IDLE, "a new session is in state %d", st);
  EXPECT_STATUS(hg_session_wait_ready(s, 0), HG_ERR_BAD_STATE);
  char *addr = NULL;
  EXPECT_STATUS(hg_session_local_addr(s, &addr), HG_ERR_BAD_STATE);
  EXPECT_STATUS(hg_session_set_credential(s, HG_CREDENTIAL_DEVICE_CODE, NULL,
                                          NULL),
                HG_ERR_INVALID_ARGUMENT);
  CHECK(strstr(hg_last_error_message(), "user") != NULL,
        "the message does not name the missing device name");
  EXPECT_STATUS(hg_session_set_credential(s, HG_CREDENTIAL_DEVICE_CODE, "tv",
                                          ""),
                HG_ERR_INVALID_ARGUMENT);
  EXPECT_STATUS(hg_session_set_credential(s, 42, "u", "p"),
                HG_ERR_INVALID_ARGUMENT);
  EXPECT_STATUS(hg_session_set_listen(s, "not an address"),
                HG_ERR_INVALID_ARGUMENT);
  EXPECT_STATUS(hg_session_poll_event(s, 0, NULL), HG_ERR_INVALID_ARGUMENT);
  hg_event *ev = (hg_event *)1;
  EXPECT_STATUS(hg_session_poll_event(s, 0, &ev), HG_OK);
  CHECK(ev == NULL, "an event from a session never started");
  EXPECT_STATUS(hg_session_stop(s), HG_OK);
  hg_session_free(s);
  hg_session_free(NULL);
  hg_event_free(NULL);
  hg_string_free(NULL);
}

static int download_revoke(void) {
  argument_checks();
  hg_session *s = new_session();
  seen_t seen;
  seen_init(&seen, s);
  EXPECT_STATUS(hg_session_set_callback(s, on_event, &seen), HG_OK);
  EXPECT_STATUS(hg_session_start(s), HG_OK);
  EXPECT_STATUS(hg_session_start(s), HG_ERR_BAD_STATE);
  EXPECT_STATUS(hg_session_set_listen(s, "127.0.0.1:0"), HG_ERR_BAD_STATE);
  EXPECT_STATUS(hg_session_wait_ready(s, 60000), HG_OK);
  poll_until(s, HG_EVENT_READY, 5);

  char *addr = NULL;
  EXPECT_STATUS(hg_session_local_addr(s, &addr), HG_OK);
  printf("READY %s\n", addr);
  size_t len = 0;
  char hex[65];
  CHECK(http_get(addr, env("HG_PATH"), &len, hex) == 0,
        "the download through %s failed", addr);
  CHECK(strcmp(hex, env("HG_SHA256")) == 0, "sha256 %s, expected %s", hex,
        env("HG_SHA256"));
  printf("DOWNLOADED %zu bytes sha256 %s\n", len, hex);
  fflush(stdout);

  /* The test revokes the admission now, through the admin API. */
  hg_status code = poll_until(s, HG_EVENT_REVOKED, 60);
  CHECK(code == HG_ERR_REVOKED, "the revoked event has code %s",
        hg_status_name(code));
  hg_state st;
  EXPECT_STATUS(hg_session_state(s, &st), HG_OK);
  CHECK(st == HG_STATE_REVOKED, "state %d after the revocation", st);
  EXPECT_STATUS(hg_session_wait_ready(s, 1000), HG_ERR_REVOKED);
  CHECK(strstr(hg_last_error_message(), "revoked") != NULL,
        "the message does not say revoked: %s", hg_last_error_message());
  char *gone = NULL;
  EXPECT_STATUS(hg_session_local_addr(s, &gone), HG_ERR_BAD_STATE);
  int fd = dial(addr);
  CHECK(fd < 0, "the local address still accepts connections");
  hg_string_free(addr);

  EXPECT_STATUS(hg_session_stop(s), HG_OK); /* already ended: no-op */
  seen_check(&seen);
  CHECK(seen.reentry_refused, "hg_session_stop inside the callback was not refused");
  /* By code: the code shown once, and connecting again once approved. */
  CHECK(seen_count(&seen, HG_EVENT_WAITING_FOR_APPROVAL) == code_mode,
        "the callback saw %d codes", seen_count(&seen, HG_EVENT_WAITING_FOR_APPROVAL));
  CHECK(seen_count(&seen, HG_EVENT_CONNECTING) == 1 + code_mode &&
            seen_count(&seen, HG_EVENT_READY) == 1 &&
            seen_count(&seen, HG_EVENT_REVOKED) == 1,
        "the callback saw connecting %d, ready %d, revoked %d",
        seen_count(&seen, HG_EVENT_CONNECTING), seen_count(&seen, HG_EVENT_READY),
        seen_count(&seen, HG_EVENT_REVOKED));
  printf("REVOKED seen by poll and callback\n");
  hg_session_free(s);
  return 0;
}

static int serve(void) {
  hg_session *s = new_session();
  if (code_mode) EXPECT_STATUS(hg_session_set_callback(s, on_code, NULL), HG_OK);
  EXPECT_STATUS(hg_session_start(s), HG_OK);
  EXPECT_STATUS(hg_session_wait_ready(s, 60000), HG_OK);
  char *addr = NULL;
  EXPECT_STATUS(hg_session_local_addr(s, &addr), HG_OK);
  printf("READY %s\n", addr);
  fflush(stdout);
  hg_string_free(addr);
  char line[64];
  while (fgets(line, sizeof line, stdin) != NULL) {
  }
  hg_state st;
  EXPECT_STATUS(hg_session_state(s, &st), HG_OK);
  CHECK(st == HG_STATE_READY || st == HG_STATE_RENEWING,
        "the session was not up at the end (state %d)", st);
  EXPECT_STATUS(hg_session_stop(s), HG_OK);
  hg_session_free(s);
  printf("STOPPED\n");
  return 0;
}

/* One run on `s`: start, ready, one download, stop. */
static void one_run(hg_session *s, seen_t *seen) {
  int ready_before = seen_count(seen, HG_EVENT_READY);
  EXPECT_STATUS(hg_session_start(s), HG_OK);
  EXPECT_STATUS(hg_session_wait_ready(s, 120000), HG_OK);
  char *addr = NULL;
  EXPECT_STATUS(hg_session_local_addr(s, &addr), HG_OK);
  size_t len = 0;
  char hex[65];
  CHECK(http_get(addr, "/bytes/65536", &len, hex) == 0 && len == 65536,
        "a download through %s failed", addr);
  EXPECT_STATUS(hg_session_stop(s), HG_OK);
  hg_state st;
  EXPECT_STATUS(hg_session_state(s, &st), HG_OK);
  CHECK(st == HG_STATE_STOPPED, "state %d after stop", st);
  CHECK(dial(addr) < 0, "the local address accepts connections after stop");
  hg_string_free(addr);
  /* After stop returns, the run's events have all been delivered. */
  CHECK(seen_count(seen, HG_EVENT_READY) == ready_before + 1,
        "the callback missed a ready event");
  CHECK(seen_count(seen, HG_EVENT_STOPPED) >= 1, "the callback missed stopped");
  seen_check(seen);
}

static int cycles(int n) {
  argument_checks();
  for (int i = 0; i < n; i++) {
    hg_session *s = new_session();
    seen_t seen;
    seen_init(&seen, s);
    EXPECT_STATUS(hg_session_set_callback(s, on_event, &seen), HG_OK);
    one_run(s, &seen);
    one_run(s, &seen); /* the same handle, started again */
    hg_session_free(s);
    pthread_mutex_destroy(&seen.lock);
    printf("cycle %d done\n", i + 1);
    fflush(stdout);
  }
  /* A stop while signing in. */
  hg_session *s = new_session();
  EXPECT_STATUS(hg_session_start(s), HG_OK);
  EXPECT_STATUS(hg_session_stop(s), HG_OK);
  hg_state st;
  EXPECT_STATUS(hg_session_state(s, &st), HG_OK);
  CHECK(st == HG_STATE_STOPPED, "state %d after a stop while connecting", st);
  hg_session_free(s);
  /* A free of a running session stops it. */
  s = new_session();
  if (code_mode) EXPECT_STATUS(hg_session_set_callback(s, on_code, NULL), HG_OK);
  EXPECT_STATUS(hg_session_start(s), HG_OK);
  EXPECT_STATUS(hg_session_wait_ready(s, 120000), HG_OK);
  hg_session_free(s);
  printf("CYCLES %d ok\n", n);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) {
    fprintf(stderr, "usage: %s download-revoke|serve|cycles N\n", argv[0]);
    return 2;
  }
  printf("hushgate %s\n", hg_version());
  ca_pem = read_file(env("HG_CA_FILE"));
  const char *sign_in = getenv("HG_SIGN_IN");
  code_mode = sign_in != NULL && strcmp(sign_in, "code") == 0;
  int rc;
  if (strcmp(argv[1], "download-revoke") == 0)
    rc = download_revoke();
  else if (strcmp(argv[1], "serve") == 0)
    rc = serve();
  else if (strcmp(argv[1], "cycles") == 0 && argc > 2)
    rc = cycles(atoi(argv[2]));
  else {
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    rc = 2;
  }
  free(ca_pem);
  return rc;
}
