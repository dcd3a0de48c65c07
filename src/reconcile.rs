//! `image-service reconcile` (contract §7): removes what a crash (or a lost
//! in-process cleanup queue) left in Storage, and reports records whose
//! object is missing. Safe to run at any time, as a cron job.
//!
//! For every user folder of the bucket it lists the objects first, then the
//! user's records (every page), and removes each object that is named as
//! this service names images, is older than `--older-than` by the time in
//! its name, and that no record points at. It never removes a record and
//! never touches another name.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;

use crate::cleaner::unix_ms;
use crate::clients::bdd::BddClient;
use crate::clients::http_client;
use crate::clients::storage::{ListEntry, ObjectPath, StorageClient, StorageError};
use crate::config::Config;
use crate::domain::UserId;
use crate::metrics::Metrics;
use crate::request_id::RequestId;

/// Entries asked for per listing call (the real server's default page).
const LIST_PAGE: usize = 100;

/// How to reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Only objects older than this, by the time in their name.
    pub older_than: Duration,
    /// Only this user's folder.
    pub user: Option<UserId>,
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
    /// Print one JSON object instead of the summary line.
    pub json: bool,
}

/// The usage line of the subcommand.
pub const USAGE: &str =
    "image-service reconcile [--older-than SECS (default 3600)] [--user SUB] [--dry-run] [--json]";

impl Options {
    /// Parses the arguments after `reconcile`.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Self {
            older_than: Duration::from_secs(3600),
            user: None,
            dry_run: false,
            json: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (arg.as_str(), None),
            };
            let mut value = |what: &str| {
                inline
                    .clone()
                    .or_else(|| args.next().cloned())
                    .ok_or_else(|| format!("{name}: expected {what}"))
            };
            match name {
                "--older-than" => {
                    let raw = value("a number of seconds")?;
                    let secs = raw.parse().map_err(|_| {
                        format!("--older-than: expected a number of seconds, got {raw:?}")
                    })?;
                    options.older_than = Duration::from_secs(secs);
                }
                "--user" => {
                    let raw = value("a user id")?;
                    options.user = Some(
                        UserId::parse(&raw)
                            .ok_or_else(|| format!("--user: {raw:?} is not a user id"))?,
                    );
                }
                "--dry-run" if inline.is_none() => options.dry_run = true,
                "--json" if inline.is_none() => options.json = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(options)
    }
}

/// What a run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// User folders looked at.
    pub users: usize,
    /// Objects listed in them.
    pub objects: usize,
    /// Records of those users.
    pub records: usize,
    /// Objects removed.
    pub orphans_removed: usize,
    /// Records whose object is missing.
    pub dangling: usize,
    /// Calls that failed (that user's removals were then skipped).
    pub errors: usize,
    /// Whether nothing was removed on purpose.
    pub dry_run: bool,
    /// The orphan objects (removed, or to remove with `--dry-run`).
    pub orphan_paths: Vec<String>,
    /// The object paths that records point at and Storage lacks.
    pub dangling_paths: Vec<String>,
    /// What failed, for the operator.
    pub error_messages: Vec<String>,
}

impl Report {
    /// The one summary line.
    pub fn line(&self) -> String {
        let mut line = format!(
            "reconcile: users={} objects={} records={} orphans_removed={} dangling={} errors={}",
            self.users,
            self.objects,
            self.records,
            self.orphans_removed,
            self.dangling,
            self.errors
        );
        if self.dry_run {
            line.push_str(&format!(
                " dry_run=true would_remove={}",
                self.orphan_paths.len()
            ));
        }
        line
    }
}

/// Runs a reconciliation with the service's configuration.
pub async fn run(config: &Config, options: &Options) -> Report {
    let metrics = Metrics::new();
    let http = match http_client() {
        Ok(http) => http,
        Err(e) => {
            return Report {
                errors: 1,
                error_messages: vec![format!("HTTP client: {e}")],
                ..Report::default()
            }
        }
    };
    let storage = StorageClient::new(
        http.clone(),
        &config.storage,
        config.upload_timeout,
        metrics.clone(),
    );
    let bdd = BddClient::new(http, &config.bdd_url, config.upstream_timeout, metrics);
    Reconciler {
        storage,
        bdd,
        options,
        request_id: RequestId::generate(),
        report: Report {
            dry_run: options.dry_run,
            ..Report::default()
        },
    }
    .run()
    .await
}

struct Reconciler<'a> {
    storage: StorageClient,
    bdd: BddClient,
    options: &'a Options,
    request_id: RequestId,
    report: Report,
}

impl Reconciler<'_> {
    async fn run(mut self) -> Report {
        let users = match &self.options.user {
            Some(user) => vec![user.clone()],
            None => match self.list_all("").await {
                Ok(entries) => entries
                    .into_iter()
                    .filter(|e| e.id.is_none())
                    // A folder whose name is no user id is not ours.
                    .filter_map(|e| UserId::parse(&e.name))
                    .collect(),
                Err(e) => {
                    self.failed(format!("listing the bucket: {e}"));
                    Vec::new()
                }
            },
        };
        for user in users {
            self.user(&user).await;
        }
        self.report
    }

    fn failed(&mut self, message: String) {
        tracing::warn!(error = message, "reconcile");
        self.report.errors += 1;
        self.report.error_messages.push(message);
    }

    /// Every entry of a folder, page after page.
    async fn list_all(&self, prefix: &str) -> Result<Vec<ListEntry>, StorageError> {
        let mut entries = Vec::new();
        loop {
            let page = self
                .storage
                .list(prefix, LIST_PAGE, entries.len(), &self.request_id)
                .await?;
            let full = page.len() == LIST_PAGE;
            entries.extend(page);
            if !full {
                return Ok(entries);
            }
        }
    }

    async fn user(&mut self, user: &UserId) {
        self.report.users += 1;
        // Objects first, records second: an object uploaded in between is
        // too young to matter; a record written in between is seen.
        let objects: Vec<String> = match self.list_all(&format!("{}/", user.as_str())).await {
            Ok(entries) => entries
                .into_iter()
                .filter(|e| e.id.is_some())
                .map(|e| e.name)
                .collect(),
            Err(e) => return self.failed(format!("listing {}/: {e}", user.as_str())),
        };
        self.report.objects += objects.len();
        let urls = match self.bdd.all_image_urls(user, &self.request_id).await {
            Ok(urls) => urls,
            Err(e) => {
                // Without the records, nothing can be told an orphan.
                return self.failed(format!("records of {}: {e}", user.as_str()));
            }
        };
        self.report.records += urls.len();
        let pointed: HashSet<ObjectPath> = urls
            .iter()
            .filter_map(|url| self.storage.object_of_url(url, user))
            .collect();
        let listed: HashSet<String> = objects
            .iter()
            .map(|name| format!("{}/{name}", user.as_str()))
            .collect();
        for path in &pointed {
            if !listed.contains(path.as_str()) {
                self.report.dangling += 1;
                self.report.dangling_paths.push(path.as_str().to_owned());
            }
        }
        let now_ms = unix_ms();
        let min_age_ms = self.options.older_than.as_millis() as u64;
        for name in &objects {
            let Some((path, millis)) = ObjectPath::own_image(user, name) else {
                continue;
            };
            if now_ms.saturating_sub(millis) < min_age_ms || pointed.contains(&path) {
                continue;
            }
            if self.options.dry_run {
                self.report.orphan_paths.push(path.as_str().to_owned());
                continue;
            }
            match self.storage.remove(&path, &self.request_id).await {
                Ok(()) => {
                    tracing::info!(object = %path, "reconcile: orphan removed");
                    self.report.orphans_removed += 1;
                    self.report.orphan_paths.push(path.as_str().to_owned());
                }
                Err(e) => self.failed(format!("removing {path}: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_have_the_documented_defaults_and_forms() {
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.older_than, Duration::from_secs(3600));
        assert!(!defaults.dry_run && !defaults.json && defaults.user.is_none());
        let all = parse(&["--older-than", "0", "--user=user_a", "--dry-run", "--json"]).unwrap();
        assert_eq!(all.older_than, Duration::ZERO);
        assert_eq!(all.user.unwrap().as_str(), "user_a");
        assert!(all.dry_run && all.json);
        for bad in [
            &["--older-than"][..],
            &["--older-than", "soon"],
            &["--user", "a/b"],
            &["--force"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_summary_is_one_line_with_every_count() {
        let report = Report {
            users: 2,
            objects: 5,
            records: 3,
            orphans_removed: 1,
            dangling: 1,
            errors: 0,
            ..Report::default()
        };
        assert_eq!(
            report.line(),
            "reconcile: users=2 objects=5 records=3 orphans_removed=1 dangling=1 errors=0"
        );
    }
}
