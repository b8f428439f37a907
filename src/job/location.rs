//! Where a job's data is: a local path (a file, or a Delta table's folder)
//! or an object in a store (`s3://`, `gs://`, `az://` / `abfss://`, and
//! `http(s)://` for reading). An input or output is parsed into a
//! [`Location`] once, when the plan is checked (or when `aiq sql` finds a
//! table or its output), and the data path works with that: it never asks
//! again whether a string is a URL. Opening the store itself (credentials,
//! connections) is the pipeline's (`pipeline::store::Remote::open`).
//!
//! A URL that carries credentials (`user:password@`, or a query string: a
//! presigned URL's signature, a SAS token) is refused here, so a parsed
//! location can be shown in any message as written.

use std::fmt;
use std::path::{Path, PathBuf};

use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreScheme;
use url::Url;

use crate::error::{Error, Result};

/// The URL schemes aiq hands to an object store; anything else is a path.
const SCHEMES: [&str; 10] = [
    "s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https",
];

/// True when `text` is a URL for an object store rather than a local path.
pub fn is_url(text: &str) -> bool {
    text.split_once("://")
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// Which side of the job a location is on, for the error kind (both exit 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Input,
    Output,
}

impl Role {
    pub fn error(self, location: impl Into<PathBuf>, message: impl fmt::Display) -> Error {
        match self {
            Role::Input => Error::input(location, message),
            Role::Output => Error::output(location, message),
        }
    }
}

/// An input or output, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    /// A local file or folder, as written.
    Local(PathBuf),
    /// An object (or a Delta table's prefix) in a store.
    Store(StoreUrl),
}

/// An object-store URL, checked: it names a bucket and a key, and carries
/// no credentials (those come from the cloud's own environment).
#[derive(Clone, PartialEq)]
pub struct StoreUrl {
    /// As the user wrote it: what messages show.
    text: String,
    pub url: Url,
    pub scheme: ObjectStoreScheme,
    /// The object's key in its bucket.
    pub key: ObjectPath,
    /// `scheme://bucket`: what a store is built for and DataFusion
    /// registers it under.
    pub root: Url,
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StoreUrl").field(&self.text).finish()
    }
}

impl Location {
    /// `path` as a local path, or the object-store URL it is; an error
    /// naming the URL (redacted) for a malformed one or one that carries
    /// credentials.
    pub fn parse(path: impl AsRef<Path>, role: Role) -> Result<Location> {
        let path = path.as_ref();
        match path.to_str() {
            Some(text) if is_url(text) => StoreUrl::parse(text, role).map(Location::Store),
            _ => Ok(Location::Local(path.to_path_buf())),
        }
    }

    /// The location as written, as a path: for messages, the file name and
    /// extension.
    pub fn as_path(&self) -> &Path {
        match self {
            Location::Local(path) => path,
            Location::Store(url) => Path::new(&url.text),
        }
    }

    /// The local path, when this is one.
    pub fn local(&self) -> Option<&Path> {
        match self {
            Location::Local(path) => Some(path),
            Location::Store(_) => None,
        }
    }

    pub fn is_store(&self) -> bool {
        matches!(self, Location::Store(_))
    }

    /// The same location with `suffix` added to its last name
    /// (`table` → `table.shard-0-of-2`).
    pub fn with_suffix(&self, suffix: &str) -> Location {
        match self {
            Location::Local(path) => Location::Local(with_name_suffix(path, suffix)),
            Location::Store(url) => {
                Location::Store(url.at(ObjectPath::from(format!("{}{suffix}", url.key))))
            }
        }
    }

    /// Whether `self` and `other` name the same file or object (links,
    /// `..` and hard links resolved for local paths).
    pub fn same_as(&self, other: &Location) -> bool {
        match (self, other) {
            (Location::Store(a), Location::Store(b)) => a.url == b.url,
            (Location::Local(a), Location::Local(b)) => same_file(a, b),
            _ => false,
        }
    }
}

/// `path` with `suffix` added to its last name (`out.parquet` →
/// `out.parquet.aiq`): one rule for every file and folder aiq keeps beside
/// an output (state, status, the SQL call journal, shards).
pub fn with_name_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_path().display(), f)
    }
}

/// Errors name a location as written (no credentials: see [`Location::parse`]).
impl From<&Location> for PathBuf {
    fn from(location: &Location) -> PathBuf {
        location.as_path().to_path_buf()
    }
}

impl StoreUrl {
    fn parse(text: &str, role: Role) -> Result<StoreUrl> {
        let shown = redact(text);
        let bad = |m: String| role.error(&shown, m);
        // object_store would drop them silently, and messages would show them.
        if shown != text && !names_container(text) {
            return Err(bad(
                "a user:password or query string (a presigned URL's signature, a SAS token) in \
                 the URL is not used: give credentials through the environment"
                    .into(),
            ));
        }
        let url = Url::parse(text).map_err(|e| bad(format!("not a valid URL: {e}")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no bucket (or host) after `://`".into()));
        }
        let (scheme, key) =
            ObjectStoreScheme::parse(&url).map_err(|e| bad(format!("not a store URL: {e}")))?;
        if key.as_ref().is_empty() {
            return Err(bad(
                "names a bucket, not an object: add the object's key".into()
            ));
        }
        let root = Url::parse(&url[..url::Position::BeforePath])
            .map_err(|e| bad(format!("not a valid URL: {e}")))?;
        Ok(StoreUrl {
            text: text.to_string(),
            url,
            scheme,
            key,
            root,
        })
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Another object in the same bucket, `key` relative to the bucket.
    pub fn at(&self, key: ObjectPath) -> StoreUrl {
        let text = format!("{}/{key}", self.root.as_str().trim_end_matches('/'));
        StoreUrl {
            url: Url::parse(&text).unwrap_or_else(|_| self.url.clone()),
            text,
            scheme: self.scheme.clone(),
            key,
            root: self.root.clone(),
        }
    }
}

/// A URL as messages may show it: a query string (a presigned URL's
/// signature, a SAS token) and a `user:password@` (the one redaction of
/// URLs, [`crate::provider::auth::redact_url`]) replaced by `…`.
fn redact(text: &str) -> String {
    let (rest, query) = match text.split_once('?') {
        Some((rest, _)) => (rest, "?…"),
        None => (text, ""),
    };
    format!("{}{query}", crate::provider::auth::redact_url(rest))
}

/// `abfs(s)://container@account.dfs.core.windows.net/...`: Azure's own
/// form, whose user is the container (no password, no query), not a
/// credential.
fn names_container(text: &str) -> bool {
    Url::parse(text).is_ok_and(|url| {
        matches!(url.scheme(), "abfs" | "abfss")
            && url.password().is_none()
            && url.query().is_none()
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    canonical(a).is_some() && canonical(a) == canonical(b)
}

/// The absolute path `path` names, resolved through links, whether or not
/// the file itself exists yet.
fn canonical(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Some(p);
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(folder).ok()?.join(path.file_name()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        for url in [
            "s3://b/k.parquet",
            "S3://b/k",
            "gs://b/k",
            "abfss://c@a.dfs.core.windows.net/k",
            "https://h/k.jsonl",
        ] {
            assert!(is_url(url), "{url}");
        }
        for url in [
            "s3://b/k.parquet",
            "S3://b/k",
            "gs://b/k",
            "abfss://c@a.dfs.core.windows.net/k",
            "https://h/k.jsonl",
        ] {
            assert!(
                Location::parse(url, Role::Input).unwrap().is_store(),
                "{url}"
            );
        }
        for path in [
            "k.parquet",
            "/Volumes/cat/schema/vol/k.parquet",
            "C:\\data\\k.parquet",
            "file.s3://x",
            "ftp://h/k",
        ] {
            assert!(!is_url(path), "{path}");
            let local = Location::parse(path, Role::Input).unwrap();
            assert_eq!(local.local(), Some(Path::new(path)));
        }
    }

    #[test]
    fn credentials_in_urls_are_refused_unshown() {
        for (url, shown) in [
            (
                "https://h/k.jsonl?X-Amz-Signature=SECRET&X-Amz-Credential=AKIA",
                "https://h/k.jsonl?…",
            ),
            ("https://user:SECRET@h/k.jsonl", "https://…@h/k.jsonl"),
            (
                "s3://AKIA:SECRET@bucket/k.parquet",
                "s3://…@bucket/k.parquet",
            ),
            ("az://c/k.parquet?sv=1&sig=SECRET", "az://c/k.parquet?…"),
            (
                "abfss://c:SECRET@a.dfs.core.windows.net/k",
                "abfss://…@a.dfs.core.windows.net/k",
            ),
            (
                "abfss://c@a.dfs.core.windows.net/k?sig=SECRET",
                "abfss://…@a.dfs.core.windows.net/k?…",
            ),
        ] {
            let err = Location::parse(url, Role::Input).expect_err(url);
            assert_eq!(err.exit_code(), 2);
            let text = err.to_string();
            assert!(text.contains(shown) && !text.contains("SECRET"), "{text}");
        }
        assert_eq!(redact("s3://b/k.parquet"), "s3://b/k.parquet");
    }

    #[test]
    fn malformed_urls_name_the_url() {
        for url in ["s3://", "s3:///key.parquet", "s3://bucket", "s3://bucket/"] {
            let err = Location::parse(url, Role::Input).expect_err(url);
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains(url), "{err}");
        }
    }

    #[test]
    fn a_suffix_goes_on_the_last_name() {
        let local = Location::parse("out/table", Role::Output).unwrap();
        assert_eq!(
            local.with_suffix(".shard-0-of-2").to_string(),
            "out/table.shard-0-of-2"
        );
        let url = Location::parse("s3://b/out/table", Role::Output).unwrap();
        let shard = url.with_suffix(".shard-0-of-2");
        assert_eq!(shard.to_string(), "s3://b/out/table.shard-0-of-2");
        let Location::Store(s) = &shard else {
            panic!("{shard:?}")
        };
        assert_eq!(s.key.as_ref(), "out/table.shard-0-of-2");
        assert!(!shard.same_as(&url) && url.same_as(&url.clone()));
    }
}
