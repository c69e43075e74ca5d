//! Passwords, bearer secrets and the login rate limiter.
//!
//! Every secret the control plane hands out (login tokens, gateway
//! credentials, enrollment tokens, the admin token) is 32 random bytes,
//! shown once, and stored only as its SHA-256: a stolen database file does
//! not let anyone act as a user or a gateway.

use argon2::password_hash::{
    Output, ParamsString, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Kinds of secrets, as a visible prefix so a leaked one is recognisable
/// (and so a user token pasted where a gateway credential goes fails
/// clearly).
#[derive(Debug, Clone, Copy)]
pub enum SecretKind {
    UserToken,
    GatewayCredential,
    Enrollment,
    Admin,
    /// A device's long-lived credential (kept by the client).
    Device,
    /// An invitation link's secret.
    Invitation,
    /// The device's secret of a sign-in by code (polls with it).
    DeviceCode,
}

impl SecretKind {
    fn prefix(self) -> &'static str {
        match self {
            SecretKind::UserToken => "hgu_",
            SecretKind::GatewayCredential => "hgg_",
            SecretKind::Enrollment => "hge_",
            SecretKind::Admin => "hga_",
            SecretKind::Device => "hgd_",
            SecretKind::Invitation => "hgi_",
            SecretKind::DeviceCode => "hgc_",
        }
    }
}

/// A fresh secret and the hash to store for it.
pub fn new_secret(kind: SecretKind) -> (String, [u8; 32]) {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let text = format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(raw));
    let hash = hash_secret(&text);
    (text, hash)
}

pub fn hash_secret(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

pub fn random_id(prefix: &str) -> String {
    let mut raw = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

pub fn random_key() -> [u8; 32] {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    raw
}

/// Argon2id with the crate's defaults (19 MiB, 2 passes): OWASP's
/// recommended floor, ~20-40 ms here.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// Checks a password against a stored hash. Runs the full argon2 work
/// even for a malformed hash, so every failure costs the same time.
pub fn verify_password(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Password hashing and checking on a few threads of its own, each with
/// one argon2 memory (19 MiB) allocated once and reused.
///
/// Why not `spawn_blocking`: tokio's blocking threads come and go, and
/// each new thread that allocated 19 MiB got a glibc malloc arena of its
/// own that kept the freed memory (glibc raises its mmap threshold after
/// the first big free, so the next 19 MiB come from the arena and stay
/// there): the control plane's RSS grew by some 230 MiB over an hour of
/// logins in the soak (docs/testing.md). Here the memory is the
/// threads', reused for every hash: `size` x 19 MiB at most, for good.
pub struct PasswordPool {
    jobs: std::sync::mpsc::Sender<PasswordJob>,
    size: usize,
}

enum PasswordJob {
    Hash(String, tokio::sync::oneshot::Sender<Option<String>>),
    Verify(String, String, tokio::sync::oneshot::Sender<bool>),
}

impl std::fmt::Debug for PasswordPool {
    // Jobs carry passwords: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordPool")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl PasswordPool {
    /// `size` threads (at least one); each allocates its memory at its
    /// first job. They end when the pool is dropped.
    pub fn new(size: usize) -> PasswordPool {
        let size = size.max(1);
        let (tx, rx) = std::sync::mpsc::channel::<PasswordJob>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..size {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    loop {
                        // The lock is held only while waiting for a job.
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(job) = job else { return };
                        // A panic in one hash must not take the thread
                        // (and a slot of every later login) with it: the
                        // caller's answer is dropped (a failed hash) and
                        // the thread goes on with fresh memory.
                        let run =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
                                PasswordJob::Hash(password, answer) => {
                                    let _ = answer.send(hash_password_in(&password, &mut memory));
                                }
                                PasswordJob::Verify(password, stored, answer) => {
                                    let _ = answer.send(verify_password_in(
                                        &password,
                                        &stored,
                                        &mut memory,
                                    ));
                                }
                            }));
                        if run.is_err() {
                            tracing::error!("a password hash panicked; its request failed");
                            memory = Vec::new();
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        PasswordPool { jobs: tx, size }
    }

    /// How many hashes can run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// [`hash_password`] on the pool; `None` if its threads are gone.
    pub async fn hash(&self, password: String) -> Option<String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs.send(PasswordJob::Hash(password, tx)).ok()?;
        rx.await.ok().flatten()
    }

    /// [`verify_password`] on the pool; false if its threads are gone.
    pub async fn verify(&self, password: String, stored: String) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .jobs
            .send(PasswordJob::Verify(password, stored, tx))
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

/// Grows `memory` to what `params` need (it never shrinks) and hands out
/// the part they use.
fn argon2_memory<'m>(
    memory: &'m mut Vec<argon2::Block>,
    params: &Params,
) -> &'m mut [argon2::Block] {
    let n = params.block_count();
    if memory.len() < n {
        memory.resize(n, argon2::Block::default());
    }
    &mut memory[..n]
}

/// [`hash_password`] in the given memory: the same PHC string.
fn hash_password_in(password: &str, memory: &mut Vec<argon2::Block>) -> Option<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let params = Params::default();
    let mut salt_bytes = [0u8; 64];
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let raw_salt = salt.decode_b64(&mut salt_bytes).ok()?;
    Argon2::default()
        .hash_password_into_with_memory(
            password.as_bytes(),
            raw_salt,
            &mut out,
            argon2_memory(memory, &params),
        )
        .ok()?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).ok()?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).ok()?),
    };
    Some(phc.to_string())
}

/// [`verify_password`] in the given memory, for a hash made with any
/// argon2 variant, version and parameters.
fn verify_password_in(password: &str, stored: &str, memory: &mut Vec<argon2::Block>) -> bool {
    let Ok(h) = PasswordHash::new(stored) else {
        return false;
    };
    let checked = (|| -> Option<bool> {
        let algorithm = Algorithm::try_from(h.algorithm).ok()?;
        let version = h
            .version
            .map_or(Some(Version::default()), |v| Version::try_from(v).ok())?;
        let expected = h.hash?;
        // (The output length comes from the stored hash.)
        let params = Params::try_from(&h).ok()?;
        let mut salt_bytes = [0u8; 64];
        let salt = h.salt?.decode_b64(&mut salt_bytes).ok()?;
        let mut out = vec![0u8; expected.len()];
        Argon2::new(algorithm, version, params.clone())
            .hash_password_into_with_memory(
                password.as_bytes(),
                salt,
                &mut out,
                argon2_memory(memory, &params),
            )
            .ok()?;
        // `Output`'s equality is constant-time.
        Some(Output::new(&out).ok()? == expected)
    })();
    checked.unwrap_or(false)
}

/// The login limiter: it slows password guessing without letting a
/// guesser lock the real user out.
///
/// - Every attempt is charged to its **source** (an IPv4 address, or the
///   /64 of an IPv6 one, which one host usually holds whole), before the
///   password is checked: one host gets `per_minute` attempts a minute,
///   whatever names it tries, so it cannot make the control plane run
///   argon2 without end either.
/// - Only **failures** are charged to the user name, and a user whose
///   failure budget is spent is refused only from sources that themselves
///   failed for that name recently. The real user, from an address that
///   has not been guessing, still gets in with the right password;
///   a botnet gets one guess per address while the budget is spent.
///
/// Names are counted whether or not the user exists, so the limiter's
/// answers tell nothing about which accounts exist. Time comes in as an
/// argument (milliseconds on the wall clock, which replicas share). The
/// counts live in a [`LimiterBook`]: this process's memory (one control
/// plane on SQLite), or the database, where every replica sees them.
#[derive(Debug)]
pub struct LoginLimiter {
    /// Attempts (per source) and failures (per user) allowed in a burst.
    burst: f64,
    /// Attempts regained per second.
    refill_per_sec: f64,
    memory: Mutex<MemoryBook>,
}

/// How long a source that failed for a user stays suspect for that user:
/// refused while the user's failure budget is spent.
pub const SUSPECT_FOR: Duration = Duration::from_secs(15 * 60);

/// Entries kept in memory before the maps are swept of what no longer
/// matters.
const SWEEP_ABOVE: usize = 100_000;

/// Where a [`LoginLimiter`] keeps its counts: token buckets by kind
/// ("source" or "user") and key, and when each source last failed for
/// each user name. Times are milliseconds.
pub trait LimiterBook {
    /// Keeps other replicas off this user's and this source's counts
    /// until the check is over (nothing to do in memory).
    fn lock(&mut self, user: &str, source: &str) -> crate::store::Result<()>;
    /// (tokens, when) of a bucket, if it was ever charged.
    fn bucket(&mut self, kind: &str, key: &str) -> crate::store::Result<Option<(f64, i64)>>;
    fn set_bucket(
        &mut self,
        kind: &str,
        key: &str,
        tokens: f64,
        at: i64,
    ) -> crate::store::Result<()>;
    fn suspect_since(&mut self, user: &str, source: &str) -> crate::store::Result<Option<i64>>;
    /// Marks (`Some(when)`) or clears (`None`) a source as suspect for a user.
    fn set_suspect(
        &mut self,
        user: &str,
        source: &str,
        at: Option<i64>,
    ) -> crate::store::Result<()>;
}

/// The counts of one control plane that owns its database alone.
#[derive(Debug, Default)]
pub struct MemoryBook {
    buckets: HashMap<(String, String), (f64, i64)>,
    /// (user name, source) -> when that source last failed for that name.
    suspects: HashMap<(String, String), i64>,
}

impl LimiterBook for MemoryBook {
    fn lock(&mut self, _: &str, _: &str) -> crate::store::Result<()> {
        Ok(())
    }
    fn bucket(&mut self, kind: &str, key: &str) -> crate::store::Result<Option<(f64, i64)>> {
        Ok(self.buckets.get(&(kind.into(), key.into())).copied())
    }
    fn set_bucket(
        &mut self,
        kind: &str,
        key: &str,
        tokens: f64,
        at: i64,
    ) -> crate::store::Result<()> {
        self.buckets.insert((kind.into(), key.into()), (tokens, at));
        Ok(())
    }
    fn suspect_since(&mut self, user: &str, source: &str) -> crate::store::Result<Option<i64>> {
        Ok(self.suspects.get(&(user.into(), source.into())).copied())
    }
    fn set_suspect(
        &mut self,
        user: &str,
        source: &str,
        at: Option<i64>,
    ) -> crate::store::Result<()> {
        let k = (user.to_string(), source.to_string());
        match at {
            Some(at) => self.suspects.insert(k, at),
            None => self.suspects.remove(&k),
        };
        Ok(())
    }
}

const SOURCE: &str = "source";
const USER: &str = "user";

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl LoginLimiter {
    /// `per_minute` attempts per source and failures per user a minute,
    /// with bursts of the same size.
    pub fn new(per_minute: u32) -> Self {
        LoginLimiter {
            burst: f64::from(per_minute.max(1)),
            refill_per_sec: f64::from(per_minute.max(1)) / 60.0,
            memory: Mutex::new(MemoryBook::default()),
        }
    }

    /// How long an untouched bucket takes to be full again: older rows
    /// limit nothing and may be forgotten.
    pub fn full_after(&self) -> Duration {
        Duration::from_secs_f64(self.burst / self.refill_per_sec)
    }

    fn level(&self, b: Option<(f64, i64)>, now: i64) -> f64 {
        match b {
            None => self.burst,
            Some((tokens, at)) => (tokens
                + (now.saturating_sub(at)).max(0) as f64 / 1000.0 * self.refill_per_sec)
                .min(self.burst),
        }
    }

    fn wait_for_one(&self, level: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - level) / self.refill_per_sec).max(1.0))
    }

    /// Takes one attempt for this source and user name before the
    /// password is checked, or says how long to wait. Nothing is charged
    /// when the attempt is refused.
    pub fn check_in(
        &self,
        book: &mut dyn LimiterBook,
        source: IpAddr,
        username: &str,
        now: i64,
    ) -> crate::store::Result<Result<(), Duration>> {
        let source = source_key(source).to_string();
        let user = username.to_lowercase();
        book.lock(&user, &source)?;
        let user_level = self.level(book.bucket(USER, &user)?, now);
        if user_level < 1.0 {
            let suspect = book
                .suspect_since(&user, &source)?
                .is_some_and(|at| now.saturating_sub(at) < ms(SUSPECT_FOR));
            if suspect {
                return Ok(Err(self.wait_for_one(user_level)));
            }
        }
        let source_level = self.level(book.bucket(SOURCE, &source)?, now);
        if source_level < 1.0 {
            return Ok(Err(self.wait_for_one(source_level)));
        }
        book.set_bucket(SOURCE, &source, source_level - 1.0, now)?;
        Ok(Ok(()))
    }

    /// Records a failed attempt (wrong password or unknown name).
    pub fn failed_in(
        &self,
        book: &mut dyn LimiterBook,
        source: IpAddr,
        username: &str,
        now: i64,
    ) -> crate::store::Result<()> {
        let source = source_key(source).to_string();
        let user = username.to_lowercase();
        book.lock(&user, &source)?;
        let level = self.level(book.bucket(USER, &user)?, now);
        book.set_bucket(USER, &user, (level - 1.0).max(0.0), now)?;
        book.set_suspect(&user, &source, Some(now))
    }

    /// Records a successful login: the source is no longer suspect for
    /// this user.
    pub fn succeeded_in(
        &self,
        book: &mut dyn LimiterBook,
        source: IpAddr,
        username: &str,
    ) -> crate::store::Result<()> {
        book.set_suspect(
            &username.to_lowercase(),
            &source_key(source).to_string(),
            None,
        )
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, MemoryBook> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`LoginLimiter::check_in`] with this process's own counts.
    pub fn check(&self, source: IpAddr, username: &str, now: i64) -> Result<(), Duration> {
        let mut book = self.memory();
        self.sweep(&mut book, now);
        self.check_in(&mut *book, source, username, now)
            .unwrap_or(Ok(()))
    }

    /// [`LoginLimiter::failed_in`] with this process's own counts.
    pub fn failed(&self, source: IpAddr, username: &str, now: i64) {
        let _ = self.failed_in(&mut *self.memory(), source, username, now);
    }

    /// [`LoginLimiter::succeeded_in`] with this process's own counts.
    pub fn succeeded(&self, source: IpAddr, username: &str) {
        let _ = self.succeeded_in(&mut *self.memory(), source, username);
    }

    /// Forgets full buckets and old suspects once the maps grow large, so
    /// a spray of sources or names cannot grow them without bound.
    fn sweep(&self, book: &mut MemoryBook, now: i64) {
        if book.buckets.len() > SWEEP_ABOVE {
            book.buckets
                .retain(|_, b| self.level(Some(*b), now) < self.burst);
        }
        if book.suspects.len() > SWEEP_ABOVE {
            book.suspects
                .retain(|_, at| now.saturating_sub(*at) < ms(SUSPECT_FOR));
        }
    }
}

/// The unit a source is counted in: an IPv4 address, or an IPv6 /64 (one
/// host usually holds a whole /64). IPv4-mapped IPv6 counts as IPv4.
pub fn source_key(source: IpAddr) -> IpAddr {
    match source.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool's hashes are the crate's PHC strings: each side verifies
    /// the other's, wrong passwords fail, and a hash with other argon2
    /// parameters (an older or stronger setting) is checked too.
    #[tokio::test]
    async fn the_password_pool_hashes_and_verifies_like_the_crate() {
        let pool = PasswordPool::new(2);
        let mine = pool.hash("correct horse".into()).await.expect("hashed");
        assert!(
            mine.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{mine}"
        );
        assert!(verify_password("correct horse", &mine));
        assert!(!verify_password("correct horsf", &mine));
        let theirs = hash_password("battery staple");
        assert!(pool.verify("battery staple".into(), theirs.clone()).await);
        assert!(!pool.verify("battery stapl".into(), theirs).await);
        assert!(pool.verify("correct horse".into(), mine.clone()).await);
        assert!(!pool.verify(String::new(), mine).await);
        // Other parameters: the memory grows to fit (and stays).
        let strong = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(32 * 1024, 3, 1, Some(16)).unwrap(),
        )
        .hash_password(b"pw", &SaltString::generate(&mut rand::rngs::OsRng))
        .unwrap()
        .to_string();
        let weak = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::generate(&mut rand::rngs::OsRng))
        .unwrap()
        .to_string();
        for h in [strong, weak] {
            assert!(pool.verify("pw".into(), h.clone()).await, "{h}");
            assert!(!pool.verify("pv".into(), h.clone()).await, "{h}");
        }
        assert!(!pool.verify("pw".into(), "not a hash".into()).await);
        assert!(
            !pool
                .verify(
                    "pw".into(),
                    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ".into()
                )
                .await
        );
    }

    /// One thread's memory serves every hash it runs: 19 MiB allocated
    /// once, not once a hash.
    #[test]
    fn a_pool_thread_reuses_its_memory() {
        let mut memory = Vec::new();
        let h = hash_password_in("a", &mut memory).unwrap();
        let first = memory.as_ptr();
        assert_eq!(memory.len(), Params::DEFAULT_M_COST as usize);
        for _ in 0..3 {
            assert!(verify_password_in("a", &h, &mut memory));
            hash_password_in("b", &mut memory).unwrap();
        }
        assert_eq!(memory.as_ptr(), first);
        assert_eq!(memory.len(), Params::DEFAULT_M_COST as usize);
    }

    #[test]
    fn passwords_verify() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn limiter_charges_sources_for_attempts() {
        let l = LoginLimiter::new(3);
        let t = T0;
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(a, "alice", t).is_ok());
        }
        // Same source, any user: the source's attempts are spent.
        assert!(l.check(a, "bob", t).is_err());
        // Another source is not affected.
        assert!(l.check(b, "bob", t).is_ok());
        // A minute later the source has its attempts back.
        assert!(l.check(a, "alice", t + 60_000).is_ok());
    }

    #[test]
    fn ipv6_sources_count_by_64() {
        let l = LoginLimiter::new(2);
        let t = T0;
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.check(a, "x", t).is_ok());
        assert!(l.check(b, "y", t).is_ok());
        assert!(l.check(a, "z", t).is_err(), "same /64");
        assert!(l.check(c, "z", t).is_ok(), "another /64");
    }

    /// Any moment, in milliseconds.
    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn a_spent_user_budget_stops_only_the_sources_that_failed() {
        let l = LoginLimiter::new(3);
        let t = T0;
        let guesser: IpAddr = "198.51.100.7".parse().unwrap();
        let others: Vec<IpAddr> = (1..=3)
            .map(|i| format!("203.0.113.{i}").parse().unwrap())
            .collect();
        // Three failures for alice from three addresses spend her budget.
        for s in &others {
            assert!(l.check(*s, "alice", t).is_ok());
            l.failed(*s, "Alice", t);
        }
        // Those addresses are refused for alice now (not for others)...
        assert!(l.check(others[0], "alice", t).is_err());
        assert!(l.check(others[0], "bob", t).is_ok());
        // ...while an address that never failed for her may still try.
        let home: IpAddr = "192.0.2.50".parse().unwrap();
        assert!(l.check(home, "alice", t).is_ok());
        l.succeeded(home, "alice");
        assert!(l.check(home, "alice", t).is_ok());
        // A fresh guesser gets one try, then is refused while the budget
        // is spent.
        assert!(l.check(guesser, "alice", t).is_ok());
        l.failed(guesser, "alice", t);
        assert!(l.check(guesser, "alice", t).is_err());
        // Once a failure's worth has come back (20 s at 3 a minute), a
        // suspect address gets its next try.
        assert!(l.check(guesser, "alice", t + 21_000).is_ok());
    }

    #[test]
    fn secrets_are_distinct_and_prefixed() {
        let (a, ha) = new_secret(SecretKind::UserToken);
        let (b, _) = new_secret(SecretKind::UserToken);
        assert!(a.starts_with("hgu_"));
        assert_ne!(a, b);
        assert_eq!(hash_secret(&a), ha);
    }
}
