/*
 * The smallest complete hushgate embedding: sign in, wait until the
 * local address works, hand it to the player, follow the session's
 * events, stop when the user is done. docs/embedding.md walks through it.
 *
 * Build (from the repository root):
 *   cargo build --release -p hushgate-ffi
 *   cc ffi/examples/player.c -Iffi/include -Ltarget/release -lhushgate_ffi \
 *      -Wl,-rpath,"$PWD/target/release" -o player
 *
 * Run: settings come from the environment, so the password is never on a
 * command line:
 *   HUSHGATE_CONTROL=https://control.example:8443 HUSHGATE_CA=ca.pem \
 *   HUSHGATE_USER=alice HUSHGATE_PASSWORD=... HUSHGATE_SERVER=living-room \
 *   ./player
 * Without HUSHGATE_USER it signs in by code, as a TV would: it prints a
 * code and a link, someone approves the code from a phone, and the
 * device's credential is kept in HUSHGATE_DEVICE_FILE (default
 * ./hushgate-device) so the next start needs no code:
 *   HUSHGATE_CONTROL=... HUSHGATE_CA=ca.pem HUSHGATE_SERVER=living-room \
 *   ./player
 * It prints the URL to open in a player and runs until standard input
 * closes (Ctrl-D) or the session ends (revoked, failed).
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hushgate.h"

/* Called on the session's own thread, one event at a time. It only
 * reports; a real app would post the event to its UI thread. */
static void on_event(const hg_event *ev, void *user_data) {
  (void)user_data;
  fprintf(stderr, "hushgate: %s\n", ev->message);
  /* Sign-in by code: show the code and the link (a TV app would draw
   * them, and a QR code of verification_uri_complete, on screen). */
  if (ev->kind == HG_EVENT_WAITING_FOR_APPROVAL) {
    printf("sign in: open %s and enter %s\n", ev->verification_uri,
           ev->user_code);
    fflush(stdout);
  }
  if (ev->kind == HG_EVENT_READMITTED)
    fprintf(stderr, "hushgate: same address, new admission: keep playing\n");
}

static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  char *buf = calloc(1, 1 << 20);
  size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
  fclose(f);
  if (n == 0) { free(buf); return NULL; }
  return buf;
}

static const char *need(const char *name) {
  const char *v = getenv(name);
  if (v == NULL || *v == '\0') {
    fprintf(stderr, "set %s\n", name);
    exit(2);
  }
  return v;
}

/* Waits for standard input to close, on a thread of its own, so the main
 * thread can watch for the session's end at the same time. */
static atomic_int input_closed = 0;
static void *watch_stdin(void *arg) {
  (void)arg;
  char line[256];
  while (fgets(line, sizeof line, stdin) != NULL) {
  }
  input_closed = 1;
  return NULL;
}

int main(void) {
  /* The CA is passed as text: an app ships it as a string constant. */
  char *ca = NULL;
  const char *ca_file = getenv("HUSHGATE_CA");
  if (ca_file != NULL && (ca = read_file(ca_file)) == NULL) {
    fprintf(stderr, "cannot read %s\n", ca_file);
    return 2;
  }

  hg_session *s = NULL;
  if (hg_session_new(need("HUSHGATE_CONTROL"), ca, need("HUSHGATE_SERVER"),
                     &s) != HG_OK) {
    fprintf(stderr, "hushgate: %s\n", hg_last_error_message());
    free(ca);
    return 1;
  }
  free(ca); /* the library keeps its own copy */

  hg_status set;
  if (getenv("HUSHGATE_USER") != NULL) {
    set = hg_session_set_credential(s, HG_CREDENTIAL_PASSWORD,
                                    need("HUSHGATE_USER"),
                                    need("HUSHGATE_PASSWORD"));
  } else {
    const char *file = getenv("HUSHGATE_DEVICE_FILE");
    set = hg_session_set_credential(s, HG_CREDENTIAL_DEVICE_CODE,
                                    "hushgate example player",
                                    file != NULL ? file : "hushgate-device");
  }
  if (set != HG_OK || hg_session_set_callback(s, on_event, NULL) != HG_OK ||
      hg_session_start(s) != HG_OK) {
    fprintf(stderr, "hushgate: %s\n", hg_last_error_message());
    hg_session_free(s);
    return 1;
  }

  /* Up to ten minutes: the time a sign-in code lasts. */
  hg_status st = hg_session_wait_ready(s, 10 * 60 * 1000);
  if (st != HG_OK) {
    fprintf(stderr, "hushgate: %s (%s)\n", hg_last_error_message(),
            hg_status_name(st));
    hg_session_free(s);
    return 1;
  }
  char *addr = NULL;
  if (hg_session_local_addr(s, &addr) == HG_OK) {
    printf("play http://%s/\n", addr); /* give this URL to the player */
    fflush(stdout);
    hg_string_free(addr); /* ours to free */
  }

  pthread_t t;
  pthread_create(&t, NULL, watch_stdin, NULL);
  pthread_detach(t);
  int rc = 0;
  hg_state state = HG_STATE_READY;
  /* Poll the state while the user watches; events also come to
   * on_event. A GUI app would do this from its event loop instead. */
  while (!input_closed) {
    hg_event *ev = NULL;
    hg_session_poll_event(s, 200, &ev);
    hg_event_free(ev); /* the callback already reported it */
    hg_session_state(s, &state);
    if (state == HG_STATE_REVOKED || state == HG_STATE_FAILED) {
      rc = 1;
      break;
    }
  }
  hg_session_stop(s); /* closes the address and revokes the admission */
  hg_session_free(s);
  printf("%s\n", rc == 0 ? "stopped" : "ended");
  return rc;
}
