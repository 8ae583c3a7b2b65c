//! Workspaces as records: create with validated repositories and class, list, read, update,
//! delete. Running them comes with the runtime; here the desired state is recorded.

use std::time::Duration;

use super::{Actor, Cell, Error, Result, new_ulid};
use crate::domain::entities::Workspace;
use crate::domain::validate::{validate_branch, validate_workspace_name};
use crate::domain::{
    ClassId, Desired, FieldError, Lifecycle, OrgId, Phase, RepoSpec, RepoUrl, Role, UserId,
    WorkspaceId,
};
use crate::store::Reader;

/// What a caller asks for when creating a workspace.
pub struct WorkspaceInput {
    /// Defaults to the caller's only (or first) organization.
    pub org: Option<OrgId>,
    pub name: Option<String>,
    /// (url, branch) pairs; at least one.
    pub repos: Vec<(String, Option<String>)>,
    /// A class id or class name; defaults to the organization's default class.
    pub class: Option<String>,
    pub image: Option<String>,
    pub timeout: Option<Duration>,
    /// Ask for it to run at once (in the same transaction as its creation).
    pub start: bool,
}

#[derive(Default)]
pub struct WorkspacePatch {
    pub name: Option<String>,
    pub class: Option<String>,
    pub image: Option<Option<String>>,
    pub timeout: Option<Duration>,
}

pub struct WorkspacePage {
    pub items: Vec<Workspace>,
    /// Pass back as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

pub const MAX_REPOS: usize = 10;
pub const MAX_PAGE: usize = 500;

fn validate_repos(repos: &[(String, Option<String>)]) -> Result<Vec<RepoSpec>> {
    if repos.is_empty() {
        return Err(FieldError::new("repos", "give at least one git repository URL").into());
    }
    if repos.len() > MAX_REPOS {
        return Err(FieldError::new(
            "repos",
            format!("at most {MAX_REPOS} repositories per workspace"),
        )
        .into());
    }
    let mut out = Vec::with_capacity(repos.len());
    for (i, (url, branch)) in repos.iter().enumerate() {
        let url = RepoUrl::parse(url)
            .map_err(|e| FieldError::new(format!("repos[{i}].url"), e.reason))?;
        let branch = match branch.as_deref().map(str::trim).filter(|b| !b.is_empty()) {
            Some(b) => {
                validate_branch(b)
                    .map_err(|e| FieldError::new(format!("repos[{i}].branch"), e.reason))?;
                Some(b.to_owned())
            }
            None => None,
        };
        out.push(RepoSpec { url, branch });
    }
    Ok(out)
}

fn validate_image(image: Option<String>) -> Result<Option<String>> {
    // Lengths count what was sent, before trimming.
    if image.as_ref().is_some_and(|i| i.chars().count() > 512) {
        return Err(FieldError::new("image", "is longer than 512 characters").into());
    }
    let Some(image) = image.map(|i| i.trim().to_owned()).filter(|i| !i.is_empty()) else {
        return Ok(None);
    };
    let ok = image.len() <= 512
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "./:-_@+".contains(c))
        && !image.starts_with(['.', '-', ':', '/']);
    if !ok {
        return Err(FieldError::new(
            "image",
            "not an image reference like registry.example.com/team/image:tag",
        )
        .into());
    }
    Ok(Some(image))
}

/// A name from the first repository: `https://host/team/app.git` → `app`.
fn default_name(repo: &RepoSpec) -> String {
    let tail = repo
        .url
        .as_str()
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("workspace");
    let tail = tail.strip_suffix(".git").unwrap_or(tail);
    let mut name: String = tail
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name = name
        .trim_matches('-')
        .chars()
        .take(63)
        .collect::<String>()
        .trim_matches('-')
        .to_owned();
    if name.is_empty() {
        "workspace".into()
    } else {
        name
    }
}

/// Whether this process runs as root (then each sandbox gets its own host uid).
/// A field the organization's policy refuses. Too short a timeout is invalid anywhere; a
/// timeout or class the policy does not allow is a conflict with this organization's policy.
fn policy_refusal(e: crate::domain::RuleError) -> FieldError {
    use crate::domain::RuleError;
    match e {
        RuleError::TimeoutTooShort { .. } => FieldError::new("timeout_s", e.to_string()),
        RuleError::ClassNotAllowed { .. } => {
            FieldError::conflict("class", "class_not_allowed", e.to_string())
        }
        _ => FieldError::conflict("timeout_s", "timeout_not_allowed", e.to_string()),
    }
}

/// A workspace name's length as sent, before trimming: the limit a client can check.
fn check_name_length(name: Option<&str>) -> Result<()> {
    if name.is_some_and(|n| n.chars().count() > 63) {
        return Err(FieldError::new("name", "is longer than 63 characters").into());
    }
    Ok(())
}

pub(crate) fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

impl Cell {
    /// The organization a request means: the one named, or the caller's first.
    fn pick_org(&self, actor: &Actor, org: Option<OrgId>) -> Result<OrgId> {
        match org {
            Some(o) => Ok(self.membership(actor, &o)?.org),
            None => self
                .store()
                .read(|tx| tx.memberships_of(&actor.user.id))?
                .into_iter()
                .next()
                .map(|m| m.org)
                .ok_or_else(|| {
                    FieldError::conflict(
                        "org",
                        "no_organization",
                        "you belong to no organization; accept an invitation first",
                    )
                    .into()
                }),
        }
    }

    fn resolve_class(&self, org: &OrgId, class: Option<&str>) -> Result<ClassId> {
        let classes = self.store().read(|tx| tx.classes(org))?;
        let found = match class.map(str::trim).filter(|c| !c.is_empty()) {
            Some(c) => classes
                .iter()
                .find(|k| k.id.as_str() == c || k.spec.name == c),
            None => classes.iter().find(|k| k.is_default).or(classes.first()),
        };
        match (found, class) {
            (Some(k), _) => Ok(k.id.clone()),
            (None, Some(c)) => Err(FieldError::conflict(
                "class",
                "unknown_class",
                format!("no class {c} in this organization"),
            )
            .into()),
            (None, None) => Err(FieldError::conflict(
                "class",
                "no_class",
                "this organization has no workspace classes; an owner must add one",
            )
            .into()),
        }
    }

    pub fn create_workspace(&self, actor: &Actor, input: WorkspaceInput) -> Result<Workspace> {
        check_name_length(input.name.as_deref())?;
        let repos = validate_repos(&input.repos)?;
        let org_id = self.pick_org(actor, input.org)?;
        for (i, r) in repos.iter().enumerate() {
            self.check_file_repo(&org_id, &actor.user.id, &r.url)
                .map_err(|e| match e {
                    Error::Forbidden(m) => FieldError::new(format!("repos[{i}].url"), m).into(),
                    other => other,
                })?;
        }
        let name = match input
            .name
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
        {
            Some(n) => {
                validate_workspace_name(&n)?;
                n
            }
            None => default_name(&repos[0]),
        };
        let image = validate_image(input.image)?;
        let class = self.resolve_class(&org_id, input.class.as_deref())?;
        let org = self
            .store()
            .read(|tx| tx.org(&org_id))?
            .ok_or(Error::NotFound {
                what: "organization",
            })?;
        org.policy.check_class(&class).map_err(policy_refusal)?;
        let timeout = org
            .policy
            .resolve_timeout(input.timeout)
            .map_err(policy_refusal)?;
        let now = self.now();
        let ws = Workspace {
            id: WorkspaceId::from_ulid(new_ulid()),
            org: org_id,
            owner: actor.user.id.clone(),
            name,
            repos,
            class,
            image,
            timeout,
            lifecycle: Lifecycle::new(
                if input.start {
                    Desired::Running
                } else {
                    Desired::Stopped
                },
                now,
            ),
            created_at: now,
            last_activity: now,
            sandbox_uid: None,
            checkout: None,
            git: Vec::new(),
            ports: Vec::new(),
            snapshots: Vec::new(),
            backup: Default::default(),
        };
        let mut ws = ws;
        if !input.start {
            // Nothing to run yet: recorded as stopped at once, so no reconciler pass is needed.
            ws.lifecycle
                .transition(Phase::Stopped, now, Some("created".into()))?;
        }
        let as_root = running_as_root();
        if input.start && self.inner.runtime.is_none() {
            return Err(Error::Conflict {
                code: "no_runtime",
                message: "this cell has no runtime to run workspaces".into(),
            });
        }
        self.store().write(|tx| -> Result<()> {
            if input.start {
                org.policy
                    .check_can_start(super::lifecycle::running_of(tx, &ws.owner, &ws.id)?)?;
            }
            if as_root {
                ws.sandbox_uid = Some(tx.allocate_sandbox_uid()?);
            }
            tx.put_workspace(&ws)?;
            Ok(())
        })?;
        if input.start {
            self.wake_reconciler();
        }
        Ok(ws)
    }

    /// The caller's workspaces, or with `org` set (owners only) every workspace of that organization.
    pub fn list_workspaces(
        &self,
        actor: &Actor,
        org: Option<&OrgId>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<WorkspacePage> {
        let limit = limit.clamp(1, MAX_PAGE);
        if let Some(c) = cursor {
            WorkspaceId::parse(c)
                .map_err(|_| FieldError::new("cursor", "not a cursor returned by this API"))?;
        }
        if let Some(o) = org {
            self.require_owner(actor, o)?;
        }
        let (mut items, orgs) = self.store().read(|tx| {
            let items = match org {
                Some(o) => tx.workspaces_in(o, cursor, limit)?,
                None => tx.workspaces_of(&actor.user.id, cursor, limit)?,
            };
            let orgs: std::collections::HashSet<OrgId> = tx
                .memberships_of(&actor.user.id)?
                .into_iter()
                .map(|m| m.org)
                .collect();
            Ok((items, orgs))
        })?;
        let next_cursor = if items.len() == limit {
            items.last().map(|w| w.id.to_string())
        } else {
            None
        };
        // Workspaces left in organizations the caller was removed from are the owners' now.
        items.retain(|w| orgs.contains(&w.org));
        Ok(WorkspacePage { items, next_cursor })
    }

    /// Wakes after every change to any workspace; see [`crate::store::Store::workspace_changes`].
    pub fn workspace_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store().workspace_changes()
    }

    /// Whether the workspace's record is still there (for whoever: callers check access).
    pub fn workspace_exists(&self, id: &WorkspaceId) -> Result<bool> {
        Ok(self.store().read(|tx| tx.workspace(id))?.is_some())
    }

    /// A workspace its owner may see while a member of its organization; owners of the
    /// organization may see it too. Someone removed from the organization sees nothing of it.
    pub fn get_workspace(&self, actor: &Actor, id: &WorkspaceId) -> Result<Workspace> {
        let (ws, membership) = self.store().read(|tx| {
            let Some(ws) = tx.workspace(id)? else {
                return Ok((None, None));
            };
            let m = tx.membership(&ws.org, &actor.user.id)?;
            Ok((Some(ws), m))
        })?;
        let ws = ws.ok_or(Error::NotFound { what: "workspace" })?;
        match membership {
            Some(_) if ws.owner == actor.user.id => Ok(ws),
            Some(m) if m.role == Role::Owner => Ok(ws),
            // Not found rather than forbidden: members learn nothing about others' workspaces.
            _ => Err(Error::NotFound { what: "workspace" }),
        }
    }

    /// The workspace, if the actor may see it and owns it ("only the workspace's owner may
    /// {doing}" otherwise).
    pub(crate) fn owners_workspace(
        &self,
        actor: &Actor,
        id: &WorkspaceId,
        doing: &str,
    ) -> Result<Workspace> {
        let ws = self.get_workspace(actor, id)?;
        if ws.owner != actor.user.id {
            return Err(Error::Forbidden(format!(
                "only the workspace's owner may {doing}"
            )));
        }
        Ok(ws)
    }

    pub fn update_workspace(
        &self,
        actor: &Actor,
        id: &WorkspaceId,
        patch: WorkspacePatch,
    ) -> Result<Workspace> {
        let mut ws = self.owners_workspace(actor, id, "change it")?;
        if ws.lifecycle.desired == Desired::Deleted {
            return Err(Error::NotFound { what: "workspace" });
        }
        let policy = self
            .store()
            .read(|tx| tx.org(&ws.org))?
            .ok_or(Error::NotFound {
                what: "organization",
            })?
            .policy;
        check_name_length(patch.name.as_deref())?;
        if let Some(n) = patch.name {
            validate_workspace_name(n.trim())?;
            ws.name = n.trim().to_owned();
        }
        if let Some(c) = patch.class {
            let class = self.resolve_class(&ws.org, Some(&c))?;
            policy.check_class(&class).map_err(policy_refusal)?;
            ws.class = class;
        }
        if let Some(i) = patch.image {
            ws.image = validate_image(i)?;
        }
        if let Some(t) = patch.timeout {
            ws.timeout = policy.resolve_timeout(Some(t)).map_err(policy_refusal)?;
        }
        self.store().write(|tx| tx.put_workspace(&ws))?;
        Ok(ws)
    }

    /// Gives a workspace to another member of its organization (owners of the organization).
    /// Only a stopped workspace moves, so nothing its previous owner left running carries on
    /// under the new one; its files come as they are.
    pub fn transfer_workspace(
        &self,
        actor: &Actor,
        id: &WorkspaceId,
        to: &UserId,
    ) -> Result<Workspace> {
        let ws = self.get_workspace(actor, id)?;
        self.require_owner(actor, &ws.org)?;
        let ws = self.store().write(|tx| -> Result<Workspace> {
            let mut ws = tx
                .workspace(id)?
                .ok_or(Error::NotFound { what: "workspace" })?;
            if tx.membership(&ws.org, to)?.is_none() {
                return Err(FieldError::conflict(
                    "owner",
                    "not_a_member",
                    "not a member of the workspace's organization",
                )
                .into());
            }
            if ws.lifecycle.desired == Desired::Deleted
                || !matches!(ws.lifecycle.phase, Phase::Stopped | Phase::Failed)
            {
                return Err(Error::Conflict {
                    code: "not_stopped",
                    message: format!(
                        "the workspace is {}; stop it before giving it to someone else",
                        ws.lifecycle.phase.as_str()
                    ),
                });
            }
            if ws.lifecycle.desired == Desired::Running {
                ws.lifecycle.set_desired(Desired::Stopped)?;
            }
            ws.owner = to.clone();
            tx.put_workspace(&ws)?;
            Ok(ws)
        })?;
        self.access_changed();
        tracing::info!(workspace = %ws.id, to = %to, by = %actor.user.email, "workspace given to another member");
        Ok(ws)
    }

    /// Deletes a workspace: the owner, or an owner of its organization. Without a runtime
    /// holding it, the record goes at once.
    pub fn delete_workspace(&self, actor: &Actor, id: &WorkspaceId) -> Result<()> {
        let mut ws = self.get_workspace(actor, id)?;
        let now = self.now();
        ws.lifecycle.set_desired(Desired::Deleted)?;
        if ws.lifecycle.is_active() || ws.backup.pending.is_some() {
            // The reconciler stops it first (or waits for its owed backup), then removes it.
            self.store().write(|tx| tx.put_workspace(&ws))?;
            self.wake_reconciler();
            return Ok(());
        }
        self.remove_files(&ws.id)?;
        if ws.lifecycle.phase != Phase::Deleted {
            ws.lifecycle
                .transition(Phase::Deleted, now, Some("deleted by its owner".into()))?;
        }
        self.store()
            .write(|tx| tx.purge_workspace(&ws, now, "deleted by its owner"))?;
        tracing::info!(workspace = %ws.id, by = %actor.user.email, "deleted workspace");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_come_from_the_first_repository() {
        let r = |u: &str| RepoSpec {
            url: RepoUrl::parse(u).unwrap(),
            branch: None,
        };
        assert_eq!(
            default_name(&r("https://example.com/team/My_App.git")),
            "my-app"
        );
        assert_eq!(default_name(&r("git@example.com:team/tool.git")), "tool");
        assert_eq!(default_name(&r("file:///srv/git/x/")), "x");
    }

    #[test]
    fn repos_are_validated_with_their_index() {
        let err = validate_repos(&[
            ("https://example.com/a".into(), None),
            ("ftp://x/y".into(), None),
        ])
        .err()
        .unwrap();
        match err {
            Error::Invalid(f) => assert_eq!(f.field, "repos[1].url"),
            e => panic!("{e}"),
        }
        assert!(validate_repos(&[]).is_err());
        let err = validate_repos(&[("https://example.com/a".into(), Some("bad..branch".into()))])
            .err()
            .unwrap();
        assert!(matches!(err, Error::Invalid(f) if f.field == "repos[0].branch"));
    }
}
