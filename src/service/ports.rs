//! Ports on their own origins. Whatever a workspace serves is someone else's code: a page from
//! a port must never run on the dashboard's origin, where its script could read the CSRF
//! token and act as whoever opened it. Each port gets an origin of its own,
//! `{port}-{id}.{domain}` (the id with `-` for `_`, so the label is valid in DNS), under
//! `server.workspace_domain`, or under `localhost` when none is set (browsers resolve
//! `*.localhost` to loopback, so a trial cell needs no DNS).
//!
//! A browser is signed in there with a credential for that one origin, never with the
//! dashboard's session: the port redirects to the dashboard (`/port-login`), which checks the
//! session and the port's visibility and sends the browser back with a grant that works once
//! and for a minute; the port origin turns it into its own cookie. Both are sealed with the
//! cell's key and carry the hash of the session they came from, so they end with it.
//!
//! This module only mints and checks; the HTTP edge (`crate::proxy`) routes by host.

use std::net::IpAddr;

use base64::Engine;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Actor, AuthVia, Cell, Error, Result};
use crate::domain::WorkspaceId;

/// How long a grant from the dashboard may take to reach the port origin.
const GRANT_TTL: time::Duration = time::Duration::minutes(1);

/// What a grant and a port credential say; sealed, so only the cell can make or read one.
#[derive(Serialize, Deserialize)]
struct Sealed {
    /// `grant` (one use, a minute) or `port` (the cookie).
    kind: String,
    /// The hash of the dashboard session it was issued from.
    session: String,
    workspace: String,
    port: u16,
    /// Unix seconds.
    expires: i64,
    nonce: String,
}

/// A port origin's host, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortHost {
    pub workspace: WorkspaceId,
    pub port: u16,
}

/// The host name of a `Host` header: lowercase, without its port or IPv6 brackets.
pub fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `{port}-{id}` with `-` for the id's `_`: a DNS label.
pub fn port_label(id: &WorkspaceId, port: u16) -> String {
    format!("{port}-{}", id.as_str().replace('_', "-"))
}

/// The workspace and port a DNS label names, if it is one of [`port_label`]'s.
pub fn parse_port_label(label: &str) -> Option<PortHost> {
    let (port, id) = label.split_once('-')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let id = id.replacen('-', "_", 1);
    let workspace = WorkspaceId::parse(&id).ok()?;
    Some(PortHost { workspace, port })
}

impl Cell {
    /// The domain whose subdomains are ports: `server.workspace_domain`, else `localhost`.
    pub fn port_domain(&self) -> String {
        self.config()
            .server
            .workspace_domain
            .clone()
            .unwrap_or_else(|| "localhost".into())
            .trim_matches('.')
            .to_ascii_lowercase()
    }

    /// `scheme://{port}-{id}.{domain}[:port]`: the port's own origin, with the scheme and
    /// listening port of the cell's public URL.
    pub fn port_origin(&self, id: &WorkspaceId, port: u16) -> String {
        let public = self.config().public_url();
        let suffix = public.port().map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "{}://{}.{}{suffix}",
            public.scheme(),
            port_label(id, port),
            self.port_domain()
        )
    }

    /// The address a user opens for a port: its own origin, or with `server.path_ports` the
    /// path under the dashboard.
    pub fn port_url(&self, id: &WorkspaceId, port: u16) -> String {
        if self.config().server.path_ports {
            self.link(&format!("w/{id}/p/{port}/"))
        } else {
            format!("{}/", self.port_origin(id, port))
        }
    }

    /// The port a `Host` header names, when it is one of this cell's port origins.
    pub fn port_of_host(&self, host: &str) -> Option<PortHost> {
        let name = host_name(host);
        let label = name.strip_suffix(&self.port_domain())?.strip_suffix('.')?;
        if label.contains('.') {
            return None;
        }
        parse_port_label(label)
    }

    /// Whether a `Host` header names the dashboard: the public URL's host, `localhost` or an
    /// address. Any other name is refused, so that a name an attacker points at this cell
    /// (DNS rebinding) reaches nothing.
    pub fn is_cell_host(&self, host: &str) -> bool {
        let name = host_name(host);
        name == "localhost"
            || name.parse::<IpAddr>().is_ok()
            || self
                .config()
                .public_url()
                .host_str()
                .is_some_and(|h| host_name(h) == name)
    }

    fn seal_port(&self, what: &Sealed) -> Result<String> {
        let sealer = self.inner.sealer.as_ref().ok_or_else(|| {
            Error::Internal("the cell's secret key is unavailable; see the log".into())
        })?;
        let json = serde_json::to_string(what).map_err(|e| Error::Internal(e.to_string()))?;
        // URL- and cookie-safe.
        let sealed = sealer.seal(&json);
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
    }

    fn open_port(&self, text: &str) -> Option<Sealed> {
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let json = self
            .inner
            .sealer
            .as_ref()?
            .open(std::str::from_utf8(&sealed).ok()?)
            .ok()?;
        serde_json::from_str(&json).ok()
    }

    /// A grant for `actor`'s browser to sign in on a port's origin: the dashboard issues it
    /// once the session may reach the port (its visibility, the workspace running).
    pub fn port_grant(&self, actor: &Actor, id: &WorkspaceId, port: u16) -> Result<String> {
        let AuthVia::Session { hash, .. } = &actor.via else {
            return Err(Error::Forbidden(
                "ports are opened from a signed-in browser".into(),
            ));
        };
        self.authorize_port(Some(actor), id, port)?;
        self.seal_port(&Sealed {
            kind: "grant".into(),
            session: hash.clone(),
            workspace: id.to_string(),
            port,
            expires: (self.now() + GRANT_TTL).unix_timestamp(),
            nonce: super::auth::new_secret(""),
        })
    }

    /// Turns a grant into the port origin's own credential (the cookie's value). A grant works
    /// once, within a minute, on the origin it was made for, while its session lasts.
    pub fn redeem_port_grant(&self, grant: &str, target: &PortHost) -> Result<String> {
        let now = self.now();
        let g = self
            .open_port(grant)
            .filter(|g| g.kind == "grant")
            .filter(|g| g.workspace == target.workspace.as_str() && g.port == target.port)
            .filter(|g| g.expires > now.unix_timestamp())
            .ok_or(Error::BadLink)?;
        {
            let mut used = self
                .inner
                .redeemed
                .lock()
                .map_err(|_| Error::Internal("port grants are unavailable".into()))?;
            used.retain(|_, until| *until > now);
            if used.contains_key(&g.nonce) {
                return Err(Error::BadLink);
            }
            used.insert(
                g.nonce.clone(),
                OffsetDateTime::from_unix_timestamp(g.expires).unwrap_or(now),
            );
        }
        // The session must still be there (signing out ends its ports too).
        self.authenticate_session_hash(g.session.clone())?;
        let expires = now + self.config().auth.session_ttl;
        self.seal_port(&Sealed {
            kind: "port".into(),
            session: g.session,
            workspace: g.workspace,
            port: g.port,
            expires: expires.unix_timestamp(),
            nonce: super::auth::new_secret(""),
        })
    }

    /// The user a port origin's credential stands for, while its session lasts; `None` for
    /// anything else (another port's credential, an expired or forged one).
    pub fn port_actor(&self, credential: &str, target: &PortHost) -> Option<Actor> {
        let c = self
            .open_port(credential)
            .filter(|c| c.kind == "port")
            .filter(|c| c.workspace == target.workspace.as_str() && c.port == target.port)
            .filter(|c| c.expires > self.now().unix_timestamp())?;
        self.authenticate_session_hash(c.session).ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn port_labels_are_dns_labels_and_read_back() {
        let id = WorkspaceId::parse("ws_01m92tnr4pvp05qmzxsv18009f").unwrap();
        let label = port_label(&id, 3000);
        assert_eq!(label, "3000-ws-01m92tnr4pvp05qmzxsv18009f");
        assert!(label.len() <= 63 && !label.contains('_'));
        assert_eq!(
            parse_port_label(&label),
            Some(PortHost {
                workspace: id,
                port: 3000
            })
        );
        for bad in [
            "3000",
            "-ws-01m92tnr4pvp05qmzxsv18009f",
            "0-ws-01m92tnr4pvp05qmzxsv18009f",
            "70000-ws-01m92tnr4pvp05qmzxsv18009f",
            "3000-ws-short",
            "x3000-ws-01m92tnr4pvp05qmzxsv18009f",
        ] {
            assert_eq!(parse_port_label(bad), None, "{bad}");
        }
    }

    #[test]
    fn host_names_lose_their_port_brackets_and_case() {
        assert_eq!(host_name("Example.COM:8080"), "example.com");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("cell.example.com."), "cell.example.com");
    }
}
