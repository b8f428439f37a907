//! One writer per output: two runs writing the same output at once would
//! both pay for every row, so the second stops at once (exit 2) and says
//! which process holds the output (host, pid, since when).
//!
//! - A local output is locked with an OS file lock on
//!   `out.parquet.aiq/writer.lock`. The OS drops the lock when its process
//!   ends, however it ends (`kill -9` included), so a stale lock is never in
//!   the way; the file only says who holds it.
//! - An object-store output has no such lock: a lease object
//!   `out.parquet.aiq/writer.lock` is created with a conditional write (fails
//!   if it exists), renewed every [`HEARTBEAT`] with a write conditional on
//!   its version, and taken over by a conditional write once it has expired
//!   ([`LEASE_TTL`] after its last renewal, by the clock of the run that
//!   looks), or at once when it names a process of this host that is gone.
//!   A run that loses its lease (taken over, or not renewed before it
//!   lapses) stops sending at once and exits 1 ([`WriterLock::lost`]):
//!   another run may be writing the output now.
//!
//! Locks are named by a scope (`writer-{scope}.lock`) so that shards
//! writing parts of one job can each hold their own.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::job::location::{Location, Role};
use crate::pipeline::journal::{is_lock, lock_name, state_dir};
use crate::pipeline::store::Remote;

/// A lease not renewed for this long belongs to a run that is gone: long
/// enough to ride out a slow store, short enough that a re-run after a
/// crash elsewhere waits at most this.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a held lease is renewed: three chances before it expires.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Who holds a lock, as the lock file or lease object says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// Seconds since the epoch.
    pub since: u64,
    /// Leases only: seconds since the epoch after which it may be taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

impl Holder {
    fn me(since: u64, expires: Option<u64>) -> Holder {
        Holder {
            host: host_name(),
            pid: std::process::id(),
            since,
            expires,
        }
    }

    fn describe(&self) -> String {
        let date = |secs: u64| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        let mut text = format!(
            "process {} on host {} since {}",
            self.pid,
            self.host,
            date(self.since)
        );
        if let Some(expires) = self.expires {
            text.push_str(&format!(
                "; if that run is gone, its lease lapses at {}",
                date(expires)
            ));
        }
        text
    }

    /// A lease another run may take: expired, or left by a process of
    /// this host that no longer exists.
    fn is_stale(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| e <= now)
            || (self.host == host_name() && process_gone(self.pid))
    }
}

fn busy(output: &str, who: &str) -> Error {
    Error::output(
        output,
        format!(
            "another aiq run is writing this output ({who}): wait for it to end or stop it; \
             two runs would pay for every row twice"
        ),
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The machine's name, for telling a user where the other run is.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// True only when `pid` certainly names no process of this machine; where
/// that cannot be told, a process is taken to be alive (nothing of it is
/// removed or taken over).
pub fn process_gone(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        Path::new("/proc/self").exists() && !Path::new("/proc").join(pid.to_string()).exists()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Held while the run writes its output; released when dropped (a local
/// lock) or by [`WriterLock::release`] (a lease).
pub struct WriterLock {
    held: Held,
}

enum Held {
    /// The open lock file (closing it releases the lock) and its path.
    Local(File, std::path::PathBuf),
    Lease(Lease),
    /// A store without conditional writes: nothing to hold.
    None,
}

impl WriterLock {
    /// The lock on `output`: a file lock for a local path, a lease for an
    /// object-store URL.
    pub async fn acquire(output: &Location, scope: Option<&str>) -> Result<WriterLock> {
        match output {
            Location::Store(url) => Self::remote(&Remote::open(url, Role::Output)?, scope).await,
            Location::Local(output) => Self::local(output, scope),
        }
    }

    /// Locks the local output `output` for this process, or says who holds it.
    pub fn local(output: &Path, scope: Option<&str>) -> Result<WriterLock> {
        let dir = state_dir(output);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::output(output, format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(lock_name(scope));
        let failed = |e: std::io::Error| {
            Error::output(output, format!("cannot lock {}: {e}", path.display()))
        };
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(failed)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    let who = serde_json::from_str::<Holder>(&text)
                        .map(|h| h.describe())
                        .unwrap_or_else(|_| "a process that is starting".into());
                    return Err(busy(&output.display().to_string(), &who));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
            }
            // The last holder removes the folder when its job is done; a
            // lock taken on the removed file between our open and lock
            // guards nothing, so open the path again.
            if !same_file(&file, &path) {
                continue;
            }
            let holder = serde_json::to_vec(&Holder::me(now_secs(), None)).unwrap_or_default();
            file.set_len(0)
                .and_then(|_| file.seek(SeekFrom::Start(0)))
                .and_then(|_| file.write_all(&holder))
                .map_err(failed)?;
            // The output is ours now: what killed writers of it left goes.
            crate::pipeline::parquet_out::remove_stale_temps(output, process_gone);
            return Ok(WriterLock {
                held: Held::Local(file, path),
            });
        }
    }

    /// Takes the lease on the object-store output `output`, or says who
    /// holds it. A store that cannot write conditionally gets no lease (with
    /// a warning): its final copy still refuses to replace an output.
    pub async fn remote(output: &Remote, scope: Option<&str>) -> Result<WriterLock> {
        let key = ObjectPath::from(format!("{}.aiq/{}", output.key, lock_name(scope)));
        let url = output.url.clone();
        let store = output.store.clone();
        let since = now_secs();
        let body = |h: &Holder| PutPayload::from(serde_json::to_vec(h).unwrap_or_default());
        let expires = || Some(now_secs() + LEASE_TTL.as_secs());
        let fail = |e: object_store::Error| Error::output(&url, format!("the writer lease: {e}"));
        // A few rounds: each lost race means another run moved the lease.
        for _ in 0..3 {
            let mode = match store.get_opts(&key, GetOptions::default()).await {
                Err(object_store::Error::NotFound { .. }) => PutMode::Create,
                Err(e) => return Err(fail(e)),
                Ok(got) => {
                    let version = UpdateVersion {
                        e_tag: got.meta.e_tag.clone(),
                        version: got.meta.version.clone(),
                    };
                    let bytes = got.bytes().await.map_err(fail)?;
                    match serde_json::from_slice::<Holder>(&bytes) {
                        Ok(h) if !h.is_stale(now_secs()) => return Err(busy(&url, &h.describe())),
                        Ok(h) => tracing::warn!(
                            "taking over the writer lease of {url} from {}, which is gone",
                            h.describe()
                        ),
                        // Unreadable: not ours to judge, but nobody renews it.
                        Err(_) => {}
                    }
                    PutMode::Update(version)
                }
            };
            let options = PutOptions {
                mode,
                ..Default::default()
            };
            match store
                .put_opts(&key, body(&Holder::me(since, expires())), options)
                .await
            {
                Ok(put) => {
                    // As for a local output: what killed runs left goes.
                    crate::pipeline::store::remove_stale_scratch(
                        &std::env::temp_dir(),
                        process_gone,
                    );
                    let lease = Lease::start(store.clone(), key, url, since, put.into());
                    return Ok(WriterLock {
                        held: Held::Lease(lease),
                    });
                }
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => continue,
                Err(object_store::Error::NotImplemented { .. }) => {
                    tracing::warn!(
                        "{url}: the store cannot write conditionally, so nothing stops a \
                         second run from writing this output at the same time"
                    );
                    return Ok(WriterLock { held: Held::None });
                }
                Err(e) => return Err(fail(e)),
            }
        }
        Err(busy(&url, "another run that just took the lease"))
    }

    /// For a lease: what tells the run it was lost (taken over, or not
    /// renewed in time). A file lock is held until the process ends.
    pub fn lost(&self) -> Option<LeaseLost> {
        match &self.held {
            Held::Lease(lease) => Some(LeaseLost(lease.lost.clone())),
            Held::Local(..) | Held::None => None,
        }
    }

    /// Gives the lock up: a lease is deleted (if still ours), a file lock
    /// released.
    pub async fn release(self) {
        match self.held {
            Held::Lease(lease) => lease.release().await,
            Held::Local(file, path) => {
                // A run that ends before its journal exists (a bad endpoint,
                // say) leaves no state folder of only a lock behind. Removed
                // while still held: a run that opened the file meanwhile
                // sees it gone and opens the path again.
                let Some(dir) = path.parent() else { return };
                let only_locks = std::fs::read_dir(dir).is_ok_and(|entries| {
                    entries
                        .flatten()
                        .all(|e| is_lock(&e.file_name().to_string_lossy()))
                });
                if only_locks {
                    let _ = std::fs::remove_file(&path);
                    let _ = std::fs::remove_dir(dir);
                }
                drop(file);
            }
            Held::None => {}
        }
    }
}

/// Whether the open `file` is still the one at `path`.
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

/// A held lease and the task renewing it.
struct Lease {
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    version: Arc<Mutex<UpdateVersion>>,
    heartbeat: tokio::task::JoinHandle<()>,
    lost: watch::Receiver<Option<String>>,
}

/// Tells the run that its lease is gone, and why: from then on another run
/// may write the output, and two writers would both pay for every row.
#[derive(Clone)]
pub struct LeaseLost(watch::Receiver<Option<String>>);

impl LeaseLost {
    /// Resolves with the reason once the lease is lost; never while it is
    /// held.
    pub async fn lost(&mut self) -> String {
        let why = self
            .0
            .wait_for(Option::is_some)
            .await
            .map(|why| why.clone());
        match why {
            Ok(why) => why.unwrap_or_default(),
            // The heartbeat ended without a loss: the lease was let go.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Lease {
    fn start(
        store: Arc<dyn ObjectStore>,
        key: ObjectPath,
        url: String,
        since: u64,
        version: UpdateVersion,
    ) -> Lease {
        let version = Arc::new(Mutex::new(version));
        let (tell, lost) = watch::channel(None);
        let heartbeat = {
            let (store, key, version) = (store.clone(), key.clone(), version.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(HEARTBEAT);
                tick.tick().await; // the first tick is now
                let mut expires = now_secs() + LEASE_TTL.as_secs();
                loop {
                    tick.tick().await;
                    let me = Holder::me(since, Some(now_secs() + LEASE_TTL.as_secs()));
                    let current = lock(&version).clone();
                    let options = PutOptions {
                        mode: PutMode::Update(current),
                        ..Default::default()
                    };
                    let payload = PutPayload::from(serde_json::to_vec(&me).unwrap_or_default());
                    let why = match store.put_opts(&key, payload, options).await {
                        Ok(put) => {
                            *lock(&version) = put.into();
                            expires = me.expires.unwrap_or(expires);
                            continue;
                        }
                        Err(object_store::Error::Precondition { .. })
                        | Err(object_store::Error::NotFound { .. }) => {
                            let who = holder(store.as_ref(), &key).await;
                            let who = who.map_or_else(
                                || "the lease object was deleted".to_string(),
                                |h| format!("now held by {}", h.describe()),
                            );
                            format!("{url}: this run lost the output's writer lease, {who}")
                        }
                        // Renewed at the next tick, unless that is too late:
                        // once the lease lapses another run may take it.
                        Err(e) if now_secs() + HEARTBEAT.as_secs() < expires => {
                            tracing::warn!("{url}: renewing the writer lease: {e}");
                            continue;
                        }
                        Err(e) => format!(
                            "{url}: the output's writer lease could not be renewed ({e}) and \
                             lapses before the next try, when another run may take it over"
                        ),
                    };
                    tracing::error!("{why}");
                    let _ = tell.send(Some(format!(
                        "{why}. This run stopped sending, so that two runs do not both pay \
                         for the rows; its answers are kept: run the same command again to \
                         resume once the other run is gone"
                    )));
                    break;
                }
            })
        };
        Lease {
            store,
            key,
            version,
            heartbeat,
            lost,
        }
    }

    async fn release(mut self) {
        self.heartbeat.abort();
        let _ = (&mut self.heartbeat).await;
        // Deleted only if it is still ours: stores have no conditional
        // delete, so the check and the delete are two requests.
        let ours = lock(&self.version).e_tag.clone();
        let current = self
            .store
            .get_opts(
                &self.key,
                GetOptions {
                    head: true,
                    ..Default::default()
                },
            )
            .await
            .map(|g| g.meta.e_tag);
        if matches!(current, Ok(tag) if tag == ours) {
            // The trait's own (`Send`) method: this runs in spawned tasks.
            use futures::StreamExt;
            let keys = futures::stream::iter([Ok(self.key.clone())]).boxed();
            let mut deleted = self.store.delete_stream(keys);
            while let Some(r) = deleted.next().await {
                if let Err(e) = r {
                    tracing::warn!("deleting the writer lease {}: {e}", self.key);
                }
            }
        }
    }
}

/// Who the lease object at `key` names, if it can be read.
async fn holder(store: &dyn ObjectStore, key: &ObjectPath) -> Option<Holder> {
    let got = store.get_opts(key, GetOptions::default()).await.ok()?;
    serde_json::from_slice(&got.bytes().await.ok()?).ok()
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_local_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.parquet");
        let held = WriterLock::local(&out, None).unwrap();
        let err = WriterLock::local(&out, None).err().unwrap();
        let msg = err.to_string();
        assert_eq!(err.exit_code(), 2);
        assert!(
            msg.contains(&format!("process {}", std::process::id())) && msg.contains(&host_name()),
            "{msg}"
        );
        // Another scope is another lock.
        let shard = WriterLock::local(&out, Some("shard-0-of-2")).unwrap();
        drop(held);
        let again = WriterLock::local(&out, None).unwrap();
        drop((again, shard));
    }

    #[test]
    fn a_lock_on_a_removed_file_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.parquet");
        let held = WriterLock::local(&out, None).unwrap();
        // The holder's job ends: its state folder goes, lock file included.
        std::fs::remove_dir_all(state_dir(&out)).unwrap();
        let next = WriterLock::local(&out, None).unwrap();
        assert!(state_dir(&out).join("writer.lock").exists());
        drop((held, next));
    }

    #[test]
    fn stale_leases() {
        let now = 1_000;
        let other = Holder {
            host: "elsewhere.invalid".into(),
            pid: 1,
            since: 10,
            expires: Some(now + 5),
        };
        assert!(!other.is_stale(now));
        assert!(other.is_stale(now + 5));
        let mine_alive = Holder::me(10, Some(now + 5));
        assert!(!mine_alive.is_stale(now));
    }
}
