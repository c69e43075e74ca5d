//! [`hg_session`]: what the C handle points to, and the threads behind it.
//!
//! Each session owns:
//!
//! - its **tokio runtime** (one worker thread, `hushgate-rt`), on which
//!   the shim's session runs: sign-in, access, renewal, re-admission.
//!   One runtime per session rather than one per library, so that
//!   everything a session started (tasks, timers, HTTPS connections,
//!   resolver threads) is shut down and joined when `hg_session_free`
//!   returns: nothing of it outlives the handle, the library holds no
//!   global state, and sessions do not share a thread that one of them
//!   could stall. A player holds one session, so the cost (a thread) is
//!   nothing;
//! - the shim's own **data-path thread** (inside `client_shim::Session`);
//! - an **events thread** (`hushgate-events`) that calls the app's
//!   callback, one event at a time, so a slow callback delays events but
//!   never the tunnel or a renewal.
//!
//! State lives in one mutex ([`Shared`]) with a condition variable that
//! every change signals: `hg_session_state` reads it, `hg_session_wait_ready`
//! and `hg_session_poll_event` wait on it, and the runtime's task is the
//! only writer of the session's progress (through [`Tracker`]).

use client_shim::{
    CodeNotice, CodeStep, Credentials, DeviceIdentity, Session, SessionEvent, ShimConfig, Trust,
};
use std::collections::VecDeque;
use std::ffi::{c_void, CString};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

use crate::abi::{hg_event, hg_state, hg_status};
use crate::error::{panic_error, CallbackScope, Error};
use crate::track::{Tracker, Update};

/// How many events `hg_session_poll_event` keeps for an app that does not
/// poll (one that only uses the callback): the oldest go first.
const POLL_QUEUE: usize = 256;

/// How long `hg_session_stop` waits for the run to end: closing revokes
/// the admission with a 5 s bound and stops the data path with a 2 s one,
/// so this is reached only if something is badly wrong.
const STOP_PATIENCE: Duration = Duration::from_secs(60);

/// The opaque session handle of the C ABI.
#[allow(non_camel_case_types)]
pub struct hg_session {
    /// The settings of the next start; its lock also keeps starts and
    /// stops of one session from interleaving.
    settings: Mutex<Settings>,
    shared: Arc<Shared>,
    /// `None` only while being dropped.
    runtime: Option<tokio::runtime::Runtime>,
    events_thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for hg_session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("hg_session")
            .field("state", &self.shared.lock().tracker.state())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Settings {
    control_url: String,
    trust: Trust,
    server: String,
    credentials: Option<SignIn>,
    service: Option<String>,
    listen: SocketAddr,
    /// Tells the current run to stop.
    stop: Option<watch::Sender<bool>>,
}

/// How the app's user signs in.
#[derive(Debug, Clone)]
pub(crate) enum SignIn {
    /// A password or a token, as the shim takes them.
    Shim(Credentials),
    /// By code: the device's name, and the file for its credential.
    Code {
        device_name: String,
        device_file: Option<std::path::PathBuf>,
    },
}

/// The app's callback. Raw pointers are not `Send`; the app promised, by
/// registering it, that both may be used from the events thread.
#[derive(Debug, Clone, Copy)]
struct Callback {
    f: unsafe extern "C" fn(*const hg_event, *mut c_void),
    user_data: *mut c_void,
}

// SAFETY: the callback and its user data are only ever used on the events
// thread, one call at a time; the header documents that the callback is
// called there, so registering it is the app's promise that this is fine.
unsafe impl Send for Callback {}

#[derive(Debug)]
struct Status {
    tracker: Tracker,
    /// Events for `hg_session_poll_event`.
    queue: VecDeque<Update>,
    /// Events dropped from a full `queue` since the last poll.
    missed: u64,
    /// Events for the callback, in order.
    to_deliver: VecDeque<Update>,
    /// The events thread is inside the callback.
    delivering: bool,
    callback: Option<Callback>,
    /// The handle is being freed: the events thread ends.
    closing: bool,
    /// Which run is current: a run that ended may still be winding down
    /// (its task reports `stopped` after a stop) while the app starts the
    /// next one; only the current run's reports count.
    run: u64,
}

/// What the caller's threads, the runtime's task and the events thread
/// share.
#[derive(Debug)]
pub(crate) struct Shared {
    status: Mutex<Status>,
    changed: Condvar,
}

impl Shared {
    /// An idle session's state, no run yet.
    fn new() -> Shared {
        Shared {
            status: Mutex::new(Status {
                tracker: Tracker::new(),
                queue: VecDeque::new(),
                missed: 0,
                to_deliver: VecDeque::new(),
                delivering: false,
                callback: None,
                closing: false,
                run: 0,
            }),
            changed: Condvar::new(),
        }
    }

    /// The lock, even after a panic elsewhere poisoned it: every change
    /// under it is a whole `Tracker` step, so the state stays coherent.
    fn lock(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the next change, up to `deadline` (`None`: without
    /// limit). `Err` gives the lock back when the deadline has passed.
    fn wait<'a>(
        &'a self,
        st: MutexGuard<'a, Status>,
        deadline: Option<Instant>,
    ) -> Result<MutexGuard<'a, Status>, MutexGuard<'a, Status>> {
        let Some(d) = deadline else {
            return Ok(self.changed.wait(st).unwrap_or_else(|p| p.into_inner()));
        };
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(st);
        }
        Ok(self
            .changed
            .wait_timeout(st, left)
            .unwrap_or_else(|p| p.into_inner())
            .0)
    }

    /// Starts run number `run` with `step` (the tracker's `starting`).
    fn begin(&self, run: u64, step: impl FnOnce(&mut Tracker) -> Option<Update>) {
        self.lock().run = run;
        self.apply(run, step);
    }

    /// Applies one step of run `run` to the tracker and publishes the
    /// event it makes; a step of an earlier run is dropped.
    fn apply(&self, run: u64, step: impl FnOnce(&mut Tracker) -> Option<Update>) {
        let mut st = self.lock();
        if st.run != run {
            return;
        }
        if let Some(u) = step(&mut st.tracker) {
            if st.queue.len() == POLL_QUEUE {
                st.queue.pop_front();
                st.missed += 1;
            }
            if st.callback.is_some() {
                st.to_deliver.push_back(u.clone());
            }
            st.queue.push_back(u);
            self.changed.notify_all();
        }
    }
}

/// An event with the strings it points to. `#[repr(C)]` with the event
/// first, so a pointer to this is a pointer to the event: what
/// `hg_session_poll_event` hands out and `hg_event_free` takes back.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct OwnedEvent {
    event: hg_event,
    message: CString,
    local_addr: Option<CString>,
    /// Sign-in by code: user code, link, complete link.
    code: Option<[CString; 3]>,
}

impl OwnedEvent {
    fn new(u: &Update, missed: u64) -> Box<OwnedEvent> {
        let message = c_string(&u.message);
        let local_addr = u.local_addr.map(|a| c_string(&a.to_string()));
        let code = u.prompt.as_ref().map(|p| {
            [
                c_string(&p.user_code),
                c_string(&p.verification_uri),
                c_string(&p.verification_uri_complete),
            ]
        });
        let code_ptr = |i: usize| {
            code.as_ref()
                .map_or(std::ptr::null(), |c: &[CString; 3]| c[i].as_ptr())
        };
        let event = hg_event {
            kind: u.kind,
            state: u.state,
            code: u.code,
            attempt: u.attempt,
            expires_at: u.expires_at.map_or(0, |t| t.unix_timestamp()),
            missed,
            message: message.as_ptr(),
            local_addr: local_addr.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            user_code: code_ptr(0),
            verification_uri: code_ptr(1),
            verification_uri_complete: code_ptr(2),
        };
        // The pointers are to the CStrings' heap buffers, which do not
        // move when the box is built.
        Box::new(OwnedEvent {
            event,
            message,
            local_addr,
            code,
        })
    }

    pub(crate) fn as_ptr(&self) -> *const hg_event {
        &self.event
    }
}

/// A C string of `s`, cut at an interior NUL (none of ours have one).
pub(crate) fn c_string(s: &str) -> CString {
    let end = s.find('\0').unwrap_or(s.len());
    CString::new(&s[..end]).unwrap_or_default()
}

impl hg_session {
    /// A new idle session.
    pub(crate) fn new(
        control_url: &str,
        ca_pem: Option<&[u8]>,
        server: &str,
    ) -> Result<hg_session, Error> {
        let trust = match ca_pem {
            Some(pem) => Trust::from_ca_pem(pem).map_err(|e| {
                Error::new(hg_status::HG_ERR_BAD_CA, format!("the CA given to hg_session_new {e}; pass the ca.pem the control plane printed at its first start, as text"))
            })?,
            None => Trust::PublicRoots,
        };
        // Builds the HTTPS client once now, so a bad URL or an unusable
        // certificate is reported here rather than at start.
        control_client::ControlClient::new(control_url, trust.clone())
            .map_err(|e| Error::new(hg_status::HG_ERR_BAD_CONFIG, e.to_string()))?;
        if server.is_empty() {
            return Err(Error::invalid("the server name is empty"));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hushgate-rt")
            .enable_all()
            .build()
            .map_err(|e| {
                Error::new(
                    hg_status::HG_ERR_OTHER,
                    format!("cannot start the session's runtime: {e}"),
                )
            })?;
        let shared = Arc::new(Shared::new());
        let s = shared.clone();
        let events_thread = std::thread::Builder::new()
            .name("hushgate-events".into())
            .spawn(move || deliver_events(&s))
            .map_err(|e| {
                Error::new(
                    hg_status::HG_ERR_OTHER,
                    format!("cannot start the events thread: {e}"),
                )
            })?;
        Ok(hg_session {
            settings: Mutex::new(Settings {
                control_url: control_url.to_string(),
                trust,
                server: server.to_string(),
                credentials: None,
                service: None,
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                stop: None,
            }),
            shared,
            runtime: Some(runtime),
            events_thread: Some(events_thread),
        })
    }

    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings, if the session is not running.
    fn settings_when_idle(&self, what: &str) -> Result<MutexGuard<'_, Settings>, Error> {
        let settings = self.settings();
        if self.shared.lock().tracker.is_running() {
            return Err(Error::bad_state(format!(
                "{what} cannot change while the session runs; call it before hg_session_start or after hg_session_stop"
            )));
        }
        Ok(settings)
    }

    pub(crate) fn set_credentials(&self, c: SignIn) -> Result<(), Error> {
        self.settings_when_idle("the credential")?.credentials = Some(c);
        Ok(())
    }

    pub(crate) fn set_service(&self, service: Option<String>) -> Result<(), Error> {
        self.settings_when_idle("the service")?.service = service;
        Ok(())
    }

    pub(crate) fn set_listen(&self, listen: SocketAddr) -> Result<(), Error> {
        self.settings_when_idle("the listen address")?.listen = listen;
        Ok(())
    }

    pub(crate) fn set_callback(
        &self,
        f: Option<unsafe extern "C" fn(*const hg_event, *mut c_void)>,
        user_data: *mut c_void,
    ) -> Result<(), Error> {
        let _settings = self.settings_when_idle("the callback")?;
        self.shared.lock().callback = f.map(|f| Callback { f, user_data });
        Ok(())
    }

    /// Starts a run: returns at once; events tell how it goes.
    pub(crate) fn start(&self) -> Result<(), Error> {
        let mut settings = self.settings();
        if self.shared.lock().tracker.is_running() {
            return Err(Error::bad_state(
                "the session is already running; stop it first",
            ));
        }
        let Some(sign_in) = settings.credentials.clone() else {
            return Err(Error::bad_state(
                "no credential: call hg_session_set_credential before hg_session_start",
            ));
        };
        let run_id = self.shared.lock().run + 1;
        let (credentials, device) = match sign_in {
            SignIn::Shim(c) => (c, None),
            SignIn::Code {
                device_name,
                device_file,
            } => {
                // The code and the approval become events of this run.
                let shared = self.shared.clone();
                let notice = CodeNotice(Arc::new(move |step: &CodeStep| match step {
                    CodeStep::Show(p) => {
                        let until = time::OffsetDateTime::now_utc() + p.expires_in;
                        shared.apply(run_id, |t| t.waiting_for_code(p, until));
                    }
                    CodeStep::Approved => shared.apply(run_id, Tracker::code_approved),
                }));
                let device = device_file.map(|file| DeviceIdentity {
                    file,
                    name: device_name.clone(),
                });
                (
                    Credentials::Code {
                        device_name,
                        notice,
                    },
                    device,
                )
            }
        };
        let config = ShimConfig {
            control_url: settings.control_url.clone(),
            trust: settings.trust.clone(),
            credentials,
            server: settings.server.clone(),
            service: settings.service.clone(),
            listen: settings.listen,
            device,
            on_waiting: None,
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let (url, server) = (settings.control_url.clone(), settings.server.clone());
        self.shared
            .begin(run_id, |t| Some(t.starting(&url, &server)));
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::bad_state("the session is being freed"))?;
        let task = runtime.spawn(run(
            Run {
                shared: self.shared.clone(),
                id: run_id,
            },
            config,
            stop_rx,
        ));
        // A panic in the run (a bug) must still end the run, or a stop
        // would wait for it in vain.
        let shared = self.shared.clone();
        runtime.spawn(async move {
            if let Err(e) = task.await {
                if e.is_panic() {
                    let err = panic_error("the session's task", e.into_panic());
                    shared.apply(run_id, |t| t.failed(err.code, err.message));
                }
            }
        });
        settings.stop = Some(stop_tx);
        Ok(())
    }

    /// Ends the current run (if any) and waits until it has ended and its
    /// last event went through the callback.
    pub(crate) fn stop(&self) -> Result<(), Error> {
        let mut settings = self.settings();
        let Some(stop) = settings.stop.take() else {
            return Ok(());
        };
        let _ = stop.send(true);
        let deadline = Some(Instant::now() + STOP_PATIENCE);
        let mut st = self.shared.lock();
        while !(st.tracker.is_final() && st.to_deliver.is_empty() && !st.delivering) {
            st = self.shared.wait(st, deadline).map_err(|_| {
                Error::new(
                    hg_status::HG_ERR_INTERNAL,
                    format!(
                        "the session did not stop within {} s (please report this)",
                        STOP_PATIENCE.as_secs()
                    ),
                )
            })?;
        }
        Ok(())
    }

    pub(crate) fn state(&self) -> hg_state {
        self.shared.lock().tracker.state()
    }

    pub(crate) fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.shared.lock().tracker.local_addr().ok_or_else(|| {
            Error::bad_state("the session has no local address now (not ready yet, or ended)")
        })
    }

    /// Waits until the local address works, the run ends, or `timeout`.
    pub(crate) fn wait_ready(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.lock();
        loop {
            let t = &st.tracker;
            if t.is_up() {
                return Ok(());
            }
            match t.state() {
                hg_state::HG_STATE_IDLE => {
                    return Err(Error::bad_state("the session was not started"))
                }
                hg_state::HG_STATE_STOPPED => {
                    return Err(Error::bad_state("the session was stopped"))
                }
                _ => {}
            }
            if let Some((code, message)) = t.end() {
                return Err(Error::new(*code, message.clone()));
            }
            st = self.shared.wait(st, deadline).map_err(|st| {
                Error::new(
                    hg_status::HG_ERR_TIMEOUT,
                    format!(
                        "the session is not ready yet (state {:?})",
                        st.tracker.state()
                    ),
                )
            })?;
        }
    }

    /// The next event, waiting up to `timeout` (`None`: forever).
    pub(crate) fn poll_event(&self, timeout: Option<Duration>) -> Option<Box<OwnedEvent>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.lock();
        loop {
            if let Some(u) = st.queue.pop_front() {
                let missed = std::mem::take(&mut st.missed);
                return Some(OwnedEvent::new(&u, missed));
            }
            st = self.shared.wait(st, deadline).ok()?;
        }
    }
}

impl Drop for hg_session {
    /// Stops the run, ends the events thread and shuts the runtime down,
    /// joining its threads: nothing of the session runs after this.
    fn drop(&mut self) {
        let _ = self.stop();
        {
            let mut st = self.shared.lock();
            st.closing = true;
            self.shared.changed.notify_all();
        }
        if let Some(t) = self.events_thread.take() {
            let _ = t.join();
        }
        if let Some(rt) = self.runtime.take() {
            // Inside another runtime (a Rust host calling the C ABI from
            // async code) blocking is not allowed: let it wind down alone.
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(10));
            }
        }
    }
}

/// The events thread: calls the callback for each event, in order.
fn deliver_events(shared: &Shared) {
    loop {
        let (update, callback) = {
            let mut st = shared.lock();
            loop {
                if let Some(u) = st.to_deliver.pop_front() {
                    st.delivering = true;
                    break (u, st.callback);
                }
                if st.closing {
                    return;
                }
                st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        if let Some(cb) = callback {
            let event = OwnedEvent::new(&update, 0);
            let _scope = CallbackScope::enter();
            // SAFETY: `cb.f` is the function the app registered for this
            // session with the documented signature; `event` lives until
            // after the call, and the app's `user_data` is passed back
            // unchanged, on the thread the header names.
            unsafe { (cb.f)(event.as_ptr(), cb.user_data) };
        }
        let mut st = shared.lock();
        st.delivering = false;
        shared.changed.notify_all();
    }
}

/// One run of the session, on the runtime: connect, then follow the
/// shim's events until the end or a stop.
/// One run's handle on the shared state: its reports count only while it
/// is the current run.
struct Run {
    shared: Arc<Shared>,
    id: u64,
}

impl Run {
    fn apply(&self, step: impl FnOnce(&mut Tracker) -> Option<Update>) {
        self.shared.apply(self.id, step);
    }
}

async fn run(shared: Run, config: ShimConfig, mut stop: watch::Receiver<bool>) {
    // A stop while connecting abandons the attempt (the shim revokes an
    // admission it could not bring up; one granted in the last instant
    // expires at the gateway with its lifetime, its key already gone).
    let connected = tokio::select! {
        biased;
        r = stop.wait_for(|s| *s) => {
            drop(r);
            None
        }
        r = Session::connect(config) => Some(r),
    };
    let session = match connected {
        None => return shared.apply(Tracker::stopped),
        Some(Err(e)) => {
            let code = crate::error::code_of(e.kind());
            return shared.apply(|t| t.failed(code, e.to_string()));
        }
        Some(Ok(s)) => s,
    };
    let mut events = session.events();
    let (info, local) = (session.info(), session.local_addr());
    shared.apply(|t| t.ready(&info, local));
    loop {
        let stopped = tokio::select! {
            biased;
            r = stop.wait_for(|s| *s) => {
                drop(r);
                true
            }
            ev = events.recv() => match ev {
                Ok(ev) => {
                    let end = matches!(ev, SessionEvent::Ended { .. });
                    shared.apply(|t| t.on_event(&ev));
                    if end {
                        break;
                    }
                    false
                }
                Err(broadcast::error::RecvError::Lagged(_)) => false,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            // The end is also kept in a watch: an `Ended` sent before we
            // subscribed (or lost to lag) is not missed.
            reason = session.ended() => {
                while let Ok(ev) = events.try_recv() {
                    shared.apply(|t| t.on_event(&ev));
                }
                shared.apply(|t| t.on_event(&SessionEvent::Ended { reason }));
                break;
            }
        };
        if stopped {
            session.close().await;
            return shared.apply(Tracker::stopped);
        }
    }
    // The run ended by itself (revoked, failed): the shim has closed the
    // local port already; dropping the session joins its data path.
    drop(session);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::hg_event_kind;

    /// A run that ended (revoked) and was then stopped keeps winding
    /// down on the runtime; if the app starts the next run meanwhile, the
    /// old run's late "stopped" must not end the new one.
    #[test]
    fn a_late_report_of_an_earlier_run_is_dropped() {
        let shared = Shared::new();
        shared.begin(1, |t| Some(t.starting("https://cp", "den")));
        shared.apply(1, |t| t.failed(hg_status::HG_ERR_REVOKED, "revoked".into()));
        shared.begin(2, |t| Some(t.starting("https://cp", "den")));
        shared.apply(1, Tracker::stopped);
        let st = shared.lock();
        assert_eq!(st.tracker.state(), hg_state::HG_STATE_CONNECTING);
        let kinds: Vec<_> = st.queue.iter().map(|u| u.kind).collect();
        assert_eq!(
            kinds,
            [
                hg_event_kind::HG_EVENT_CONNECTING,
                hg_event_kind::HG_EVENT_REVOKED,
                hg_event_kind::HG_EVENT_CONNECTING
            ]
        );
    }

    #[test]
    fn an_owned_event_points_at_its_own_strings() {
        let u = Update {
            kind: hg_event_kind::HG_EVENT_READY,
            state: hg_state::HG_STATE_READY,
            code: hg_status::HG_OK,
            attempt: 0,
            expires_at: Some(time::OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()),
            message: "ready".into(),
            local_addr: Some("127.0.0.1:9".parse().unwrap()),
            prompt: None,
        };
        let e = OwnedEvent::new(&u, 3);
        let p = e.as_ptr();
        // SAFETY: `p` points into `e`, alive for this block; its strings
        // are owned by `e`.
        unsafe {
            assert_eq!((*p).expires_at, 1_900_000_000);
            assert_eq!((*p).missed, 3);
            assert_eq!(
                std::ffi::CStr::from_ptr((*p).message).to_str().unwrap(),
                "ready"
            );
            assert_eq!(
                std::ffi::CStr::from_ptr((*p).local_addr).to_str().unwrap(),
                "127.0.0.1:9"
            );
            assert!((*p).user_code.is_null() && (*p).verification_uri.is_null());
        }
        assert_eq!(c_string("a\0b").as_bytes(), b"a");
    }
}
