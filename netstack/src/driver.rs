//! The event loop every data path runs on: one thread, one `mio::Poll`,
//! commands from other threads through a channel plus a `mio::Waker`, and
//! one batch of work per wake-up.
//!
//! A data path implements [`Handler`]: when it must wake without new I/O
//! ([`Handler::wake`]), what a readiness event of its own tokens means
//! ([`Handler::ready`]), what a command does ([`Handler::command`]) and
//! the batch itself ([`Handler::batch`]: receive, run the stack, splice,
//! encrypt, flush). [`Driver::run`] is the loop:
//!
//! ```text
//! loop {
//!     poll until an event or handler.wake(now)
//!     for each event: the waker's -> commands waiting; others -> handler.ready(ev)
//!     if commands waiting: handler.command(c) for each (Flow::Stop ends the loop)
//!     handler.batch(now)
//! }
//! ```
//!
//! The handler is a type parameter, not a trait object, so the calls in the
//! loop are direct and inlined. Nothing here allocates, locks or makes a
//! system call beyond the one `epoll_wait` per wake-up; a command costs a
//! channel send and an `eventfd` write on the sending side.
//!
//! The loop stops when a command says so or when every [`Sender`] is gone
//! (dropping the last one wakes the loop).

use std::io;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::{Events, Poll, Registry, Token, Waker};

/// The token of the driver's waker. Handlers register their sources under
/// other tokens.
pub const WAKER: Token = Token(0);

/// Readiness events taken per wake-up.
const EVENTS: usize = 1024;

/// Whether the loop goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// The work of one data path, run by a [`Driver`].
pub trait Handler {
    /// What other threads send to the data path.
    type Command;

    /// When the loop must wake next without new I/O. Called before every
    /// sleep.
    fn wake(&mut self, now: Instant) -> Wake;

    /// A readiness event for one of the handler's own tokens (never the
    /// driver's [`WAKER`]).
    fn ready(&mut self, event: &Event);

    /// One command, in the order sent, before this wake-up's batch.
    fn command(&mut self, command: Self::Command, now: Instant) -> io::Result<Flow>;

    /// The work of one wake-up, after its events and commands.
    fn batch(&mut self, now: Instant) -> io::Result<()>;
}

/// When the loop must wake without new I/O: the earliest of the deadlines
/// and delays folded in, or never (sleep until an event).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wake(Option<Duration>);

impl Wake {
    /// Sleep until an event.
    pub const IDLE: Wake = Wake(None);
    /// Do not sleep: work is left over.
    pub const NOW: Wake = Wake(Some(Duration::ZERO));

    /// Also wake after `delay`, if there is one.
    #[inline]
    pub fn after(self, delay: Option<Duration>) -> Wake {
        match (self.0, delay) {
            (Some(a), Some(b)) => Wake(Some(a.min(b))),
            (a, b) => Wake(a.or(b)),
        }
    }

    /// Also wake at `deadline`, if there is one.
    #[inline]
    pub fn at(self, now: Instant, deadline: Option<Instant>) -> Wake {
        self.after(deadline.map(|d| d.saturating_duration_since(now)))
    }

    /// Do not sleep if `work_left`.
    #[inline]
    pub fn now_if(self, work_left: bool) -> Wake {
        if work_left {
            Wake::NOW
        } else {
            self
        }
    }

    /// The timeout to poll with (`None`: no timeout).
    pub fn timeout(self) -> Option<Duration> {
        self.0
    }
}

/// The loop: the `Poll`, its events, and the receiving end of the
/// commands.
pub struct Driver<C> {
    poll: Poll,
    events: Events,
    commands: mpsc::Receiver<C>,
    /// Held here too: closing the waker's `eventfd` (when the last sender
    /// goes) would take its pending wake-up out of the poll with it.
    _waker: Arc<Waker>,
}

impl<C> std::fmt::Debug for Driver<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl<C> Driver<C> {
    /// A driver and the first sender of its commands.
    pub fn new() -> io::Result<(Driver<C>, Sender<C>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        Ok((
            Driver {
                poll,
                events: Events::with_capacity(EVENTS),
                commands: rx,
                _waker: waker.clone(),
            },
            Sender(Arc::new(SenderInner { tx, waker })),
        ))
    }

    /// Where handlers register their sources (any token but [`WAKER`]).
    /// A handler that needs it in every batch keeps a clone
    /// (`Registry::try_clone`).
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Runs `handler` until a command returns [`Flow::Stop`], every sender
    /// is gone, or an I/O error (which is returned).
    pub fn run<H: Handler<Command = C>>(&mut self, handler: &mut H) -> io::Result<()> {
        loop {
            let timeout = handler.wake(Instant::now()).timeout();
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let mut now = Instant::now();
            let mut commands = false;
            for ev in self.events.iter() {
                if ev.token() == WAKER {
                    commands = true;
                } else {
                    handler.ready(ev);
                }
            }
            if commands {
                loop {
                    match self.commands.try_recv() {
                        Ok(c) => {
                            if handler.command(c, now)? == Flow::Stop {
                                return Ok(());
                            }
                        }
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
                    }
                }
                // Commands may take a while (a new tunnel, a whole feed).
                now = Instant::now();
            }
            handler.batch(now)?;
        }
    }
}

/// Sends commands to a [`Driver`] from any thread and wakes its loop.
/// Cloneable; when the last clone is dropped the loop wakes and stops.
pub struct Sender<C>(Arc<SenderInner<C>>);

impl<C> std::fmt::Debug for Sender<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<C> Clone for Sender<C> {
    fn clone(&self) -> Self {
        Sender(self.0.clone())
    }
}

struct SenderInner<C> {
    tx: mpsc::Sender<C>,
    waker: Arc<Waker>,
}

impl<C> Sender<C> {
    /// Queues `command` and wakes the loop. False if the loop is gone.
    pub fn send(&self, command: C) -> bool {
        self.0.tx.send(command).is_ok() && self.0.waker.wake().is_ok()
    }
}

impl<C> Drop for SenderInner<C> {
    fn drop(&mut self) {
        // Disconnect first, then wake: the loop then sees the channel
        // closed and stops.
        drop(std::mem::replace(&mut self.tx, mpsc::channel().0));
        let _ = self.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc as std_mpsc;

    #[test]
    fn wake_is_the_earliest_of_what_was_folded_in() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(Wake::IDLE.timeout(), None);
        assert_eq!(Wake::IDLE.after(None).at(now, None).timeout(), None);
        assert_eq!(Wake::IDLE.after(Some(ms(5))).timeout(), Some(ms(5)));
        let w = Wake::IDLE
            .after(Some(ms(5)))
            .at(now, Some(now + ms(3)))
            .after(None);
        assert_eq!(w.timeout(), Some(ms(3)));
        // A deadline already past means now.
        let past = now.checked_sub(ms(1)).unwrap_or(now);
        assert_eq!(Wake::IDLE.at(now, Some(past)).timeout(), Some(ms(0)));
        assert_eq!(w.now_if(true), Wake::NOW);
        assert_eq!(w.now_if(false), w);
    }

    /// Records commands (stops on 0) and says when it is about to sleep.
    struct Recorder {
        got: std_mpsc::Sender<u32>,
        sleeping: std_mpsc::Sender<()>,
    }

    impl Handler for Recorder {
        type Command = u32;
        fn wake(&mut self, _now: Instant) -> Wake {
            let _ = self.sleeping.send(());
            Wake::IDLE
        }
        fn ready(&mut self, _event: &Event) {
            unreachable!("no sources registered");
        }
        fn command(&mut self, c: u32, _now: Instant) -> io::Result<Flow> {
            let _ = self.got.send(c);
            Ok(if c == 0 { Flow::Stop } else { Flow::Continue })
        }
        fn batch(&mut self, _now: Instant) -> io::Result<()> {
            Ok(())
        }
    }

    struct Running {
        tx: Sender<u32>,
        got: std_mpsc::Receiver<u32>,
        sleeping: std_mpsc::Receiver<()>,
        thread: std::thread::JoinHandle<()>,
    }

    fn spawn() -> Running {
        let (mut driver, tx) = Driver::new().unwrap();
        let (got_tx, got) = std_mpsc::channel();
        let (sleeping_tx, sleeping) = std_mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut h = Recorder {
                got: got_tx,
                sleeping: sleeping_tx,
            };
            driver.run(&mut h).unwrap();
        });
        Running {
            tx,
            got,
            sleeping,
            thread,
        }
    }

    #[test]
    fn commands_arrive_in_order_from_every_clone_and_stop_ends_the_loop() {
        let r = spawn();
        let other = r.tx.clone();
        assert!(r.tx.send(1));
        assert!(other.send(2));
        assert!(r.tx.send(0));
        r.thread.join().unwrap();
        assert_eq!(r.got.iter().collect::<Vec<_>>(), [1, 2, 0]);
        assert!(!other.send(3), "the loop is gone");
    }

    #[test]
    fn dropping_the_last_sender_stops_the_loop() {
        let r = spawn();
        let other = r.tx.clone();
        assert!(r.tx.send(7));
        drop(r.tx);
        assert_eq!(r.got.recv().unwrap(), 7);
        drop(other);
        r.thread.join().unwrap();
        // Also when nothing was ever sent and the loop is going to sleep
        // (the wake-up must outlive the waker's last sender).
        let r = spawn();
        r.sleeping.recv().unwrap();
        drop(r.tx);
        r.thread.join().unwrap();
    }
}
