//! Schema versions and the ordered migrations between them. Each migration runs in its own
//! write transaction together with the bump of the stored schema version, so a crash leaves
//! the database at either the old or the new version, never in between.

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::records::{PhaseRecord, RepoRecord, WorkspaceRecord};
use super::{
    ALL_TABLES, META, Record, Result, SCHEMA_VERSION, StoreError, WORKSPACES, decode, encode,
};

const SCHEMA_KEY: &str = "schema_version";

struct Migration {
    /// The schema version this migration produces.
    to: u32,
    run: fn(&WriteTransaction) -> Result<()>,
}

/// Ordered by `to`; the first schema is 1.
const MIGRATIONS: &[Migration] = &[Migration {
    to: 2,
    run: v1_to_v2,
}];

pub(super) fn stored_version(tx: &WriteTransaction) -> Result<Option<u32>> {
    let meta = tx.open_table(META)?;
    let v = meta.get(SCHEMA_KEY)?.map(|v| {
        let b = v.value();
        let mut four = [0u8; 4];
        for (i, x) in b.iter().take(4).enumerate() {
            four[i] = *x;
        }
        u32::from_le_bytes(four)
    });
    Ok(v)
}

fn set_version(tx: &WriteTransaction, v: u32) -> Result<()> {
    tx.open_table(META)?
        .insert(SCHEMA_KEY, v.to_le_bytes().as_slice())?;
    Ok(())
}

/// Brings the database to [`SCHEMA_VERSION`]: creates a fresh one, or runs the pending migrations.
pub(super) fn run(db: &redb::Database) -> Result<()> {
    let tx = db.begin_write()?;
    let found = stored_version(&tx)?;
    match found {
        None => {
            for def in ALL_TABLES {
                tx.open_table(*def)?;
            }
            set_version(&tx, SCHEMA_VERSION)?;
            tx.commit()?;
            return Ok(());
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::TooNew {
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
        Some(_) => tx.abort()?,
    }
    let mut current = found.unwrap_or(SCHEMA_VERSION);
    let start = current;
    for m in MIGRATIONS.iter().filter(|m| m.to > start) {
        let tx = db.begin_write()?;
        for def in ALL_TABLES {
            tx.open_table(*def)?;
        }
        (m.run)(&tx).map_err(|e| StoreError::Migration {
            to: m.to,
            reason: e.to_string(),
        })?;
        set_version(&tx, m.to)?;
        tx.commit()?;
        tracing::info!(from = current, to = m.to, "migrated database schema");
        current = m.to;
    }
    Ok(())
}

/// Workspace record version 1: one repository per workspace.
#[derive(Serialize, Deserialize)]
pub(crate) struct WorkspaceRecordV1 {
    pub id: String,
    pub org: String,
    pub owner: String,
    pub name: String,
    pub repo_url: String,
    pub branch: Option<String>,
    pub class: String,
    pub image: Option<String>,
    pub timeout_s: u64,
    pub desired: String,
    pub phase: String,
    pub history: Vec<PhaseRecord>,
    pub created_at: i64,
    pub last_activity: i64,
}

/// Schema 2 lets a workspace hold several repositories.
fn v1_to_v2(tx: &WriteTransaction) -> Result<()> {
    let mut table = tx.open_table(WORKSPACES)?;
    let mut rewritten = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let bytes = v.value();
        if bytes.len() >= 2 && u16::from_le_bytes([bytes[0], bytes[1]]) == WorkspaceRecord::VERSION
        {
            continue;
        }
        let old: WorkspaceRecordV1 = decode("workspaces", k.value(), 1, bytes)?;
        let new = WorkspaceRecord {
            id: old.id,
            org: old.org,
            owner: old.owner,
            name: old.name,
            repos: vec![RepoRecord {
                url: old.repo_url,
                branch: old.branch,
            }],
            class: old.class,
            image: old.image,
            timeout_s: old.timeout_s,
            desired: old.desired,
            phase: old.phase,
            history: old.history,
            created_at: old.created_at,
            last_activity: old.last_activity,
            sandbox_uid: None,
            checkout: None,
            git: Vec::new(),
            ports: Vec::new(),
            snapshots: Vec::new(),
            backup: Default::default(),
        };
        rewritten.push((k.value().to_owned(), encode(WorkspaceRecord::VERSION, &new)));
    }
    for (k, v) in rewritten {
        table.insert(k.as_str(), v.as_slice())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Phase, WorkspaceId};
    use crate::store::{Reader, Store, WS_BY_OWNER};

    /// Writes a database as schema 1 wrote it: one workspace with a single repository.
    fn write_schema_v1(path: &std::path::Path, ws_id: &str) {
        let db = redb::Database::create(path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert(SCHEMA_KEY, 1u32.to_le_bytes().as_slice())
            .unwrap();
        let rec = WorkspaceRecordV1 {
            id: ws_id.into(),
            org: "org_01jd0000000000000000000000".into(),
            owner: "usr_01jd0000000000000000000000".into(),
            name: "legacy".into(),
            repo_url: "https://example.com/team/app.git".into(),
            branch: Some("main".into()),
            class: "cls_01jd0000000000000000000000".into(),
            image: None,
            timeout_s: 1800,
            desired: "stopped".into(),
            phase: "stopped".into(),
            history: vec![PhaseRecord {
                phase: "stopped".into(),
                at: 1_700_000_000_000,
                message: None,
            }],
            created_at: 1_700_000_000_000,
            last_activity: 1_700_000_000_000,
        };
        tx.open_table(WORKSPACES)
            .unwrap()
            .insert(ws_id, encode(1, &rec).as_slice())
            .unwrap();
        tx.open_table(WS_BY_OWNER)
            .unwrap()
            .insert(
                format!("usr_01jd0000000000000000000000/{ws_id}").as_str(),
                b"".as_slice(),
            )
            .unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn schema_1_database_is_migrated_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let ws = "ws_01jd0000000000000000000001";
        write_schema_v1(&path, ws);

        let store = Store::open(&path).unwrap();
        let w = store
            .read(|tx| tx.workspace(&WorkspaceId::parse(ws).unwrap()))
            .unwrap()
            .unwrap();
        assert_eq!(w.name, "legacy");
        assert_eq!(w.repos.len(), 1);
        assert_eq!(w.repos[0].url.as_str(), "https://example.com/team/app.git");
        assert_eq!(w.repos[0].branch.as_deref(), Some("main"));
        assert_eq!(w.lifecycle.phase, Phase::Stopped);
        assert_eq!(w.timeout.as_secs(), 1800);
        drop(store);

        // The version was bumped, and opening again is a no-op.
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        assert_eq!(stored_version(&tx).unwrap(), Some(SCHEMA_VERSION));
        tx.abort().unwrap();
        drop(db);
        assert!(Store::open(&path).is_ok());
    }

    #[test]
    fn newer_database_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let db = redb::Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            set_version(&tx, SCHEMA_VERSION + 1).unwrap();
            tx.commit().unwrap();
        }
        let err = Store::open(&path).err().unwrap();
        assert!(
            matches!(err, StoreError::TooNew { found, .. } if found == SCHEMA_VERSION + 1),
            "{err}"
        );
        assert!(err.to_string().contains("newer"), "{err}");
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        assert_eq!(stored_version(&tx).unwrap(), Some(SCHEMA_VERSION + 1));
    }

    #[test]
    fn fresh_database_gets_current_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        drop(Store::open(&path).unwrap());
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        assert_eq!(stored_version(&tx).unwrap(), Some(SCHEMA_VERSION));
    }
}
