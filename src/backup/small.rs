//! Small files packed ahead of rustic_core's archiver.
//!
//! rustic_core 0.13 hands every blob through about eight threads over rendezvous channels and
//! builds a new zstd context for each one; for a workspace of many small files that per-blob
//! cost, not reading or compressing, was most of a full backup (0.68× stock restic on 100,000
//! tiny files). Here the files that are one blob whatever the chunker (smaller than its
//! minimum chunk) are read, hashed, compressed and encrypted on a few worker threads, each with
//! its own zstd context, into packs and one index file in restic's format (its design
//! document: pack = encrypted blobs, encrypted header, header length). rustic then walks the
//! workspace as before, finds those blobs in the index and only hashes the files again; it
//! still writes every tree, the snapshot and the larger files.
//!
//! Only a shortcut: a file skipped here (gone, grown, a link by now, unreadable) is rustic's as
//! before, and rustic stores whatever it reads. Files are read beneath the workspace directory
//! without following any link.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use aes256ctr_poly1305aes::aead::AeadInPlace;
use bytes::Bytes;
use rand::RngCore;
use rustic_core::{FileType, Id, WriteBackend, repofile::MasterKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A blob id: the SHA-256 of the file's bytes.
pub type BlobId = [u8; 32];

/// The most blobs in one pack (rustic_core's own limit).
const MAX_BLOBS: usize = 10_000;

/// What [`pack`] stored.
#[derive(Debug, Default)]
pub struct Packed {
    /// Blobs written (files whose contents the store did not hold).
    pub blobs: u64,
    /// Their bytes before compression.
    pub bytes: u64,
    /// Packs written.
    pub packs: u64,
}

/// What to pack, and where.
pub struct Job<'a> {
    pub backend: &'a dyn WriteBackend,
    pub key: &'a MasterKey,
    /// The store's zstd level (`None`: a version 1 store, nothing compressed).
    pub zstd: Option<i32>,
    /// Target pack size in bytes.
    pub pack_size: usize,
    /// The workspace directory the paths are relative to.
    pub dir: &'a Path,
    /// Files smaller than the minimum chunk (larger ones are skipped when read).
    pub files: &'a [PathBuf],
    pub below: u64,
    /// Whether the store already holds a data blob.
    pub known: &'a (dyn Fn(&BlobId) -> bool + Sync),
}

/// Packs the files' contents the store does not hold yet, then writes one index file naming
/// every pack written. Packs go out as they fill; the index only once all of them are stored.
pub fn pack(job: &Job<'_>) -> Result<Packed, String> {
    let cipher = cipher(job.key)?;
    let root =
        crate::beneath::Dir::open(job.dir).map_err(|e| format!("{}: {e}", job.dir.display()))?;
    let next = AtomicUsize::new(0);
    let claimed = Mutex::new(HashSet::<BlobId>::new());
    let written = Mutex::new(Vec::<IndexPack>::new());
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4)
        .min(job.files.len().max(1));
    let totals: Vec<Result<Packed, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut worker = Worker::new(job, &cipher)?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(rel) = job.files.get(i) else { break };
                        // Anything but a regular file within the size (or a read error) is left
                        // to rustic, which reads the workspace itself anyway.
                        let Ok(Some(data)) =
                            root.read_file(rel, job.below.saturating_sub(1), false)
                        else {
                            continue;
                        };
                        if data.is_empty() {
                            continue;
                        }
                        let id: BlobId = Sha256::digest(&data).into();
                        if (job.known)(&id) || !lock(&claimed).insert(id) {
                            continue;
                        }
                        worker.add(id, &data)?;
                        if worker.full() {
                            let done = worker.finish()?;
                            lock(&written).push(done);
                        }
                    }
                    if !worker.entries.is_empty() {
                        let done = worker.finish()?;
                        lock(&written).push(done);
                    }
                    Ok(worker.totals)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a packing thread panicked".into()))
            })
            .collect()
    });
    let mut packed = Packed::default();
    for t in totals {
        let t = t?;
        packed.blobs += t.blobs;
        packed.bytes += t.bytes;
        packed.packs += t.packs;
    }
    let packs = written.into_inner().unwrap_or_else(|p| p.into_inner());
    if !packs.is_empty() {
        write_index(job, &cipher, &packs)?;
    }
    Ok(packed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The store's data key: AES-256 key, then Poly1305-AES `k` and `r`, as restic lays it out.
fn cipher(key: &MasterKey) -> Result<Aes256CtrPoly1305Aes, String> {
    if key.encrypt.len() != 32 || key.mac.k.len() != 16 || key.mac.r.len() != 16 {
        return Err("the store's master key has an unexpected shape".into());
    }
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(&key.encrypt);
    bytes[32..48].copy_from_slice(&key.mac.k);
    bytes[48..].copy_from_slice(&key.mac.r);
    Ok(Aes256CtrPoly1305Aes::new(
        &aes256ctr_poly1305aes::Key::from(bytes),
    ))
}

/// Restic's encryption of one blob or file: a random 16-byte nonce, AES-256-CTR, then the
/// Poly1305-AES tag of the ciphertext.
fn seal(cipher: &Aes256CtrPoly1305Aes, plain: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut nonce = [0u8; 16];
    rand::rng().fill_bytes(&mut nonce);
    let start = out.len();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = cipher
        .encrypt_in_place_detached(&nonce.into(), &[], &mut out[start + 16..])
        .map_err(|e| format!("encryption failed: {e}"))?;
    out.extend_from_slice(&tag);
    Ok(())
}

struct Entry {
    id: BlobId,
    offset: u32,
    length: u32,
    /// Set when the blob is compressed.
    uncompressed: Option<u32>,
}

/// One thread's pack under construction.
struct Worker<'a> {
    job: &'a Job<'a>,
    cipher: &'a Aes256CtrPoly1305Aes,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    data: Vec<u8>,
    entries: Vec<Entry>,
    totals: Packed,
}

impl<'a> Worker<'a> {
    fn new(job: &'a Job<'a>, cipher: &'a Aes256CtrPoly1305Aes) -> Result<Worker<'a>, String> {
        let zstd = job
            .zstd
            .map(zstd::bulk::Compressor::new)
            .transpose()
            .map_err(|e| format!("zstd: {e}"))?;
        Ok(Worker {
            job,
            cipher,
            zstd,
            data: Vec::new(),
            entries: Vec::new(),
            totals: Packed::default(),
        })
    }

    fn add(&mut self, id: BlobId, plain: &[u8]) -> Result<(), String> {
        let compressed = match &mut self.zstd {
            Some(z) => Some(z.compress(plain).map_err(|e| format!("zstd: {e}"))?),
            None => None,
        };
        let len = |n: usize| u32::try_from(n).map_err(|_| "a blob over 4 GiB".to_string());
        let offset = len(self.data.len())?;
        // Kept compressed only when that is smaller, as version 2 stores allow per blob.
        let uncompressed = match &compressed {
            Some(c) if c.len() < plain.len() => {
                seal(self.cipher, c, &mut self.data)?;
                Some(len(plain.len())?)
            }
            _ => {
                seal(self.cipher, plain, &mut self.data)?;
                None
            }
        };
        self.entries.push(Entry {
            id,
            offset,
            length: len(self.data.len())? - offset,
            uncompressed,
        });
        self.totals.blobs += 1;
        self.totals.bytes += plain.len() as u64;
        Ok(())
    }

    fn full(&self) -> bool {
        self.data.len() >= self.job.pack_size || self.entries.len() >= MAX_BLOBS
    }

    /// Seals the header, stores the pack under the hash of its bytes and starts a new one.
    fn finish(&mut self) -> Result<IndexPack, String> {
        let mut header = Vec::with_capacity(self.entries.len() * 41);
        for e in &self.entries {
            match e.uncompressed {
                Some(u) => {
                    header.push(2);
                    header.extend_from_slice(&e.length.to_le_bytes());
                    header.extend_from_slice(&u.to_le_bytes());
                }
                None => {
                    header.push(0);
                    header.extend_from_slice(&e.length.to_le_bytes());
                }
            }
            header.extend_from_slice(&e.id);
        }
        let mut data = std::mem::take(&mut self.data);
        let before = data.len();
        seal(self.cipher, &header, &mut data)?;
        let header_len = u32::try_from(data.len() - before).map_err(|e| e.to_string())?;
        data.extend_from_slice(&header_len.to_le_bytes());
        let id = hex::encode(Sha256::digest(&data));
        let file_id: Id = id.parse().map_err(|e| format!("{e}"))?;
        self.job
            .backend
            .write_bytes(FileType::Pack, &file_id, false, Bytes::from(data).into())
            .map_err(|e| format!("writing pack {id}: {e}"))?;
        self.totals.packs += 1;
        let blobs = std::mem::take(&mut self.entries)
            .into_iter()
            .map(|e| IndexBlob {
                id: hex::encode(e.id),
                tpe: "data",
                offset: e.offset,
                length: e.length,
                uncompressed_length: e.uncompressed,
            })
            .collect();
        Ok(IndexPack { id, blobs })
    }
}

/// Restic's index file: which blobs each pack holds, where.
#[derive(Serialize)]
struct IndexFile<'a> {
    packs: &'a [IndexPack],
}

#[derive(Serialize)]
struct IndexPack {
    id: String,
    blobs: Vec<IndexBlob>,
}

#[derive(Serialize)]
struct IndexBlob {
    id: String,
    #[serde(rename = "type")]
    tpe: &'static str,
    offset: u32,
    length: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    uncompressed_length: Option<u32>,
}

/// Writes the index file, compressed in a version 2 store (a leading version byte 2, then
/// zstd) and encrypted, under the hash of its encrypted bytes.
fn write_index(
    job: &Job<'_>,
    cipher: &Aes256CtrPoly1305Aes,
    packs: &[IndexPack],
) -> Result<(), String> {
    let json = serde_json::to_vec(&IndexFile { packs }).map_err(|e| e.to_string())?;
    let plain = match job.zstd {
        Some(level) => {
            let mut v = vec![2u8];
            v.extend(zstd::bulk::compress(&json, level).map_err(|e| format!("zstd: {e}"))?);
            v
        }
        None => json,
    };
    let mut sealed = Vec::with_capacity(plain.len() + 32);
    seal(cipher, &plain, &mut sealed)?;
    let id = hex::encode(Sha256::digest(&sealed));
    let file_id: Id = id.parse().map_err(|e| format!("{e}"))?;
    job.backend
        .write_bytes(FileType::Index, &file_id, true, Bytes::from(sealed).into())
        .map_err(|e| format!("writing index {id}: {e}"))
}
