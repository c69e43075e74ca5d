//! A real control plane on loopback for tests and benchmarks: HTTPS with
//! its own CA, its state in a temporary folder and its database on
//! either engine (a SQLite file there, or a fresh database on a real
//! PostgreSQL server, see `pg`), and a gateway that follows the real feed
//! and acknowledges what it applied.
#![allow(dead_code)]

pub mod pg;

// The accounts, grants and enrollment reports every crate's tests make
// (each test binary uses some of them).
#[allow(unused_imports)]
pub use testkit::world::{add_user, add_user_with_grant, client, key, report, seed};

use control_client::ControlClient;
pub use hushgate_control as control;
use hushgate_control::{Config, ControlPlane, Settings};
use proto::feed::*;
use proto::WgKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The database engine a test runs its control plane on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// A fresh place for one test's control plane(s): a state folder and,
    /// on PostgreSQL, a new database.
    pub fn store(self) -> Store {
        Store {
            engine: self,
            dir: tempfile::tempdir().unwrap(),
            database: match self {
                Engine::Sqlite => None,
                Engine::Postgres => Some(pg::fresh_database()),
            },
        }
    }
}

/// Where a test's control plane keeps its state. Replicas of one test
/// share it (the folder holds the identity they share, see
/// `control::bundle`).
pub struct Store {
    pub engine: Engine,
    pub dir: tempfile::TempDir,
    pub database: Option<control::store::DatabaseUrl>,
}

impl Store {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Runs each named `async fn NAME(engine: Engine)` as two tests,
/// `sqlite::NAME` and `postgres::NAME`: the same test code on both
/// engines.
#[macro_export]
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Engine::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Engine::Postgres).await
                }
            )*
        }
    };
}

pub struct Running {
    pub addr: SocketAddr,
    pub url: String,
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub admin: ControlClient,
    /// The running control plane's state, for what only the process sees
    /// (e.g. how many password verifications it ran).
    pub state: Arc<control::app::AppState>,
    serving: Option<control::Serving>,
}

impl Running {
    /// Starts a control plane on `bind` (e.g. "127.0.0.1:0") with its
    /// state in `store`.
    pub async fn start(store: &Store, bind: &str, settings: Settings) -> Running {
        Self::start_in(store.path(), store.database.clone(), bind, settings).await
    }

    /// Starts a control plane on `bind` with its state folder `dir` and
    /// `database` (None: SQLite in `dir`).
    pub async fn start_in(
        dir: &Path,
        database: Option<control::store::DatabaseUrl>,
        bind: &str,
        settings: Settings,
    ) -> Running {
        let cp = ControlPlane::open(Config {
            state_dir: dir.to_path_buf(),
            database,
            tls_cert: None,
            sans: vec![],
            settings,
        })
        .expect("control plane opens");
        let state = cp.app_state();
        let serving = cp
            .spawn(std::net::TcpListener::bind(bind).expect("bind"))
            .expect("control plane serves");
        let ca = serving.ca_file.clone().unwrap();
        let admin = client(&serving.url, &ca).with_bearer(&serving.admin_token().unwrap());
        Running {
            addr: serving.addr,
            url: serving.url.clone(),
            dir: dir.to_path_buf(),
            ca,
            admin,
            state,
            serving: Some(serving),
        }
    }

    pub fn client(&self) -> ControlClient {
        client(&self.url, &self.ca)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.serving.take() {
            let _ = s.stop().await;
        }
    }

    /// Ends this control plane at once, as `kill -9` would: requests in
    /// flight are cut off, nothing is shut down cleanly.
    pub fn kill(mut self) {
        if let Some(s) = self.serving.take() {
            s.kill();
        }
    }
}

/// How long a test waits for something that should happen at once before
/// it calls it a failure. Generous: tests share two cores with builds and
/// other tests, and a wait that ends early costs nothing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The bound for "reaches the gateway within a second" claims in these
/// tests: an order of magnitude above the promise, so load on the machine
/// running them cannot fail them, yet far below what a missed push would
/// take (a feed long-poll lasts 60 s). The netns harness checks the
/// one-second promise itself, with real processes.
pub const PUSH_BOUND: Duration = Duration::from_secs(10);

pub fn fast_settings() -> Settings {
    Settings {
        ack_timeout: Duration::from_millis(1500),
        login_per_minute: 1000,
        ..Default::default()
    }
}

/// `GET /v1/gateway/feed?diff=true[&after=N&wait_ms=M]`: the whole set, or
/// only the changes since `after` when the control plane still has them.
pub async fn feed_update(
    c: &ControlClient,
    after: Option<u64>,
    wait: Duration,
) -> Result<FeedUpdate, control_client::ClientError> {
    let path = match after {
        Some(v) => format!(
            "/v1/gateway/feed?diff=true&after={v}&wait_ms={}",
            wait.as_millis()
        ),
        None => "/v1/gateway/feed?diff=true".to_string(),
    };
    c.call(
        reqwest::Method::GET,
        &path,
        None::<&()>,
        wait + Duration::from_secs(15),
    )
    .await
}

/// A gateway that follows the feed with diffs and acknowledges every
/// version, keeping its own copy of the desired set.
pub struct FeedFollower {
    pub mirror: Arc<Mutex<FeedMirror>>,
    pub credential: String,
    /// How many answers were diffs and how many whole sets.
    pub answers: Arc<Mutex<(u64, u64)>>,
    task: tokio::task::JoinHandle<()>,
}

impl FeedFollower {
    pub async fn enroll(base: &ControlClient, token: &str, gw_key: WgKey) -> FeedFollower {
        let resp = base
            .enroll(&EnrollRequest {
                enrollment_token: token.into(),
                report: report(gw_key),
            })
            .await
            .expect("enrollment works");
        Self::follow(base, &resp.credential, true).await
    }

    /// Follows the feed with `credential`; acknowledges when `ack`.
    pub async fn follow(base: &ControlClient, credential: &str, ack: bool) -> FeedFollower {
        let c = base.with_bearer(credential);
        let mirror: Arc<Mutex<FeedMirror>> = Arc::default();
        let answers: Arc<Mutex<(u64, u64)>> = Arc::default();
        let first = feed_update(&c, None, Duration::ZERO)
            .await
            .expect("first feed");
        assert!(first.is_full());
        let version = first.version;
        mirror.lock().unwrap().apply(first).unwrap();
        answers.lock().unwrap().1 += 1;
        if ack {
            c.ack(version).await.unwrap();
        }
        let (m, n) = (mirror.clone(), answers.clone());
        let task = tokio::spawn(async move {
            let mut after = Some(version);
            loop {
                match feed_update(&c, after, Duration::from_secs(20)).await {
                    Ok(update) => {
                        let version = update.version;
                        {
                            let mut n = n.lock().unwrap();
                            if update.is_full() {
                                n.1 += 1;
                            } else {
                                n.0 += 1;
                            }
                        }
                        if m.lock().unwrap().apply(update).is_err() {
                            // A diff that does not fit what we hold: start over.
                            after = None;
                            continue;
                        }
                        after = Some(version);
                        if ack && c.ack(version).await.is_err() {
                            after = None;
                        }
                    }
                    Err(_) => {
                        after = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        FeedFollower {
            mirror,
            credential: credential.into(),
            answers,
            task,
        }
    }

    /// The whole desired set as the follower holds it now.
    pub fn state(&self) -> FeedState {
        self.mirror
            .lock()
            .unwrap()
            .state()
            .expect("the follower holds a whole set")
    }

    pub fn admission_ids(&self) -> Vec<String> {
        self.state().admissions.into_iter().map(|a| a.id).collect()
    }

    pub fn admission_count(&self) -> usize {
        self.mirror.lock().unwrap().len()
    }

    pub fn version(&self) -> u64 {
        self.mirror.lock().unwrap().version().unwrap_or(0)
    }

    /// (diffs, whole sets) received so far.
    pub fn answer_counts(&self) -> (u64, u64) {
        *self.answers.lock().unwrap()
    }

    /// Waits for `cond` on the admission ids, at most [`PATIENCE`];
    /// returns how long it took. Callers that make a claim about speed
    /// assert on the returned time, with the margin the claim needs on a
    /// busy machine.
    pub async fn wait_until(&self, cond: impl Fn(&[String]) -> bool) -> Option<Duration> {
        let t = std::time::Instant::now();
        while t.elapsed() < PATIENCE {
            if cond(&self.admission_ids()) {
                return Some(t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

impl Drop for FeedFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw call: (status, JSON body or Null), with `token` as bearer.
pub async fn send(
    c: &ControlClient,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut r = c
        .http()
        .request(method, format!("{}{path}", c.base_url()))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

pub async fn ok(
    c: &ControlClient,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let (s, v) = send(c, token, method.clone(), path, body).await;
    assert!((200..300).contains(&s), "{method} {path} answered {s}: {v}");
    v
}
