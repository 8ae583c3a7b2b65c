//! Users' git credentials for private repositories: an HTTPS token (with its user name) or an
//! SSH private key per host. They are sealed at rest, used only by the cell while cloning, and
//! never returned by the API, written to logs or to the workspace's git configuration.

use super::{Actor, Cell, Error, Result, new_ulid};
use crate::content::git::GitAuth;
use crate::domain::entities::GitCredential;
use crate::domain::validate::RepoScheme;
use crate::domain::{CredentialId, FieldError, OrgId, RepoUrl, UserId};
use crate::store::Reader;

/// What a user hands over.
pub enum NewCredential {
    Token {
        username: String,
        token: String,
    },
    SshKey {
        private_key: String,
    },
    /// A container registry login, for image pulls only.
    Registry {
        username: String,
        token: String,
    },
}

/// A user name and a token (or password), checked; `user_hint` says what the name is.
fn login(username: String, token: String, user_hint: &str) -> Result<(String, String)> {
    // Lengths count what was sent, before trimming.
    let long = token.chars().count() > 4096;
    let token = token.trim().to_owned();
    if token.is_empty() || long || token.chars().any(char::is_control) {
        return Err(FieldError::new("token", "a token of 1 to 4096 printable characters").into());
    }
    let long = username.chars().count() > 200;
    let username = username.trim().to_owned();
    if username.is_empty() || long || username.contains(':') {
        return Err(FieldError::new("username", user_hint).into());
    }
    Ok((username, token))
}

/// Whether a stored credential's kind is for registries (else it is for git).
fn for_registry(kind: &str) -> bool {
    kind == "registry"
}

fn validate_host(host: &str) -> Result<String> {
    let h = host.trim().to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    if !ok {
        return Err(FieldError::new(
            "host",
            "a host name as in the repository URL, e.g. github.com or git.example.com:8443",
        )
        .into());
    }
    Ok(h)
}

/// The host a credential for `url` must name.
pub fn host_of(url: &RepoUrl) -> Option<String> {
    let s = url.as_str();
    if url.scheme() == RepoScheme::File {
        return None;
    }
    match url::Url::parse(s) {
        Ok(u) => {
            let host = u.host_str()?.to_ascii_lowercase();
            Some(match u.port() {
                Some(p) if url.scheme() != RepoScheme::Ssh => format!("{host}:{p}"),
                _ => host,
            })
        }
        // scp-like: user@host:path
        Err(_) => s
            .split_once('@')
            .and_then(|(_, rest)| rest.split_once(':'))
            .map(|(h, _)| h.to_ascii_lowercase()),
    }
}

impl Cell {
    /// A `file://` repository reads this host's files as the workspace's uid: only owners of
    /// the organization (or cell administrators) may name one, and only under the directories
    /// the operator lists in `workspace.file_repos`. Checked when a workspace is created and
    /// again at every clone (the owner may have lost the role meanwhile).
    pub(crate) fn check_file_repo(&self, org: &OrgId, user: &UserId, url: &RepoUrl) -> Result<()> {
        if url.scheme() != RepoScheme::File {
            return Ok(());
        }
        let refused =
            |why: &str| Error::Forbidden(format!("{} cannot be cloned: {why}", url.as_str()));
        let (is_admin, role) = self.store().read(|tx| {
            Ok((
                tx.user(user)?.is_some_and(|u| u.is_admin),
                tx.membership(org, user)?.map(|m| m.role),
            ))
        })?;
        if !is_admin && role != Some(crate::domain::Role::Owner) {
            return Err(refused(
                "file:// repositories are for owners of the organization; push it to a git server",
            ));
        }
        let path = url::Url::parse(url.as_str())
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| refused("it is not a path on this host"))?;
        // Where it really is (links resolved); a repository that does not exist yet is judged
        // by its path, and its clone fails with "not found" if it still does not.
        let real = std::fs::canonicalize(&path).ok();
        let listed = self.config().workspace.file_repos.iter().any(|dir| {
            let dir_real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            match &real {
                Some(r) => r.starts_with(&dir_real),
                None => path.starts_with(dir) || path.starts_with(&dir_real),
            }
        });
        if !listed {
            return Err(refused(
                "it is not under a directory the operator lists in workspace.file_repos",
            ));
        }
        // The clone runs as the workspace's own uid when the cell is root: a repository under
        // a directory closed to other users (anything in /root) is out of its reach, which
        // git would report as "not found".
        // A repository that does not exist (yet) is not judged here: its clone says so.
        if let Some(target) = real.as_deref()
            && self.inner.runtime.is_some()
            && rustix::process::geteuid().is_root()
            && let Some(closed) = crate::runtime::rebase::closed_ancestor(target)
        {
            let closed = closed.display();
            return Err(Error::Conflict {
                code: "file_repo_unreachable",
                message: format!(
                    "{} cannot be cloned: workspaces clone as their own user, which cannot enter {closed} (closed to other users); keep file repositories in a directory everyone may enter, such as /srv/git, or `chmod o+x {closed}`",
                    url.as_str()
                ),
            });
        }
        Ok(())
    }

    pub(super) fn sealer(&self) -> Result<&super::secrets::Sealer> {
        self.inner.sealer.as_ref().ok_or_else(|| {
            Error::Internal("the cell's secret key is not available; check DATA/secret.key".into())
        })
    }

    pub fn add_git_credential(
        &self,
        actor: &Actor,
        host: &str,
        new: NewCredential,
    ) -> Result<GitCredential> {
        let host = validate_host(host)?;
        let (kind, username, secret) = match new {
            NewCredential::Registry { username, token } => {
                let (username, token) = login(username, token, "the registry user name")?;
                ("registry", Some(username), token)
            }
            NewCredential::Token { username, token } => {
                let (username, token) = login(
                    username,
                    token,
                    "the user name that goes with the token (for GitHub any, e.g. x-access-token)",
                )?;
                ("token", Some(username), token)
            }
            NewCredential::SshKey { private_key } => {
                if !private_key.contains("PRIVATE KEY-----")
                    || private_key.chars().count() > 16 * 1024
                {
                    return Err(FieldError::new(
                        "ssh_private_key",
                        "an unencrypted private key in OpenSSH or PEM form",
                    )
                    .into());
                }
                ("ssh_key", None, private_key)
            }
        };
        let cred = GitCredential {
            id: CredentialId::from_ulid(new_ulid()),
            user: actor.user.id.clone(),
            host,
            kind: kind.into(),
            username,
            sealed_secret: self.sealer()?.seal(&secret),
            created_at: self.now(),
        };
        self.store().write(|tx| -> Result<()> {
            // One git credential and one registry login per host and user: a new one
            // replaces the old one of its use.
            for old in tx.git_credentials(&actor.user.id)? {
                if old.host == cred.host && for_registry(&old.kind) == for_registry(&cred.kind) {
                    tx.delete_git_credential(&actor.user.id, &old.id)?;
                }
            }
            tx.put_git_credential(&cred)?;
            Ok(())
        })?;
        Ok(cred)
    }

    pub fn list_git_credentials(&self, actor: &Actor) -> Result<Vec<GitCredential>> {
        Ok(self.store().read(|tx| tx.git_credentials(&actor.user.id))?)
    }

    pub fn delete_git_credential(&self, actor: &Actor, id: &CredentialId) -> Result<()> {
        if !self
            .store()
            .write(|tx| tx.delete_git_credential(&actor.user.id, id))?
        {
            return Err(Error::NotFound {
                what: "git credential",
            });
        }
        Ok(())
    }

    /// Basic credentials for an image registry: the token credential `user` stored for the
    /// registry's host (for ECR: user `AWS` and the password from `aws ecr get-login-password`).
    pub(crate) fn registry_auth_for(
        &self,
        user: &UserId,
        registry: &str,
    ) -> Result<crate::content::image::RegistryAuth> {
        use crate::content::image::RegistryAuth;
        let host = registry.to_ascii_lowercase();
        let creds = self.store().read(|tx| tx.git_credentials(user))?;
        let Some(c) = creds
            .into_iter()
            .find(|c| c.host == host && for_registry(&c.kind))
        else {
            return Ok(RegistryAuth::Anonymous);
        };
        let password = self
            .sealer()?
            .open(&c.sealed_secret)
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(RegistryAuth::Basic {
            username: c.username.unwrap_or_default(),
            password,
        })
    }

    /// The credential `user` stored for the host of `url`, opened for one clone.
    pub(crate) fn git_auth_for(&self, user: &UserId, url: &RepoUrl) -> Result<GitAuth> {
        let Some(host) = host_of(url) else {
            return Ok(GitAuth::None);
        };
        let creds = self.store().read(|tx| tx.git_credentials(user))?;
        let Some(c) = creds
            .into_iter()
            .find(|c| c.host == host && !for_registry(&c.kind))
        else {
            return Ok(GitAuth::None);
        };
        // Over plain http the credential would cross the network readable by anyone on the
        // way: only to hosts the operator lists.
        if url.scheme() == RepoScheme::Http
            && !self
                .config()
                .workspace
                .plain_http_credentials
                .iter()
                .any(|h| h.trim().eq_ignore_ascii_case(&host))
        {
            return Err(Error::Forbidden(format!(
                "a credential is stored for {host}, but {} is plain http, where anyone on the way could read it: use https (or the operator lists {host} in workspace.plain_http_credentials)",
                url.as_str()
            )));
        }
        let secret = self
            .sealer()?
            .open(&c.sealed_secret)
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(match c.kind.as_str() {
            "ssh_key" => GitAuth::SshKey {
                private_key: secret,
            },
            _ => GitAuth::Token {
                username: c.username.unwrap_or_else(|| "git".into()),
                token: secret,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_from_every_url_form() {
        let h = |u: &str| host_of(&RepoUrl::parse(u).unwrap());
        assert_eq!(
            h("https://GitHub.com/team/app.git").as_deref(),
            Some("github.com")
        );
        assert_eq!(
            h("http://127.0.0.1:8080/app.git").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            h("ssh://git@git.example.com:2222/team/app.git").as_deref(),
            Some("git.example.com")
        );
        assert_eq!(
            h("git@github.com:team/app.git").as_deref(),
            Some("github.com")
        );
        assert_eq!(h("file:///srv/git/app.git"), None);
    }
}
