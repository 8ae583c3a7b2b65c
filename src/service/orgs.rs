//! Organizations: members and roles, invitations, workspace classes and policies. Owners
//! change all of it; members only see the organization's name and the classes they may use.

use std::time::Duration;

use super::auth::{hash_password, hash_secret, new_secret};
use super::{Actor, Cell, Error, LoginOutcome, Result, new_ulid};
use crate::domain::entities::{Class, Invitation, Membership, Org, User};
use crate::domain::validate::{validate_display_name, validate_email, validate_password};
use crate::domain::{ClassId, ClassSpec, FieldError, InvitationId, OrgId, Policy, Role, UserId};
use crate::store::Reader;

pub struct InvitationOutcome {
    pub invitation: Invitation,
    /// The one-time link to hand to the invitee.
    pub url: String,
}

pub struct ClassInput {
    pub spec: ClassSpec,
    pub is_default: bool,
}

/// Changes to a policy; absent fields keep their value.
#[derive(Default)]
pub struct PolicyPatch {
    pub default_timeout: Option<Duration>,
    pub max_timeout: Option<Duration>,
    pub users_can_extend: Option<bool>,
    pub max_lifetime: Option<Duration>,
    pub allowed_classes: Option<Vec<ClassId>>,
    pub max_running_per_user: Option<u32>,
    pub backup_keep_last: Option<u32>,
    pub backup_keep_within: Option<Duration>,
    pub deleted_backup_grace: Option<Duration>,
    pub dormancy: Option<Option<Duration>>,
    pub outbound_network: Option<bool>,
    pub backup_home: Option<bool>,
}

/// Someone accepting an invitation without an account yet.
pub struct Signup {
    pub email: String,
    pub name: String,
    pub password: String,
}

impl Cell {
    /// The organizations the caller belongs to, with the caller's role in each.
    pub fn list_orgs(&self, actor: &Actor) -> Result<Vec<(Org, Role)>> {
        Ok(self.store().read(|tx| {
            let mut out = Vec::new();
            for m in tx.memberships_of(&actor.user.id)? {
                if let Some(o) = tx.org(&m.org)? {
                    out.push((o, m.role));
                }
            }
            Ok(out)
        })?)
    }

    pub fn get_org(&self, actor: &Actor, id: &OrgId) -> Result<(Org, Role)> {
        let m = self.membership(actor, id)?;
        let org = self.store().read(|tx| tx.org(id))?.ok_or(Error::NotFound {
            what: "organization",
        })?;
        Ok((org, m.role))
    }

    /// Creates an organization with the caller as its owner: cell administrators, and anyone
    /// when the operator allows it (`auth.members_create_orgs`).
    pub fn create_org(&self, actor: &Actor, name: &str) -> Result<Org> {
        if !self.config().auth.members_create_orgs {
            self.require_admin(actor).map_err(|_| {
                Error::Forbidden(
                    "only cell administrators may create organizations on this cell".into(),
                )
            })?;
        }
        let now = self.now();
        let org = Org {
            id: OrgId::from_ulid(new_ulid()),
            name: validate_display_name(name)?,
            policy: Policy::default(),
            created_at: now,
        };
        self.store().write(|tx| {
            tx.put_org(&org)?;
            tx.put_membership(&Membership {
                org: org.id.clone(),
                user: actor.user.id.clone(),
                role: Role::Owner,
                since: now,
            })
        })?;
        Ok(org)
    }

    pub fn rename_org(&self, actor: &Actor, id: &OrgId, name: &str) -> Result<Org> {
        self.require_owner(actor, id)?;
        let name = validate_display_name(name)?;
        self.store().write(|tx| -> Result<Org> {
            let mut org = tx.org(id)?.ok_or(Error::NotFound {
                what: "organization",
            })?;
            org.name = name;
            tx.put_org(&org)?;
            Ok(org)
        })
    }

    /// The organization's deleted workspaces, newest first (owners): each with the git state it
    /// had when it went, recorded before anything was deleted.
    pub fn deleted_workspaces(
        &self,
        actor: &Actor,
        org: &OrgId,
    ) -> Result<Vec<crate::domain::entities::DeletedWorkspace>> {
        self.require_owner(actor, org)?;
        let mut gone: Vec<_> = self
            .store()
            .read(|tx| tx.deleted_workspaces())?
            .into_iter()
            .filter(|d| d.org == *org)
            .collect();
        gone.sort_by_key(|d| std::cmp::Reverse(d.deleted_at));
        Ok(gone)
    }

    pub fn list_members(&self, actor: &Actor, org: &OrgId) -> Result<Vec<(Membership, User)>> {
        self.require_owner(actor, org)?;
        Ok(self.store().read(|tx| {
            let mut out = Vec::new();
            for m in tx.members(org)? {
                if let Some(u) = tx.user(&m.user)? {
                    out.push((m, u));
                }
            }
            Ok(out)
        })?)
    }

    pub fn set_role(
        &self,
        actor: &Actor,
        org: &OrgId,
        user: &UserId,
        role: Role,
    ) -> Result<Membership> {
        self.require_owner(actor, org)?;
        self.store()
            .write(|tx| -> Result<Membership> {
                let mut m = tx
                    .membership(org, user)?
                    .ok_or(Error::NotFound { what: "member" })?;
                if m.role == Role::Owner && role != Role::Owner {
                    ensure_other_owner(tx, org, user)?;
                }
                m.role = role;
                tx.put_membership(&m)?;
                Ok(m)
            })
            .inspect(|_| self.access_changed())
    }

    /// Removes a member, and with it all of their access at once: their running workspaces in
    /// the organization stop (snapshotted first, files kept), and their open terminals, event
    /// streams and port connections close. The workspaces stay, for the organization's owners
    /// to delete or give to another member ([`Cell::transfer_workspace`]). Returns how many
    /// workspaces were stopped.
    pub fn remove_member(&self, actor: &Actor, org: &OrgId, user: &UserId) -> Result<usize> {
        self.require_owner(actor, org)?;
        let stopped = self.store().write(|tx| -> Result<usize> {
            let m = tx
                .membership(org, user)?
                .ok_or(Error::NotFound { what: "member" })?;
            if m.role == Role::Owner {
                ensure_other_owner(tx, org, user)?;
            }
            tx.delete_membership(org, user)?;
            let mut stopped = 0;
            let mut cursor: Option<String> = None;
            loop {
                let page = tx.workspaces_of(user, cursor.as_deref(), 500)?;
                for mut ws in page.iter().filter(|w| w.org == *org).cloned() {
                    if ws.lifecycle.desired == crate::domain::Desired::Running {
                        ws.lifecycle.set_desired(crate::domain::Desired::Stopped)?;
                        tx.put_workspace(&ws)?;
                        stopped += 1;
                    }
                }
                match page.last() {
                    Some(last) if page.len() == 500 => cursor = Some(last.id.to_string()),
                    _ => break,
                }
            }
            Ok(stopped)
        })?;
        self.access_changed();
        if stopped > 0 {
            self.wake_reconciler();
        }
        tracing::info!(%org, %user, by = %actor.user.email, stopped, "removed member");
        Ok(stopped)
    }

    pub fn create_invitation(
        &self,
        actor: &Actor,
        org: &OrgId,
        role: Role,
    ) -> Result<InvitationOutcome> {
        self.require_owner(actor, org)?;
        let now = self.now();
        let secret = new_secret("dci_");
        let invitation = Invitation {
            id: InvitationId::from_ulid(new_ulid()),
            org: org.clone(),
            role,
            created_by: actor.user.id.clone(),
            created_at: now,
            expires_at: now + self.config().auth.invitation_ttl,
        };
        self.store()
            .write(|tx| tx.put_invitation(&hash_secret(&secret), &invitation))?;
        Ok(InvitationOutcome {
            invitation,
            url: self.link(&format!("invite/{secret}")),
        })
    }

    pub fn list_invitations(&self, actor: &Actor, org: &OrgId) -> Result<Vec<Invitation>> {
        self.require_owner(actor, org)?;
        Ok(self
            .store()
            .read(|tx| tx.invitations(org))?
            .into_iter()
            .map(|(_, i)| i)
            .collect())
    }

    pub fn revoke_invitation(&self, actor: &Actor, org: &OrgId, id: &InvitationId) -> Result<()> {
        self.require_owner(actor, org)?;
        self.store().write(|tx| -> Result<()> {
            let hash = tx
                .invitation_hash(org, id)?
                .ok_or(Error::NotFound { what: "invitation" })?;
            tx.delete_invitation(&hash)?;
            Ok(())
        })
    }

    /// Looks at an invitation without using it (for the page that asks the invitee to sign up).
    pub fn peek_invitation(&self, secret: &str) -> Result<(Invitation, Org)> {
        let now = self.now();
        self.store()
            .read(|tx| {
                let Some(i) = tx.invitation(&hash_secret(secret))? else {
                    return Ok(None);
                };
                if i.expires_at <= now {
                    return Ok(None);
                }
                Ok(tx.org(&i.org)?.map(|o| (i, o)))
            })?
            .ok_or(Error::BadLink)
    }

    /// Uses an invitation: a signed-in caller joins the organization; otherwise a new account is
    /// created from `signup`. Returns a session for a new account.
    pub async fn accept_invitation(
        &self,
        secret: &str,
        actor: Option<&Actor>,
        signup: Option<Signup>,
    ) -> Result<(Membership, Option<LoginOutcome>)> {
        let hash = hash_secret(secret);
        self.peek_invitation(secret)?;
        let now = self.now();
        let new_user = match (actor, signup) {
            (Some(_), _) => None,
            (None, Some(s)) => {
                let email = validate_email(&s.email)?;
                let name = validate_display_name(&s.name)?;
                validate_password(&s.password)?;
                let p = s.password;
                let password_hash = tokio::task::spawn_blocking(move || hash_password(&p))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))??;
                Some(User {
                    id: UserId::from_ulid(new_ulid()),
                    email,
                    name,
                    password_hash: Some(password_hash),
                    is_admin: false,
                    created_at: now,
                })
            }
            (None, None) => return Err(Error::Unauthenticated),
        };
        let user_id = actor
            .map(|a| a.user.id.clone())
            .or_else(|| new_user.as_ref().map(|u| u.id.clone()))
            .ok_or(Error::Unauthenticated)?;
        let membership = self.store().write(|tx| -> Result<Membership> {
            let inv = tx.invitation(&hash)?.ok_or(Error::BadLink)?;
            if inv.expires_at <= now {
                return Err(Error::BadLink);
            }
            if let Some(u) = &new_user {
                if tx.user_by_email(&u.email)?.is_some() {
                    return Err(Error::Conflict {
                        code: "email_taken",
                        message: format!(
                            "{} already has an account; sign in and open the link again",
                            u.email
                        ),
                    });
                }
                tx.put_user(u)?;
            }
            if let Some(existing) = tx.membership(&inv.org, &user_id)? {
                tx.delete_invitation(&hash)?;
                return Ok(existing);
            }
            let m = Membership {
                org: inv.org.clone(),
                user: user_id.clone(),
                role: inv.role,
                since: now,
            };
            tx.put_membership(&m)?;
            tx.delete_invitation(&hash)?;
            Ok(m)
        })?;
        let session = match new_user {
            Some(u) => Some(self.new_session_for(u)?),
            None => None,
        };
        Ok((membership, session))
    }

    /// The largest class an organization may define: `workspace.class_max_*`, each defaulting
    /// to the host's capacity (its CPUs, its memory, the data directory's filesystem).
    pub fn class_limits(&self) -> crate::domain::ClassLimits {
        let w = &self.config().workspace;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let memory = rustix::system::sysinfo();
        let disk = rustix::fs::statvfs(&self.config().data_dir)
            .map(|fs| fs.f_blocks.saturating_mul(fs.f_frsize))
            .unwrap_or(u64::MAX);
        crate::domain::ClassLimits {
            cpu_millis: w.class_max_cpu_millis.unwrap_or(cpus.saturating_mul(1000)),
            memory_bytes: w
                .class_max_memory_bytes
                .unwrap_or((memory.totalram as u64).saturating_mul(u64::from(memory.mem_unit))),
            disk_bytes: w.class_max_disk_bytes.unwrap_or(disk),
        }
    }

    /// Classes of an organization: owners see all, members only the allowed ones.
    /// The classes a new workspace may use: those the policy allows, owners included.
    pub fn usable_classes(&self, actor: &Actor, org: &OrgId) -> Result<Vec<Class>> {
        let policy = self
            .store()
            .read(|tx| tx.org(org))?
            .ok_or(Error::NotFound {
                what: "organization",
            })?
            .policy;
        Ok(self
            .list_classes(actor, org)?
            .into_iter()
            .filter(|c| policy.check_class(&c.id).is_ok())
            .collect())
    }

    pub fn list_classes(&self, actor: &Actor, org: &OrgId) -> Result<Vec<Class>> {
        let m = self.membership(actor, org)?;
        let (classes, policy) = self
            .store()
            .read(|tx| Ok((tx.classes(org)?, tx.org(org)?.map(|o| o.policy))))?;
        let policy = policy.ok_or(Error::NotFound {
            what: "organization",
        })?;
        Ok(classes
            .into_iter()
            .filter(|c| m.role == Role::Owner || policy.check_class(&c.id).is_ok())
            .collect())
    }

    pub fn create_class(&self, actor: &Actor, org: &OrgId, input: ClassInput) -> Result<Class> {
        self.require_owner(actor, org)?;
        input.spec.validate()?;
        input.spec.check_within(&self.class_limits())?;
        let class = Class {
            id: ClassId::from_ulid(new_ulid()),
            org: org.clone(),
            spec: input.spec,
            is_default: input.is_default,
            created_at: self.now(),
        };
        self.store().write(|tx| -> Result<()> {
            let existing = tx.classes(org)?;
            if existing.iter().any(|c| c.spec.name == class.spec.name) {
                return Err(FieldError::conflict(
                    "name",
                    "name_taken",
                    format!("a class named {} exists already", class.spec.name),
                )
                .into());
            }
            if class.is_default {
                for mut c in existing.into_iter().filter(|c| c.is_default) {
                    c.is_default = false;
                    tx.put_class(&c)?;
                }
            }
            tx.put_class(&class)?;
            Ok(())
        })?;
        Ok(class)
    }

    pub fn update_class(&self, actor: &Actor, id: &ClassId, input: ClassInput) -> Result<Class> {
        let class = self
            .store()
            .read(|tx| tx.class(id))?
            .ok_or(Error::NotFound { what: "class" })?;
        self.require_owner(actor, &class.org)?;
        input.spec.validate()?;
        input.spec.check_within(&self.class_limits())?;
        self.store().write(|tx| -> Result<Class> {
            let others = tx.classes(&class.org)?;
            if others
                .iter()
                .any(|c| c.id != class.id && c.spec.name == input.spec.name)
            {
                return Err(FieldError::conflict(
                    "name",
                    "name_taken",
                    format!("a class named {} exists already", input.spec.name),
                )
                .into());
            }
            if input.is_default {
                for mut c in others
                    .into_iter()
                    .filter(|c| c.is_default && c.id != class.id)
                {
                    c.is_default = false;
                    tx.put_class(&c)?;
                }
            }
            let updated = Class {
                spec: input.spec,
                is_default: input.is_default,
                ..class
            };
            tx.put_class(&updated)?;
            Ok(updated)
        })
    }

    pub fn delete_class(&self, actor: &Actor, id: &ClassId) -> Result<()> {
        let class = self
            .store()
            .read(|tx| tx.class(id))?
            .ok_or(Error::NotFound { what: "class" })?;
        self.require_owner(actor, &class.org)?;
        self.store().write(|tx| -> Result<()> {
            let mut cursor: Option<String> = None;
            loop {
                let page = tx.workspaces_in(&class.org, cursor.as_deref(), 500)?;
                if page.iter().any(|w| w.class == class.id) {
                    return Err(Error::Conflict {
                        code: "class_in_use",
                        message: format!(
                            "workspaces still use class {}; move them to another class first",
                            class.spec.name
                        ),
                    });
                }
                match page.last() {
                    Some(w) if page.len() == 500 => cursor = Some(w.id.to_string()),
                    _ => break,
                }
            }
            tx.delete_class(id)?;
            Ok(())
        })
    }

    pub fn get_policy(&self, actor: &Actor, org: &OrgId) -> Result<Policy> {
        self.require_owner(actor, org)?;
        Ok(self
            .store()
            .read(|tx| tx.org(org))?
            .ok_or(Error::NotFound {
                what: "organization",
            })?
            .policy)
    }

    pub fn update_policy(&self, actor: &Actor, org: &OrgId, patch: PolicyPatch) -> Result<Policy> {
        self.require_owner(actor, org)?;
        self.store().write(|tx| -> Result<Policy> {
            let mut o = tx.org(org)?.ok_or(Error::NotFound {
                what: "organization",
            })?;
            let p = &mut o.policy;
            macro_rules! set {
                ($($f:ident),*) => {$( if let Some(v) = patch.$f { p.$f = v; } )*};
            }
            set!(
                default_timeout,
                max_timeout,
                users_can_extend,
                max_lifetime,
                allowed_classes,
                max_running_per_user,
                backup_keep_last,
                backup_keep_within,
                deleted_backup_grace,
                dormancy,
                outbound_network,
                backup_home
            );
            p.validate()?;
            let classes = tx.classes(org)?;
            for c in &p.allowed_classes {
                if !classes.iter().any(|k| &k.id == c) {
                    return Err(FieldError::conflict(
                        "allowed_classes",
                        "unknown_class",
                        format!("{c} is not a class of this organization"),
                    )
                    .into());
                }
            }
            tx.put_org(&o)?;
            Ok(o.policy)
        })
    }
}

fn ensure_other_owner(tx: &crate::store::WriteTx, org: &OrgId, leaving: &UserId) -> Result<()> {
    let others = tx
        .members(org)?
        .into_iter()
        .filter(|m| m.role == Role::Owner && &m.user != leaving)
        .count();
    if others == 0 {
        return Err(Error::Conflict {
            code: "last_owner",
            message: "an organization needs at least one owner; make someone else owner first"
                .into(),
        });
    }
    Ok(())
}
