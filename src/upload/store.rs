//! The uploaded files on disk, under `[upload] directory`: one folder per upload, named by
//! the slot's random id, holding `data` (the bytes as PUT) and `meta` (JSON: the file's
//! name, content type, size, owner and expiry). `meta` is written last, so a folder without
//! one is an upload that never finished; it is deleted when the service starts.
//!
//! Why on disk rather than in the core's database: the files are there anyway, the service
//! then needs no schema migration and works without `[core]`, and a folder deleted by hand
//! is simply gone. The quota and the expiry sweep read an index built from the `meta` files
//! at start and kept in memory (one entry per stored file).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

const DATA: &str = "data";
const PARTIAL: &str = "data.part";
const META: &str = "meta";

/// What is kept about a stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The last path segment of its URL, percent-encoded as in the slot.
    pub name: String,
    /// The media type from the slot, served as `Content-Type`.
    pub content_type: String,
    /// The file's length in bytes, counted in the owner's quota.
    pub size: u64,
    /// The bare JID whose quota it counts against.
    pub owner: String,
    /// When it is deleted, in seconds since the epoch.
    pub expires: u64,
}

/// Why a PUT could not start storing.
#[derive(Debug, thiserror::Error)]
pub enum BeginError {
    /// A file is stored at that path, or an upload to it is under way (HTTP 409).
    #[error("a file is already stored at this URL")]
    Exists,
    /// Creating the upload's folder or its partial file failed (HTTP 500).
    #[error("cannot store the file: {0}")]
    Io(#[from] io::Error),
}

/// The store: its folder and the index of what it holds. Cheap to share (`Arc`).
pub struct Files {
    root: PathBuf,
    /// Never held across an await.
    index: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    by_id: HashMap<String, Meta>,
    /// Bytes stored per owner.
    used: HashMap<String, u64>,
}

impl Index {
    fn insert(&mut self, id: String, meta: Meta) {
        *self.used.entry(meta.owner.clone()).or_default() += meta.size;
        self.by_id.insert(id, meta);
    }

    fn remove(&mut self, id: &str) {
        if let Some(meta) = self.by_id.remove(id) {
            if let Some(used) = self.used.get_mut(&meta.owner) {
                *used = used.saturating_sub(meta.size);
                if *used == 0 {
                    self.used.remove(&meta.owner);
                }
            }
        }
    }
}

/// A slot id is the folder name: 32 lowercase hex digits, so a URL never names anything
/// else under the root.
pub fn is_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A fresh random slot id.
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Files {
    /// Opens (creating) `root`, indexes the finished uploads and deletes the unfinished
    /// ones.
    pub fn open(root: &Path) -> io::Result<Files> {
        std::fs::create_dir_all(root)?;
        let mut index = Index::default();
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_id(&id) || !entry.file_type()?.is_dir() {
                continue;
            }
            let meta = std::fs::read(entry.path().join(META))
                .ok()
                .and_then(|m| serde_json::from_slice::<Meta>(&m).ok());
            match meta {
                Some(meta) => index.insert(id, meta),
                None => {
                    tracing::info!(upload = %id, "deleting an upload that never finished");
                    std::fs::remove_dir_all(entry.path())?;
                }
            }
        }
        Ok(Files {
            root: root.to_owned(),
            index: Mutex::new(index),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        // A poisoned lock only means a panic elsewhere between two map updates.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes `owner` has stored.
    pub fn used(&self, owner: &str) -> u64 {
        self.index().used.get(owner).copied().unwrap_or(0)
    }

    /// Bytes stored by everyone, and how many files.
    pub fn totals(&self) -> (u64, usize) {
        let index = self.index();
        (index.used.values().sum(), index.by_id.len())
    }

    /// The stored file at `id/name`, if there is one.
    pub fn lookup(&self, id: &str, name: &str) -> Option<Meta> {
        self.index()
            .by_id
            .get(id)
            .filter(|m| m.name == name)
            .cloned()
    }

    /// Where the bytes of `id` are.
    pub fn data_path(&self, id: &str) -> PathBuf {
        self.root.join(id).join(DATA)
    }

    /// Starts storing upload `id`: its folder (whose creation is what makes a second PUT to
    /// the same slot a conflict) and the partial file to stream into.
    pub async fn begin(&self, id: &str) -> Result<tokio::fs::File, BeginError> {
        let dir = self.root.join(id);
        match tokio::fs::create_dir(&dir).await {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(BeginError::Exists),
            r => r?,
        }
        Ok(tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(PARTIAL))
            .await?)
    }

    /// Finishes upload `id`: the partial file becomes the file, then its `meta` is written
    /// and it counts against its owner's quota.
    pub async fn commit(&self, id: &str, mut file: tokio::fs::File, meta: Meta) -> io::Result<()> {
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        let dir = self.root.join(id);
        tokio::fs::rename(dir.join(PARTIAL), dir.join(DATA)).await?;
        let json = serde_json::to_vec(&meta).map_err(io::Error::other)?;
        let tmp = dir.join("meta.part");
        tokio::fs::write(&tmp, json).await?;
        tokio::fs::rename(&tmp, dir.join(META)).await?;
        self.index().insert(id.to_owned(), meta);
        Ok(())
    }

    /// Forgets an upload that did not finish, so that its slot may be used again.
    pub async fn abort(&self, id: &str) {
        if let Err(e) = tokio::fs::remove_dir_all(self.root.join(id)).await {
            tracing::warn!(upload = %id, "cannot delete an unfinished upload: {e}");
        }
    }

    /// Deletes every file whose expiry is before `now` (seconds since the epoch); returns
    /// how many.
    pub async fn sweep(&self, now: u64) -> usize {
        let expired: Vec<String> = self
            .index()
            .by_id
            .iter()
            .filter(|(_, m)| m.expires < now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut deleted = 0;
        for id in expired {
            // Out of the index first: from now on its URL answers 404.
            self.index().remove(&id);
            match tokio::fs::remove_dir_all(self.root.join(&id)).await {
                Ok(()) => deleted += 1,
                Err(e) => tracing::warn!(upload = %id, "cannot delete an expired upload: {e}"),
            }
        }
        deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(owner: &str, size: u64, expires: u64) -> Meta {
        Meta {
            name: "a.txt".into(),
            content_type: "text/plain".into(),
            size,
            owner: owner.into(),
            expires,
        }
    }

    async fn store(files: &Files, id: &str, m: Meta) {
        let mut f = files.begin(id).await.unwrap();
        f.write_all(&vec![b'x'; m.size as usize]).await.unwrap();
        files.commit(id, f, m).await.unwrap();
    }

    #[tokio::test]
    async fn stored_files_count_against_their_owner_and_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::open(dir.path()).unwrap();
        let (a, b) = (new_id(), new_id());
        store(&files, &a, meta("alice@a.test", 3, 100)).await;
        store(&files, &b, meta("alice@a.test", 4, 100)).await;
        assert_eq!(files.used("alice@a.test"), 7);
        assert_eq!(files.used("bob@a.test"), 0);
        assert_eq!(
            files.lookup(&a, "a.txt").map(|m| m.size),
            Some(3),
            "found by id and name"
        );
        assert_eq!(files.lookup(&a, "b.txt"), None);
        assert_eq!(std::fs::read(files.data_path(&a)).unwrap(), b"xxx");
        // An upload under way when the process stopped is deleted at the next start.
        let unfinished = new_id();
        let _partial = files.begin(&unfinished).await.unwrap();
        let files = Files::open(dir.path()).unwrap();
        assert_eq!(files.used("alice@a.test"), 7);
        assert!(!dir.path().join(&unfinished).exists());
    }

    #[tokio::test]
    async fn a_second_upload_to_one_slot_is_a_conflict_until_the_first_is_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::open(dir.path()).unwrap();
        let id = new_id();
        let _first = files.begin(&id).await.unwrap();
        assert!(matches!(files.begin(&id).await, Err(BeginError::Exists)));
        files.abort(&id).await;
        let f = files.begin(&id).await.unwrap();
        files.commit(&id, f, meta("a@a.test", 0, 1)).await.unwrap();
        assert!(matches!(files.begin(&id).await, Err(BeginError::Exists)));
    }

    #[tokio::test]
    async fn the_sweep_deletes_expired_files_and_gives_their_quota_back() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::open(dir.path()).unwrap();
        let (old, new) = (new_id(), new_id());
        store(&files, &old, meta("alice@a.test", 5, 100)).await;
        store(&files, &new, meta("alice@a.test", 2, 200)).await;
        assert_eq!(files.sweep(100).await, 0, "not before its expiry");
        assert_eq!(files.sweep(150).await, 1);
        assert_eq!(files.used("alice@a.test"), 2);
        assert_eq!(files.lookup(&old, "a.txt"), None);
        assert!(!dir.path().join(&old).exists());
        assert!(files.lookup(&new, "a.txt").is_some());
    }

    #[test]
    fn only_slot_ids_name_folders() {
        assert!(is_id(&new_id()));
        for bad in ["", "..", "0123", &"A".repeat(32), &"0".repeat(33)] {
            assert!(!is_id(bad), "{bad}");
        }
    }
}
